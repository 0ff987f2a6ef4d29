"""A property-based fuzzer of the configuration: mutations of every shipped example config (types, deleted and
unknown keys, NaN/inf/huge/negative numbers, unicode, NUL, special files for path keys).

Each mutated file goes through the check `edge-agent config check` runs (`agent.config.load`), in-process on a
thread: it must come back (a hang is a failure) either rejecting the file with every problem naming the file and a
key path (exit code 2), or with a sane config (finite numbers, no NUL, no stray newline in names); the first few
that pass are then run for a few seconds against a real broker and must not stall a stage.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paths import ROOT

EXAMPLES = sorted(ROOT.glob("examples/*.toml")) + [ROOT / "agent" / "demo.toml"]
DOCS = {p.name if p.parent.name == "examples" else "demo.toml": tomllib.loads(p.read_text("utf-8")) for p in EXAMPLES}


# -- a small TOML writer (the standard library only reads TOML): everything as inline values ------------------------

def _toml_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)  # escapes ", \ and control characters as \uXXXX or \n ...
    return out.replace("\x7f", "\\u007f")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def to_toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(to_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {to_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    return "".join(f"{_toml_key(k)} = {to_toml_value(v)}\n" for k, v in doc.items())


def test_the_toml_writer_round_trips_every_example() -> None:
    for name, doc in DOCS.items():
        assert tomllib.loads(to_toml(doc)) == doc, name


# -- mutations --------------------------------------------------------------------------------------------------------

def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if isinstance(v, (dict, list)):
                out.append(prefix + (i,))
                out += _paths(v, prefix + (i,))
    return out


PATHS = {name: _paths(doc) for name, doc in DOCS.items()}
# keys that name files or directories: where special files go
FILE_KEYS = [("mqtt", "password_file"), ("mqtt", "ca_file"), ("agent", "state_dir"), ("mqtt", "cert_file")]


@pytest.fixture(scope="module")
def special_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("special")
    fifo = d / "fifo"
    os.mkfifo(fifo)
    (d / "nul.txt").write_bytes(b"sec\0ret\n")
    (d / "latin1.txt").write_bytes(b"caf\xe9\n")
    (d / "big.txt").write_bytes(b"x" * (1 << 20))
    (d / "ok.txt").write_text("secret\n")
    return {"fifo": str(fifo), "zero": "/dev/zero", "dir": str(d), "nul": str(d / "nul.txt"),
            "latin1": str(d / "latin1.txt"), "big": str(d / "big.txt"), "ok": str(d / "ok.txt"),
            "missing": str(d / "missing"), "nul-in-path": str(d) + "/a\0b"}


SCALARS = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 2 ** 1024, -(2 ** 64), 10 ** 12, 1e308, -1, -0.5, 0, 0.0, 1,
                     True, False, "", "\0", "x\n", "name\n", "a/b", "+", "#", "é☃𝄞", " ", [], {}, [1, "a"],
                     [[1]], {"a": 1}, [{"a": 1}]]),
    st.integers(), st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=4), max_size=3),
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict[str, Any], str]:
    name = draw(st.sampled_from(sorted(DOCS)))
    doc = copy.deepcopy(DOCS[name])
    what = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "delete", "unknown", "file"]))
        if kind == "file":
            section, key = draw(st.sampled_from(FILE_KEYS))
            special = draw(st.sampled_from(["fifo", "zero", "dir", "nul", "latin1", "big", "ok", "missing",
                                            "nul-in-path"]))
            table = doc.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = f"@{special}"  # replaced by the real path in the test (fixtures are not strategies)
                if key == "password_file":
                    table.setdefault("username", "edge")
                    table.pop("password", None)
                    table.pop("password_env", None)
            what.append(f"{section}.{key}={special}")
            continue
        paths = PATHS[name]
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        try:
            for k in path[:-1]:
                parent = parent[k]
            last = path[-1]
            if kind == "delete":
                del parent[last]
            elif kind == "unknown":
                target = parent[last] if isinstance(parent[last], dict) else parent
                if isinstance(target, dict):
                    target[draw(st.from_regex(r"[a-z_]{1,10}", fullmatch=True))] = draw(SCALARS)
            else:
                parent[last] = draw(SCALARS)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
        what.append(f"{kind} {'.'.join(map(str, path))}")
    return name, doc, "; ".join(what)


def _resolve_files(node: Any, files: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _resolve_files(v, files) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_files(v, files) for v in node]
    if isinstance(node, str) and node.startswith("@") and node[1:] in files:
        return files[node[1:]]
    return node


def check(path: Path, *, timeout_s: float = 20.0) -> tuple[int, list[str], Any]:
    """What `edge-agent config check FILE` does (load and validate), on a thread: (exit code, problems, config).
    A hang fails the test; so does any exception other than ConfigError."""
    from agent.config import load
    from agent.errors import ConfigError

    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["config"] = load(path)
            result["rc"] = 0
        except ConfigError as e:
            result["rc"], result["problems"] = 2, e.problems
        except BaseException as e:  # noqa: BLE001 - any escape is the finding
            result["exc"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)  # generous: a check that blocks (a FIFO, /dev/zero) never comes back at all
    assert not t.is_alive(), f"config check of {path} did not return"
    assert "exc" not in result, f"config check raised {result.get('exc')!r}"
    return result["rc"], result.get("problems", []), result.get("config")


def _insane(node: Any, where: str = "config") -> list[str]:
    """What a config that passed the check must never hold: non-finite or absurd numbers, NUL, names with a
    trailing newline."""
    import dataclasses

    if dataclasses.is_dataclass(node):
        return [x for f in dataclasses.fields(node) for x in _insane(getattr(node, f.name), f"{where}.{f.name}")]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _insane(v, f"{where}.{k}")]
    if isinstance(node, (list, tuple)):
        return [x for i, v in enumerate(node) for x in _insane(v, f"{where}[{i}]")]
    if isinstance(node, float) and not math.isfinite(node) and not where.endswith((".min", ".max")):
        return [f"{where} = {node}"]
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) > 1e15:
        return [f"{where} = a {len(str(node))}-digit integer"]
    if isinstance(node, str) and "\0" in node:
        return [f"{where} holds NUL"]
    if isinstance(node, str) and (where.endswith(".name") or where.endswith(".id")) and node != node.strip():
        return [f"{where} = {node!r}"]
    return []


PROBLEM = re.compile(r"^(?P<file>[^:]+): (?P<key>[A-Za-z_][\w.\[\]-]*): (?P<msg>.+)$")
RUNS = {"n": 0}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                    HealthCheck.too_slow])
@given(case=mutated())
def test_a_mutated_example_is_rejected_with_a_key_path_or_valid(case, special_files, tmp_path_factory, broker) -> None:
    name, doc, what = case
    d = tmp_path_factory.mktemp("fuzz")
    path = d / name
    doc = _resolve_files(doc, special_files)
    path.write_text(to_toml(doc), encoding="utf-8")
    rc, problems, config = check(path)
    if rc == 2:
        assert problems, what
        for line in problems:
            m = PROBLEM.match(line)
            assert m and m["file"] == str(path), (what, line)
            assert re.search(r"expected|unknown|missing", m["msg"]), (what, line)
        return
    assert _insane(config) == [], (what, _insane(config))
    if RUNS["n"] < 2:  # a few of the configs that pass the check run for a few seconds without a stalled stage
        RUNS["n"] += 1
        run_briefly(path, d / "state", broker.port, what)


def run_briefly(path: Path, state_dir: Path, port: int, what: str, seconds: float = 3.0) -> None:
    import dataclasses

    from agent.config import Broker, load
    from agent.pipeline import Pipeline
    from agent.service import Service

    config = load(path, emulate=True)
    config = dataclasses.replace(config, mqtt=dataclasses.replace(config.mqtt, broker=Broker("127.0.0.1", port)))
    agent = Pipeline(config, state_dir)
    agent.start()
    try:
        service = Service(agent, status_socket=None, environ={}, reader_grace_s=2.0)
        service.stall_limit_s = 2.0  # every stage goes round its loop at least this often (plus its own waits)
        time.sleep(seconds)
        assert service.stalled() == [], (what, service.stalled())
        assert agent.outbox.fault is None, (what, agent.outbox.fault)
        assert all(r.is_alive() for r in agent.readers), what
    finally:
        agent.stop(drain_s=0.2)


@pytest.mark.parametrize("name", ["demo.toml", "emulated.toml"])  # the fuzzer runs mutated copies of the others
def test_shipped_examples_run_for_a_few_seconds_without_a_stall(name, broker, tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_text(to_toml(DOCS[name]))
    run_briefly(path, tmp_path / "state", broker.port, name)
