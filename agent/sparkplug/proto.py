"""The Sparkplug B payload (`sparkplug_b.proto`, beside this file) built at run time with the protobuf package.

No protoc and no generated code: the message types are declared here field by field, exactly as in the
specification's .proto (tests compare the two), and turned into classes by protobuf's descriptor pool, so the
runtime works with any protobuf 4.x-7.x.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "org.eclipse.tahu.protobuf"

# Sparkplug DataType enum (the subset edge-agent emits, plus what a DCMD may carry)
INT8, INT16, INT32, INT64, UINT8, UINT16, UINT32, UINT64 = 1, 2, 3, 4, 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT, UUID, DATASET, BYTES, FILE, TEMPLATE = range(9, 20)

_F = descriptor_pb2.FieldDescriptorProto
_T = {"uint32": _F.TYPE_UINT32, "uint64": _F.TYPE_UINT64, "float": _F.TYPE_FLOAT, "double": _F.TYPE_DOUBLE,
      "bool": _F.TYPE_BOOL, "string": _F.TYPE_STRING, "bytes": _F.TYPE_BYTES}

# (name, number, type or message name, label, oneof index or None); label "o" optional, "r" repeated
_VALUE = "value"
_SCHEMA: dict[str, Any] = {
    "Payload": {
        "fields": [("timestamp", 1, "uint64", "o"), ("metrics", 2, ".Payload.Metric", "r"), ("seq", 3, "uint64", "o"),
                   ("uuid", 4, "string", "o"), ("body", 5, "bytes", "o")],
        "ext": (6,),
        "nested": {
            "Template": {
                "fields": [("version", 1, "string", "o"), ("metrics", 2, ".Payload.Metric", "r"),
                           ("parameters", 3, ".Payload.Template.Parameter", "r"), ("template_ref", 4, "string", "o"),
                           ("is_definition", 5, "bool", "o")],
                "ext": (6,),
                "nested": {"Parameter": {
                    "fields": [("name", 1, "string", "o"), ("type", 2, "uint32", "o"),
                               ("int_value", 3, "uint32", _VALUE), ("long_value", 4, "uint64", _VALUE),
                               ("float_value", 5, "float", _VALUE), ("double_value", 6, "double", _VALUE),
                               ("boolean_value", 7, "bool", _VALUE), ("string_value", 8, "string", _VALUE),
                               ("extension_value", 9, ".Payload.Template.Parameter.ParameterValueExtension", _VALUE)],
                    "nested": {"ParameterValueExtension": {"fields": [], "ext": (1,)}}}},
            },
            "DataSet": {
                "fields": [("num_of_columns", 1, "uint64", "o"), ("columns", 2, "string", "r"),
                           ("types", 3, "uint32", "r"), ("rows", 4, ".Payload.DataSet.Row", "r")],
                "ext": (5,),
                "nested": {
                    "DataSetValue": {
                        "fields": [("int_value", 1, "uint32", _VALUE), ("long_value", 2, "uint64", _VALUE),
                                   ("float_value", 3, "float", _VALUE), ("double_value", 4, "double", _VALUE),
                                   ("boolean_value", 5, "bool", _VALUE), ("string_value", 6, "string", _VALUE),
                                   ("extension_value", 7, ".Payload.DataSet.DataSetValue.DataSetValueExtension",
                                    _VALUE)],
                        "nested": {"DataSetValueExtension": {"fields": [], "ext": (1,)}}},
                    "Row": {"fields": [("elements", 1, ".Payload.DataSet.DataSetValue", "r")], "ext": (2,)},
                },
            },
            "PropertyValue": {
                "fields": [("type", 1, "uint32", "o"), ("is_null", 2, "bool", "o"),
                           ("int_value", 3, "uint32", _VALUE), ("long_value", 4, "uint64", _VALUE),
                           ("float_value", 5, "float", _VALUE), ("double_value", 6, "double", _VALUE),
                           ("boolean_value", 7, "bool", _VALUE), ("string_value", 8, "string", _VALUE),
                           ("propertyset_value", 9, ".Payload.PropertySet", _VALUE),
                           ("propertysets_value", 10, ".Payload.PropertySetList", _VALUE),
                           ("extension_value", 11, ".Payload.PropertyValue.PropertyValueExtension", _VALUE)],
                "nested": {"PropertyValueExtension": {"fields": [], "ext": (1,)}},
            },
            "PropertySet": {"fields": [("keys", 1, "string", "r"), ("values", 2, ".Payload.PropertyValue", "r")],
                            "ext": (3,)},
            "PropertySetList": {"fields": [("propertyset", 1, ".Payload.PropertySet", "r")], "ext": (2,)},
            "MetaData": {
                "fields": [("is_multi_part", 1, "bool", "o"), ("content_type", 2, "string", "o"),
                           ("size", 3, "uint64", "o"), ("seq", 4, "uint64", "o"), ("file_name", 5, "string", "o"),
                           ("file_type", 6, "string", "o"), ("md5", 7, "string", "o"),
                           ("description", 8, "string", "o")],
                "ext": (9,)},
            "Metric": {
                "fields": [("name", 1, "string", "o"), ("alias", 2, "uint64", "o"), ("timestamp", 3, "uint64", "o"),
                           ("datatype", 4, "uint32", "o"), ("is_historical", 5, "bool", "o"),
                           ("is_transient", 6, "bool", "o"), ("is_null", 7, "bool", "o"),
                           ("metadata", 8, ".Payload.MetaData", "o"), ("properties", 9, ".Payload.PropertySet", "o"),
                           ("int_value", 10, "uint32", _VALUE), ("long_value", 11, "uint64", _VALUE),
                           ("float_value", 12, "float", _VALUE), ("double_value", 13, "double", _VALUE),
                           ("boolean_value", 14, "bool", _VALUE), ("string_value", 15, "string", _VALUE),
                           ("bytes_value", 16, "bytes", _VALUE), ("dataset_value", 17, ".Payload.DataSet", _VALUE),
                           ("template_value", 18, ".Payload.Template", _VALUE),
                           ("extension_value", 19, ".Payload.Metric.MetricValueExtension", _VALUE)],
                "nested": {"MetricValueExtension": {"fields": [], "ext": (1,)}},
            },
        },
    },
}


def _message(name: str, spec: dict[str, Any]) -> descriptor_pb2.DescriptorProto:
    m = descriptor_pb2.DescriptorProto(name=name)
    has_oneof = any(label == _VALUE for _, _, _, label in spec["fields"])
    if has_oneof:
        m.oneof_decl.add(name="value")
    for fname, number, ftype, label in spec["fields"]:
        f = m.field.add(name=fname, number=number)
        f.label = _F.LABEL_REPEATED if label == "r" else _F.LABEL_OPTIONAL
        if ftype.startswith("."):
            f.type = _F.TYPE_MESSAGE
            f.type_name = f".{PACKAGE}{ftype}"
        else:
            f.type = _T[ftype]
        if label == _VALUE:
            f.oneof_index = 0
        if ftype in ("uint32", "uint64", "float", "double", "bool") and label == "r":
            f.options.packed = False  # proto2 default: not packed
    if "ext" in spec:
        m.extension_range.add(start=spec["ext"][0], end=536870912)
    for nested_name, nested in spec.get("nested", {}).items():
        m.nested_type.append(_message(nested_name, nested))
    return m


def _build() -> Any:
    fdp = descriptor_pb2.FileDescriptorProto(name="edge_agent/sparkplug_b.proto", package=PACKAGE, syntax="proto2")
    fdp.message_type.append(_message("Payload", _SCHEMA["Payload"]))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.Payload"))


Payload = _build()
