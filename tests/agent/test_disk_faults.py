"""A full disk and a read-only file system under the outbox: reported, counted, survived, no corruption, and
writing resumes when space returns. Uses a real small tmpfs (needs root to mount, as in CI)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import Outbox
from agent.records import Emit
from tests.agent_helpers import wait

pytestmark = pytest.mark.slow  # an agent writing to a filling disk


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=768k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root; CI runs as root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True, capture_output=True)


def _emit(i: int) -> Emit:
    return Emit("reading", "s", 1_700_000_000_000_000_000 + i, {"value": i, "pad": "p" * 1500})


def _check_db(path: Path) -> list[int]:
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = c.execute("SELECT seq, payload FROM records WHERE stream = 's' ORDER BY id").fetchall()
    seqs = [r[0] for r in rows]
    assert [json.loads(r[1])["value"] for r in rows] == seqs, "every record kept its own seq, in order"
    return seqs


def test_disk_full_is_survived_and_writing_resumes(small_fs: Path) -> None:
    # no free-space floor: SQLite itself must hit ENOSPC (the floor would have the policy drop records first)
    ob = Outbox(small_fs / "state", OutboxConfig(commit_interval_ms=10, max_mb=100, min_free_mb=0))
    ob.start()
    i = 0
    try:
        # full, and still full once the outbox gave back its reserve (which lets it commit a little more)
        while (ob.fault is None or ob.stats.get("outbox_reserve_released") == 0) and i < 5000:
            ob.put(_emit(i))
            i += 1
            if i % 20 == 0:
                time.sleep(0.01)
        assert ob.stats.get("outbox_write_errors") >= 1, "the small file system must fill up"
        assert "full" in (ob.fault or "").lower()
        for _ in range(50):  # records keep arriving while the disk is full: kept in memory, not lost
            ob.put(_emit(i))
            i += 1
        time.sleep(0.5)
        assert ob.fault is not None
        _remount(small_fs, "size=16m")  # space returns
        assert ob.flush(30), "every accepted record is committed once space returns"
        assert ob.fault is None
    finally:
        ob.stop()
    seqs = _check_db(small_fs / "state" / "outbox.db")
    assert seqs == list(range(i)), "nothing lost, nothing repeated"
    assert ob.stats.get("outbox_dropped_queue_full") == 0


def test_read_only_database_is_survived(tmp_path: Path) -> None:
    """SQLITE_READONLY at run time (what an SD card remounted read-only by the kernel gives). A tmpfs cannot be
    remounted read-only while the database is open, so the fault is injected with `PRAGMA query_only`, which makes
    SQLite refuse writes with the same error."""
    ob = Outbox(tmp_path / "state", OutboxConfig(commit_interval_ms=10))
    ob.start()
    try:
        for i in range(10):
            ob.put(_emit(i))
        assert ob.flush(10)
        ob._conn.execute("PRAGMA query_only = ON")
        for i in range(10, 20):
            ob.put(_emit(i))
        assert wait(lambda: ob.stats.get("outbox_write_errors") >= 1, 10)
        assert ob.fault is not None and "readonly" in ob.fault.lower().replace(" ", "")
        assert not ob.flush(0.5)
        ob._conn.execute("PRAGMA query_only = OFF")
        assert ob.flush(30)
        assert ob.fault is None
    finally:
        ob.stop()
    assert _check_db(tmp_path / "state" / "outbox.db") == list(range(20))


def test_agent_keeps_running_on_a_full_disk(small_fs: Path, broker) -> None:
    """The whole agent, with its outbox on a full file system: acquisition continues, nothing crashes, and once
    space returns everything committed reaches the broker."""
    from tests.agent_helpers import run_agent, small_config

    filler = small_fs / "filler"
    state = small_fs / "state"
    agent = run_agent(small_config(broker.port), state)
    try:
        assert wait(lambda: agent.stats.get("uplink_acked") >= 5)
        with open(filler, "wb") as f:  # fill the disk
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        assert wait(lambda: agent.stats.get("outbox_write_errors") >= 1, 20)
        assert all(r.is_alive() for r in agent.readers)
        os.unlink(filler)
        assert wait(lambda: agent.outbox.fault is None, 30)
        assert wait(lambda: agent.outbox.depth == 0, 30)
    finally:
        agent.stop()
    with sqlite3.connect(state / "outbox.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
