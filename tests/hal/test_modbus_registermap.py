"""Register maps: data types, byte and word order, scaling, validation with key paths, request coalescing."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal.errors import ConfigurationError
from hal.modbus.registermap import (MAX_READ_REGISTERS, Register, available_profiles, load_profile,
                                    parse_registers, plan_reads)
from hal.sources import validate_driver_options


def reg(**kw) -> Register:
    kw.setdefault("name", "x")
    kw.setdefault("address", 0)
    return Register(**kw)


# -- decoding: known words, as a Modbus master sees them on the wire ------------------------------------------------

def test_f32_in_all_four_byte_and_word_orders():
    # 230.0 as IEEE 754 single is 0x43660000
    assert reg(type="f32").decode([0x4366, 0x0000]) == 230.0                               # ABCD
    assert reg(type="f32", word_order="little").decode([0x0000, 0x4366]) == 230.0          # CDAB
    assert reg(type="f32", byte_order="little").decode([0x6643, 0x0000]) == 230.0          # BADC
    assert reg(type="f32", byte_order="little", word_order="little").decode([0x0000, 0x6643]) == 230.0  # DCBA


def test_integer_types_and_sign():
    assert reg(type="u16").decode([0xFFFF]) == 65535
    assert reg(type="i16").decode([0xFFFF]) == -1
    assert reg(type="u32").decode([0x0001, 0x0002]) == 0x00010002
    assert reg(type="u32", word_order="little").decode([0x0002, 0x0001]) == 0x00010002
    assert reg(type="i32").decode([0xFFFF, 0xFFFE]) == -2
    assert reg(type="u64").decode([0x0123, 0x4567, 0x89AB, 0xCDEF]) == 0x0123456789ABCDEF
    assert reg(type="i64", word_order="little").decode([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF]) == -1
    (hi, lo) = struct.unpack(">2H", struct.pack(">f", 1.5))
    assert reg(type="f32").decode([hi, lo]) == 1.5
    words = struct.unpack(">4H", struct.pack(">d", -1234.5678))
    assert reg(type="f64").decode(list(words)) == -1234.5678


def test_scale_offset_bits_and_strings():
    assert reg(type="u16", scale=0.1, unit="V").decode([2301]) == pytest.approx(230.1)
    assert reg(type="i16", scale=0.01, offset=-40).decode([0x1000]) == pytest.approx(4096 * 0.01 - 40)
    status = reg(type="bit", bit=3)
    assert status.decode([0b1000]) is True and status.decode([0b0111]) is False
    assert reg(table="coil").decode([True]) is True
    name = reg(type="string", length=3)
    assert name.decode([0x5344, 0x4D36, 0x3330]) == "SDM630"
    assert name.decode([0x4142, 0x0000, 0x0000]) == "AB"


@settings(max_examples=60, deadline=None)
@given(value=st.floats(-1e6, 1e6, allow_nan=False), byte_order=st.sampled_from(["big", "little"]),
       word_order=st.sampled_from(["big", "little"]), type_=st.sampled_from(["f32", "f64", "i32", "u32", "i64"]))
def test_encode_is_the_inverse_of_decode(value, byte_order, word_order, type_):
    r = reg(type=type_, byte_order=byte_order, word_order=word_order)
    if type_.startswith("u"):
        value = abs(value)
    words = r.encode(value)
    assert len(words) == r.count and all(0 <= w <= 0xFFFF for w in words)
    back = r.decode(words)
    if type_ == "f32":
        assert back == pytest.approx(value, rel=1e-6, abs=1e-6)
    elif type_ == "f64":
        assert back == value
    else:
        assert back == round(value)


def test_encode_refuses_values_the_type_cannot_hold_and_only_the_emulator_clamps():
    with pytest.raises(ValueError, match="70000 is raw 70000, outside u16's range 0..65535"):
        reg(type="u16").encode(70000)
    with pytest.raises(ValueError, match="outside i16's range"):
        reg(type="i16").encode(-40000)
    assert reg(type="u16").encode(70000, clamp=True) == [0xFFFF]  # a plant signal beyond the register's range
    assert reg(type="i16").encode(-40000, clamp=True) == [0x8000]


# -- validation -------------------------------------------------------------------------------------------------------

def test_parse_registers_reports_every_problem_with_its_index():
    regs, errors = parse_registers([
        {"name": "ok", "address": 0},
        {"name": "bad type", "address": 1},
        {"name": "t", "address": 2, "type": "f16"},
        {"name": "s", "address": 3, "type": "string"},
        {"name": "ok", "address": 4},
        {"name": "b", "address": 5, "type": "bit", "table": "input"},
        {"name": "far", "address": 65535, "type": "f32"},
    ])
    keys = dict(errors)
    assert [r.name for r in regs] == ["ok"]
    assert "[1].name" in keys
    assert "expected one of" in keys["[2].type"] and "'f16'" in keys["[2].type"]
    assert "length" in keys["[3].length"]
    assert "unique" in keys["[4].name"]
    assert "bit number" in keys["[5].bit"]
    assert "65535" in keys["[6].address"]


def test_driver_options_name_the_nested_key():
    values, errors = validate_driver_options("modbus", {"registers": [{"name": "a", "address": 0, "type": "x"}]})
    assert errors and errors[0][0] == "registers[0].type"
    _, errors = validate_driver_options("modbus", {"profile": "nope"})
    assert errors[0][0] == "profile" and "sdm630" in errors[0][1]
    _, errors = validate_driver_options("modbus", {})
    assert errors == [("profile", 'expected exactly one of profile = "NAME" or registers = [...]')]
    _, errors = validate_driver_options("modbus", {"profile": "sdm630", "include": ["voltage_l1", "volts"]})
    assert errors[0][0] == "include[1]" and "'volts'" in errors[0][1]


def test_shipped_profiles_load_and_cite_their_source():
    assert {"sdm630", "eaton_mmax"} <= set(available_profiles())
    for name in available_profiles():
        m = load_profile(name)
        assert m.source and len(m) >= 10
    sdm = load_profile("sdm630")
    assert sdm.by_name("voltage_l1").address == 0 and sdm.by_name("frequency").address == 0x46
    assert sdm.by_name("energy_total").address == 342 and sdm.by_name("power_total").table == "input"
    with pytest.raises(ConfigurationError, match="unknown Modbus profile 'sdm999'"):
        load_profile("sdm999")


# -- coalescing -------------------------------------------------------------------------------------------------------

def test_adjacent_registers_merge_and_gaps_split():
    regs = [reg(name="a", address=0, type="f32"), reg(name="b", address=2, type="f32"),
            reg(name="c", address=10, type="u16"), reg(name="d", address=0, table="input")]
    plan = plan_reads(regs)
    assert [(p.table, p.start, p.count) for p in plan] == [("holding", 0, 4), ("holding", 10, 1), ("input", 0, 1)]
    plan = plan_reads(regs, max_gap=6)
    assert [(p.table, p.start, p.count) for p in plan] == [("holding", 0, 11), ("input", 0, 1)]
    assert [r.name for r in plan[0].registers] == ["a", "b", "c"]


def test_reads_never_exceed_the_protocol_limit():
    regs = [reg(name=f"r{i}", address=i * 2, type="f32") for i in range(200)]  # 400 contiguous registers
    plan = plan_reads(regs)
    assert all(p.count <= MAX_READ_REGISTERS for p in plan)
    assert len(plan) == math.ceil(400 / 124)  # f32 pairs: 62 values = 124 registers per read
    assert sum(len(p.registers) for p in plan) == 200
    assert len(plan_reads(regs, max_registers=40)) == 10
    coils = [reg(name=f"c{i}", address=i, table="coil") for i in range(2500)]
    assert [p.count for p in plan_reads(coils)] == [2000, 500]


def test_a_bit_field_shares_the_read_of_its_word():
    regs = [reg(name="word", address=100), reg(name="bit1", address=100, type="bit", bit=1),
            reg(name="next", address=101)]
    plan = plan_reads(regs)
    assert [(p.start, p.count) for p in plan] == [(100, 2)]
    assert plan[0].values_of(regs[1], [0b10, 7]) == [0b10]
