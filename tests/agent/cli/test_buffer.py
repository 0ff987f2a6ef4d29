"""`edge-agent buffer stats|export|purge` and `edge-agent tail` on a real outbox filled by a real agent."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from agent.cli import main
from agent.cli.buffer import follow
from agent.cli.common import open_outbox
from agent.service import Service
from tests.agent_helpers import run_agent, wait
from tests.mqtt_helpers import free_port
from tests.agent.service.helpers import service_config


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An outbox with unsent records of `vib` and `temp` (no broker was reachable), the agent stopped."""
    state = tmp_path_factory.mktemp("filled") / "state"
    agent = run_agent(service_config(free_port()), state)
    try:
        assert wait(lambda: agent.outbox.next_seq("vib") >= 4 and agent.outbox.next_seq("temp") >= 20)
    finally:
        agent.stop(drain_s=0.1)
    return state


def _copy(state: Path, tmp_path: Path) -> Path:
    import shutil
    dst = tmp_path / "state"
    shutil.copytree(state, dst)
    return dst


def _rows(state: Path, sql: str, *params) -> list[tuple]:
    conn = sqlite3.connect(state / "outbox.db")
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def _base(state: Path, tmp_path: Path) -> list[str]:
    return ["--state-dir", str(state), "--socket", str(tmp_path / "none.sock")]


def test_stats_counts_every_stream(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["buffer", "stats", *_base(filled, tmp_path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    expected = dict(_rows(filled, "SELECT stream, COUNT(*) FROM records GROUP BY stream"))
    assert {s["stream"]: s["records"] for s in doc["streams"]} == expected
    assert doc["records"] == sum(expected.values())
    temp = next(s for s in doc["streams"] if s["stream"] == "temp")
    assert temp["first_seq"] == 0 and temp["last_seq"] == temp["records"] - 1 == temp["next_seq"] - 1
    assert main(["buffer", "stats", *_base(filled, tmp_path)]) == 0
    assert "temp" in capsys.readouterr().out


def test_export_writes_every_record_as_the_wire_body(filled: Path, tmp_path: Path) -> None:
    out = tmp_path / "backup.jsonl"
    assert main(["buffer", "export", *_base(filled, tmp_path), "-o", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == _rows(filled, "SELECT COUNT(*) FROM records")[0][0]
    temps = [r for r in lines if r["stream"] == "temp"]
    assert [r["seq"] for r in temps] == list(range(len(temps)))
    assert temps[0]["kind"] == "reading" and temps[0]["unit"] == "degC" and temps[0]["ts"].endswith("Z")
    out2 = tmp_path / "vib.jsonl"
    assert main(["buffer", "export", *_base(filled, tmp_path), "-o", str(out2), "--stream", "vib", "--limit",
                 "2"]) == 0
    assert [json.loads(x)["seq"] for x in out2.read_text().splitlines()] == [0, 1]


def test_purge_records_a_gap_event_naming_exactly_what_was_deleted(filled: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = _copy(filled, tmp_path)
    n_temp = _rows(state, "SELECT COUNT(*) FROM records WHERE stream = 'temp'")[0][0]
    next_before = dict(_rows(state, "SELECT stream, next_seq FROM streams"))
    assert main(["buffer", "purge", *_base(state, tmp_path), "--stream", "temp", "--yes"]) == 0
    assert f"purged {n_temp} records of temp (seq 0-{n_temp - 1})" in capsys.readouterr().out
    assert _rows(state, "SELECT COUNT(*) FROM records WHERE stream = 'temp'")[0][0] == 0
    assert _rows(state, "SELECT COUNT(*) FROM records WHERE stream = 'vib'")[0][0] > 0  # untouched
    (payload,) = _rows(state, "SELECT payload FROM records WHERE stream = 'outbox'")[0]
    assert json.loads(payload) == {"event": "gap", "reason": "purged", "gap_stream": "temp",
                                   "ranges": [[0, n_temp - 1]], "count": n_temp}
    after = dict(_rows(state, "SELECT stream, next_seq FROM streams"))
    assert after["temp"] == next_before["temp"]  # sequences continue: the hole is visible to consumers
    assert after["outbox"] == next_before.get("outbox", 0) + 1


def test_purge_needs_a_selection_and_confirmation(filled: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    state = _copy(filled, tmp_path)
    assert main(["buffer", "purge", *_base(state, tmp_path)]) == 2
    assert "say what to purge: --all, --stream NAME" in capsys.readouterr().err
    assert main(["buffer", "purge", *_base(state, tmp_path), "--all"]) == 2  # stdin is not a terminal
    assert "add --yes to confirm" in capsys.readouterr().err
    assert main(["buffer", "purge", *_base(state, tmp_path), "--older-than", "-1", "--yes"]) == 2
    assert main(["buffer", "purge", *_base(state, tmp_path), "--older-than", "86400", "--yes"]) == 0
    assert capsys.readouterr().out.strip().endswith("nothing to purge")


def test_purge_is_refused_while_the_service_runs(broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    agent = run_agent(service_config(broker.port), tmp_path / "state")
    sock = tmp_path / "status.sock"
    service = Service(agent, status_socket=sock, environ={})
    service.ready()
    try:
        code = main(["buffer", "purge", "--state-dir", str(tmp_path / "state"), "--socket", str(sock), "--all",
                     "--yes"])
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)
    assert code == 1
    assert "the service is running and owns the outbox: stop it first" in capsys.readouterr().err


def test_tail_follows_records_as_they_are_committed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    agent = run_agent(service_config(free_port()), state)  # no broker: records stay, tail sees each one
    got: list[dict] = []
    try:
        assert wait(lambda: (state / "outbox.db").exists() and agent.outbox.depth > 0)
        conn = open_outbox(state)
        done = threading.Event()
        for rec, note in follow(conn, ["temp"], 0, stop=done.is_set):
            assert note is None
            got.append(rec)
            if len(got) == 15:
                done.set()
        conn.close()
    finally:
        agent.stop(drain_s=0.1)
    seqs = [r["seq"] for r in got]
    assert seqs == list(range(seqs[0], seqs[0] + 15))  # in order, none skipped, only new ones
    assert {r["stream"] for r in got} == {"temp"} and all(r["kind"] == "reading" for r in got)


def test_tail_command_prints_the_last_records(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tail", *_base(filled, tmp_path)[:2], "--stream", "temp", "-n", "3", "--count", "3",
                 "--json"]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    last = _rows(filled, "SELECT MAX(seq) FROM records WHERE stream = 'temp'")[0][0]
    assert [r["seq"] for r in recs] == [last - 2, last - 1, last]
