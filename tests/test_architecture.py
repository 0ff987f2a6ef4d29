"""The module contracts, enforced on the source tree (read with `ast`, nothing imported):

* `hal` never imports `agent`;
* the real hal (everything in `hal/` outside `hal/emulated/`) never imports `hal.emulated`, not even inside a
  function: a real bus finds its emulated backend in the table of `hal/backends.py`, which names it by string;
* only `agent/outbox.py` opens an SQLite database or speaks SQL on the outbox tables (records, streams, meta):
  everyone else reads through `agent.outbox.OutboxView` and writes through `Outbox.put` (the fleet side,
  `agent/fleet/`, has a PostgreSQL database of its own);
* only the uplink (`agent/uplink.py` and its wire formats in `agent/sparkplug/`) publishes to MQTT;
* the CLI verb modules import only `agent.cli.common` from their package (no cycles, no callbacks to dodge them);
* no import cycle at module level in `agent` and `hal`, and no new cycle through function-level imports;
* tests/ mirrors the package tree (tests/agent/..., tests/hal/..., tests/firmware/).

Each checker is also run on a small bad example, so a checker that cannot fail is caught too. And `ruff check`
(configured in pyproject.toml) passes on agent, hal, tests, bench and firmware.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

PACKAGES = ("agent", "hal")
OUTBOX = "agent/outbox.py"
PUBLISHERS = ("agent/uplink.py", "agent/sparkplug/")
OUTBOX_TABLES = ("records", "streams", "meta")
FLEET = "agent/fleet/"  # the fleet side's own PostgreSQL database (agent/fleet/schema.sql), not the outbox
# Cycles through function-level (lazy or TYPE_CHECKING) imports that exist today, each with its owner. A new one
# fails; when one of these is broken up, delete its line.
KNOWN_CYCLES = {
    frozenset({"agent.commands", "agent.pipeline"}): "commands type-hint the pipeline they are attached to",
    frozenset({"hal.chips", "hal.chips.ads1115", "hal.chips.adxl345", "hal.chips.bme280", "hal.chips.ina219"}):
        "the lazy chip registry (hal.chips.chips()) imports its chips, which import the registry's types",
}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _module(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, str]:
    """{relative path: source} of every module in agent/ and hal/."""
    return {_rel(p): p.read_text(encoding="utf-8") for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imports(rel: str, source: str, *, top_level_only: bool = False) -> set[str]:
    """Absolute names a module imports (`from a import b` gives a and a.b); with `top_level_only`, only what runs
    at import time (module body, outside `if TYPE_CHECKING:` and functions)."""
    name = _module(rel)
    package = name.split(".") if rel.endswith("__init__.py") else name.split(".")[:-1]
    found: set[str] = set()

    def add(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)

    def walk_body(body: list[ast.stmt]) -> None:
        for node in body:
            add(node)
            if isinstance(node, ast.If):
                test = node.test
                if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                    walk_body(node.orelse)
                    continue
                walk_body(node.body)
                walk_body(node.orelse)
            elif isinstance(node, ast.Try):
                walk_body(node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                walk_body(node.body)

    tree = ast.parse(source, filename=rel)
    if top_level_only:
        walk_body(tree.body)
    else:
        for node in ast.walk(tree):
            add(node)
    return found


def hal_imports_agent(rel: str, source: str) -> list[str]:
    return sorted(m for m in imports(rel, source) if m == "agent" or m.startswith("agent."))


EMULATED = "hal/emulated/"


def real_hal_imports_emulated(rel: str, source: str) -> list[str]:
    """What a real hal module imports from `hal.emulated` (anywhere in the module, lazy imports included)."""
    if rel.startswith(EMULATED):
        return []
    return sorted(m for m in imports(rel, source) if m == "hal.emulated" or m.startswith("hal.emulated."))


_SQL_ON_TABLES = re.compile(
    r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?)\s+(?:" + "|".join(OUTBOX_TABLES) + r")\b",
    re.IGNORECASE)
_SQL_VERB = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|REPLACE)\b")


def outbox_sql(rel: str, source: str) -> list[str]:
    """SQLite connections and SQL on the outbox tables in a module: '<line>: <what>'."""
    found = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Call):
            dotted = ast.unparse(node.func)
            if dotted == "sqlite3.connect" or dotted.startswith("sqlite_utils.") or (
                    dotted == "connect" and _imported_from(source, "sqlite3", "connect")):
                found.append(f"{node.lineno}: {dotted}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if _SQL_VERB.search(text) and _SQL_ON_TABLES.search(text):
                found.append(f"{node.lineno}: SQL {text.strip()[:60]!r}")
    return found


def _imported_from(source: str, module: str, name: str) -> bool:
    return re.search(rf"^\s*from {re.escape(module)} import .*\b{name}\b", source, re.MULTILINE) is not None


def mqtt_publishes(rel: str, source: str) -> list[str]:
    """Calls of `.publish(...)` and imports of paho's one-shot publish helpers: '<line>: <what>'."""
    found = []
    for node in ast.walk(ast.parse(source, filename=rel)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "publish":
            found.append(f"{node.lineno}: {ast.unparse(node.func)}()")
    found += [f"import {m}" for m in imports(rel, source) if m.startswith("paho.mqtt.publish")]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(frozenset(comp))
    return out


def _graph(sources: dict[str, str], *, top_level_only: bool) -> dict[str, set[str]]:
    modules = {_module(rel) for rel in sources}
    return {_module(rel): (imports(rel, src, top_level_only=top_level_only) & modules) - {_module(rel)}
            for rel, src in sources.items()}


# -- the contracts --------------------------------------------------------------------------------------------------

def test_hal_never_imports_agent() -> None:
    bad = {rel: hal_imports_agent(rel, src) for rel, src in _sources().items() if rel.startswith("hal/")}
    assert not {k: v for k, v in bad.items() if v}, "hal/ must not import agent/"


def test_real_hal_never_imports_hal_emulated() -> None:
    bad = {rel: real_hal_imports_emulated(rel, src) for rel, src in _sources().items() if rel.startswith("hal/")}
    assert not {k: v for k, v in bad.items() if v}, \
        "a real hal module imports hal.emulated; register the emulated side in hal/backends.py instead"


def test_only_the_outbox_opens_the_database_and_speaks_sql_on_its_tables() -> None:
    bad = {rel: outbox_sql(rel, src) for rel, src in _sources().items() if rel != OUTBOX and not rel.startswith(FLEET)}
    assert not {k: v for k, v in bad.items() if v}, \
        "SQL on the outbox belongs in agent/outbox.py (readers: OutboxView; writers: Outbox)"


def test_the_outbox_itself_is_seen_by_the_sql_checker() -> None:
    found = outbox_sql(OUTBOX, (ROOT / OUTBOX).read_text(encoding="utf-8"))
    assert any("INSERT" in f for f in found) and any("DELETE" in f for f in found) and any(
        "connect()" in f for f in found)


def test_only_the_uplink_publishes_to_mqtt() -> None:
    bad = {rel: mqtt_publishes(rel, src) for rel, src in _sources().items() if not rel.startswith(PUBLISHERS)}
    assert not {k: v for k, v in bad.items() if v}, "only agent/uplink.py and its formats publish"


def test_cli_verb_modules_share_only_common() -> None:
    allowed = {"agent.cli.common"}
    extra = {"agent.cli.capture": {"agent.cli.plot"}}  # capture draws with its PNG renderer
    bad = {}
    for rel, src in _sources().items():
        if not rel.startswith("agent/cli/") or rel.endswith("__init__.py"):
            continue
        name = _module(rel)
        ok = allowed | extra.get(name, set())
        mine = {m for m in imports(rel, src) if m.startswith("agent.cli.") and m != name}
        wrong = {m for m in mine if m not in ok and not any(m.startswith(a + ".") for a in ok)}
        if wrong:
            bad[rel] = sorted(wrong)
    assert not bad, "a verb module imports another verb module; move the shared part to agent/cli/common.py"


def test_no_import_cycle_at_import_time() -> None:
    assert _cycles(_graph(_sources(), top_level_only=True)) == []


def test_no_new_import_cycle_through_lazy_imports() -> None:
    found = _cycles(_graph(_sources(), top_level_only=False))
    new = [sorted(c) for c in found if c not in KNOWN_CYCLES]
    assert not new, "a new import cycle (through a function-level import); break it rather than list it"


# tests/ mirrors the package tree: tests of agent/outbox.py are in tests/agent/, of hal/sensornode/ in
# tests/hal/sensornode/, so the tests of a module are where its path says. Directories that are not a package, each
# with its reason:
TEST_DIRS_OUTSIDE_THE_TREE = {
    "plant": "the emulated plant end to end: hal/emulated's plant and scenarios driving a whole agent",
}


def test_tests_mirror_the_package_tree() -> None:
    tests = ROOT / "tests"
    stray = []
    for d in sorted(p for p in tests.rglob("*") if p.is_dir() and not p.name.startswith((".", "__"))):
        rel = d.relative_to(tests)
        if rel.parts[0] in TEST_DIRS_OUTSIDE_THE_TREE:
            continue
        if not (ROOT / rel).is_dir():
            stray.append(f"tests/{rel.as_posix()} (no {rel.as_posix()}/ in the source tree)")
    loose = [p.name for p in tests.glob("test_*.py") if p.name != "test_architecture.py"]
    assert not stray, f"test directories that mirror no package: {stray}"
    assert not loose, f"test modules at the top of tests/ (put them under the package they test): {loose}"


def test_ruff_passes() -> None:
    try:
        import ruff  # noqa: F401  (the test extra installs it)
    except ImportError:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "agent", "hal", "tests", "bench",
                        "firmware", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# -- the checkers catch what they are for ---------------------------------------------------------------------------

def test_the_checkers_flag_bad_examples() -> None:
    assert hal_imports_agent("hal/x.py", "def f():\n    from agent.outbox import Outbox\n") == [
        "agent.outbox", "agent.outbox.Outbox"]
    assert hal_imports_agent("hal/drivers/x.py", "from ..types import Reading\nimport numpy\n") == []
    assert real_hal_imports_emulated("hal/i2c.py", "def f():\n    from hal.emulated.i2c import EmulatedI2CBus\n") == [
        "hal.emulated.i2c", "hal.emulated.i2c.EmulatedI2CBus"]
    assert real_hal_imports_emulated("hal/modbus/client.py", "from ..emulated import modbus\n") == [
        "hal.emulated", "hal.emulated.modbus"]
    assert real_hal_imports_emulated("hal/emulated/modbus.py", "from hal.emulated.serial import PtyLink\n") == []
    table = 'BACKENDS = {("i2c", "emulated"): "hal.emulated.i2c:x"}\n'
    assert real_hal_imports_emulated("hal/backends.py", table) == []
    sql = outbox_sql("agent/x.py", 'import sqlite3\nc = sqlite3.connect("f")\n'
                                   'c.execute("DELETE FROM records WHERE id = ?")\n'
                                   'q = "SELECT stream, next_seq FROM streams"\nok = "select a thing from the menu"\n')
    assert sorted(s.split(":")[0] for s in sql) == ["2", "3", "4"]
    assert len(mqtt_publishes("agent/x.py", "import paho.mqtt.publish as p\nclient.publish('t', b'x')\n")) == 2
    graph = _graph({"agent/a.py": "from agent import b\n", "agent/b.py": "def f():\n    import agent.a\n"},
                   top_level_only=False)
    assert _cycles(graph) == [frozenset({"agent.a", "agent.b"})]
    assert _cycles(_graph({"agent/a.py": "from agent import b\n", "agent/b.py": "def f():\n    import agent.a\n"},
                          top_level_only=True)) == []
