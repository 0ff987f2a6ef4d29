"""The outbox on a small, really full file system, behind a real broker that goes away and comes back: it recovers
by itself (no restart), loses nothing silently, and its books close exactly. Every record produced is, at the
consumer, either received (by seq), named in a gap event's seq ranges (dropped by the policy), or counted in a
`not_committed` gap event (never committed, so it has no seq).

Uses a real tmpfs (needs root to mount, as in CI), a real Mosquitto with a persistent session for the consumer, the
real uplink, and a deterministic producer (the test counts what it produced; nothing depends on timing)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from agent.config import OutboxConfig
from agent.outbox import GAP_STREAM, LOST_NAME, Outbox
from agent.records import Emit
from agent.stats import Stats
from agent.uplink import Uplink
from tests.agent_helpers import small_config, wait
from tests.mqtt_helpers import MosquittoBroker, Subscriber, free_port

BASE_TS = 1_700_000_000_000_000_000
STREAMS = ("a", "b")


def _mount(path: Path, size: str) -> None:
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root; CI runs as root): {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    _mount(mnt, "2m")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@dataclass
class Producer:
    """Puts numbered records on two streams; counts every record it offered, accepted or not."""

    outbox: Outbox | None = None
    produced: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    n: int = 0

    def put(self, count: int, pace_every: int = 10) -> None:
        assert self.outbox is not None
        for _ in range(count):
            stream = STREAMS[self.n % 2]
            emit = Emit("reading", stream, BASE_TS + self.n * 1_000_000, {"value": self.n, "pad": "p" * 1000})
            self.produced[stream] += 1
            if not self.outbox.put(emit):
                self.refused[stream] += 1
            self.n += 1
            if self.n % pace_every == 0:
                time.sleep(0.002)

    def until(self, predicate, limit: int = 200_000) -> None:
        while not predicate():
            assert self.n < limit, "the condition never came"
            self.put(10)


class Rig:
    """Outbox + uplink on a state directory, as the agent wires them (the outbox the only writer)."""

    def __init__(self, port: int, state: Path, outbox_cfg: OutboxConfig, queue_size: int) -> None:
        self.config = replace(small_config(port), outbox=outbox_cfg)
        self.stats = Stats()
        self.outbox = Outbox(state, outbox_cfg, self.stats, queue_size=queue_size)
        self.outbox.start()
        self.uplink = Uplink(self.config, self.outbox, self.stats)
        self.uplink.start()

    def stop(self) -> None:
        self.uplink.stop(drain_s=1.0)
        self.outbox.stop(timeout=5.0)


def close_books(sub: Subscriber, produced: Counter[str]) -> dict[str, int]:
    """Every produced record is received, named in a gap range, or counted as not committed: exactly."""
    records = sub.records()
    data: dict[str, set[int]] = {s: set() for s in STREAMS}
    named: dict[str, set[int]] = {s: set() for s in STREAMS}
    not_committed: Counter[str] = Counter()
    gap_seqs = []
    for r in records:
        if r["stream"] == GAP_STREAM:
            gap_seqs.append(r["seq"])
            assert r["event"] == "gap"
            if r["reason"] == "not_committed":
                assert r["ranges"] == [] and r["first_ts"] <= r["last_ts"]
                not_committed[r["gap_stream"]] += r["count"]
            else:
                assert r["reason"] == "outbox_full", r
                covered = {s for lo, hi in r["ranges"] for s in range(lo, hi + 1)}
                assert len(covered) == r["count"]
                assert not covered & named[r["gap_stream"]], "a seq named twice"
                named[r["gap_stream"]] |= covered
        else:
            data[r["stream"]].add(r["seq"])
    # gap events are records too: they arrive without a hole
    assert sorted(set(gap_seqs)) == list(range(len(set(gap_seqs))))
    for s in STREAMS:
        assert not data[s] & named[s], f"{s}: a received seq is also named in a gap event"
        top = max(data[s] | named[s] | {-1}) + 1
        holes = set(range(top)) - data[s]
        assert holes == named[s], f"{s}: seq holes {sorted(holes - named[s])[:10]} are not named in any gap event"
        assert len(data[s]) + len(named[s]) + not_committed[s] == produced[s], \
            f"{s}: received {len(data[s])} + dropped {len(named[s])} + not committed {not_committed[s]} " \
            f"!= produced {produced[s]}"
    return {"received": sum(map(len, data.values())), "dropped": sum(map(len, named.values())),
            "not_committed": sum(not_committed.values())}


def _integrity(state: Path) -> None:
    with sqlite3.connect(state / "outbox.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


CASES = {
    # the floor off: SQLite really hits ENOSPC and must recover from it
    "enospc": (OutboxConfig(commit_interval_ms=20, max_mb=100, min_free_mb=0), "fault"),
    # the floor on: the policy drops before SQLite hits ENOSPC
    "floor-drop_oldest": (OutboxConfig(commit_interval_ms=20, max_mb=100, min_free_mb=0.5), "dropped"),
    "floor-drop_newest": (OutboxConfig(commit_interval_ms=20, max_mb=100, min_free_mb=0.5, policy="drop_newest"),
                          "dropped"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_full_disk_recovers_without_restart_and_the_books_close(small_fs: Path, tmp_path: Path, case: str) -> None:
    cfg, fills = CASES[case]
    port = free_port()
    broker = MosquittoBroker(tmp_path, port, persistent=True).start()
    sub = Subscriber(port, "edge/t1/#", client_id=f"wedge-{case}", persistent=True)
    state = small_fs / "state"
    rig = Rig(port, state, cfg, queue_size=300)
    prod = Producer(rig.outbox)
    try:
        prod.put(100)
        assert wait(lambda: rig.stats.get("uplink_acked") >= 100, 30)
        broker.stop()
        if fills == "fault":  # the disk fills up: the outbox is wedged, records wait in memory, then overflow
            prod.until(lambda: rig.outbox.fault is not None)
            assert rig.outbox.fault_info()["cause"] == "disk_full"
        else:  # the floor is reached: the policy drops, the disk never fills
            prod.until(lambda: rig.stats.get("outbox_dropped_oldest") + rig.stats.get("outbox_dropped_newest") > 0)
        prod.put(1000)
        if fills == "fault":
            assert rig.outbox.fault is not None and sum(prod.refused.values()) > 0
        else:
            assert rig.outbox.fault is None, f"the floor must keep SQLite from ENOSPC: {rig.outbox.fault}"
        backlog = rig.stats.get("outbox_committed")
        broker.start()
        t_acked = t_ok = None  # when the backlog was acknowledged; when the outbox committed again
        deadline = time.monotonic() + 90
        while (t_acked is None or t_ok is None) and time.monotonic() < deadline:
            now = time.monotonic()
            if t_acked is None and rig.stats.get("uplink_acked") + rig.stats.get("outbox_dropped_oldest") >= backlog:
                t_acked = now
            if t_ok is None and rig.outbox.fault is None and rig.outbox.flush(0):
                t_ok = now
            time.sleep(0.02)
        assert t_ok is not None, f"no recovery without a restart: {rig.outbox.fault}"
        assert t_acked is not None, "the backlog was never acknowledged"
        print(f"\n{case}: committing again {max(0.0, t_ok - t_acked):.2f} s after the backlog was acknowledged "
              f"(write errors {rig.stats.get('outbox_write_errors')}, reserve released "
              f"{rig.stats.get('outbox_reserve_released')})")
        assert wait(lambda: rig.outbox.depth == 0 and rig.outbox.flush(0), 60), "the backlog must drain"
        before, dropped_before = rig.stats.get("outbox_committed"), rig.stats.get("outbox_dropped_newest")
        prod.put(100)
        assert rig.outbox.flush(30)
        assert rig.stats.get("outbox_committed") >= before + 100, "new records are committed again"
        assert rig.stats.get("outbox_dropped_newest") == dropped_before
        assert wait(lambda: rig.outbox.depth == 0 and rig.outbox.flush(0), 60), "the backlog must drain"
    finally:
        rig.stop()
    assert rig.outbox.lost_total == sum(prod.refused.values()), "every refused record is counted, nothing else lost"
    assert sub.wait_for(lambda s: len(s.records()) >= rig.stats.get("uplink_acked"), 30)
    books = close_books(sub, prod.produced)
    print(f"{case}: produced {sum(prod.produced.values())}: {books}")
    if fills == "fault":
        assert books["not_committed"] > 0
    else:
        assert books["dropped"] > 0
    _integrity(state)
    sub.close()
    broker.stop()


def test_restart_on_a_still_full_disk(small_fs: Path, tmp_path: Path) -> None:
    """Wedged with the broker down (the outbox filled the file system itself), stopped (what could not be committed
    is counted: published as a gap event or kept in `outbox.lost`), started again on the same full disk with the
    broker back: recovers, publishes the tally, the books close across both runs."""
    port = free_port()
    broker = MosquittoBroker(tmp_path, port, persistent=True).start()
    sub = Subscriber(port, "edge/t1/#", client_id="wedge-restart", persistent=True)
    state = small_fs / "state"
    cfg = OutboxConfig(commit_interval_ms=20, max_mb=100, min_free_mb=0)
    rig = Rig(port, state, cfg, queue_size=300)
    prod = Producer(rig.outbox)
    prod.put(100)
    assert wait(lambda: rig.stats.get("uplink_acked") >= 100, 30)
    broker.stop()
    prod.until(lambda: rig.outbox.fault is not None)
    prod.put(500)
    rig.stop()
    first = rig.outbox
    acked_before = rig.stats.get("uplink_acked")
    lost_first = first.lost_total
    assert lost_first == sum(prod.refused.values()) + first.stats.get("outbox_lost_at_shutdown")
    assert first.stats.get("outbox_lost_at_shutdown") > 0, "records were waiting in memory at shutdown"
    print(f"\nfirst run: {lost_first} records not committed, {first.lost_saved}")
    if "saved in" in first.lost_saved:
        assert (state / LOST_NAME).exists()
    else:
        assert first.lost_saved == "published as gap events"

    # the second run, on the same full disk (the filler stays), with the broker back
    broker.start()
    rig = Rig(port, state, cfg, queue_size=300)
    prod.outbox = rig.outbox
    refused_before = sum(prod.refused.values())
    try:
        assert wait(lambda: rig.outbox.depth == 0 or rig.stats.get("uplink_acked") > 0, 30)
        prod.put(100)
        assert wait(lambda: rig.outbox.fault is None and rig.outbox.flush(0), 60), \
            f"no recovery on the still-full disk: {rig.outbox.fault}"
        assert wait(lambda: rig.outbox.depth == 0 and rig.outbox.flush(0), 60), "the backlog must drain"
    finally:
        rig.stop()
    assert rig.outbox.lost_total == sum(prod.refused.values()) - refused_before
    assert sub.wait_for(lambda s: len(s.records()) >= acked_before + rig.stats.get("uplink_acked"), 30)
    books = close_books(sub, prod.produced)
    print(f"restart: produced {sum(prod.produced.values())}: {books}")
    assert books["not_committed"] == lost_first + rig.outbox.lost_total
    _integrity(state)
    sub.close()
    broker.stop()


def test_queue_overflow_of_a_stalled_writer_publishes_exact_gap_events(tmp_path: Path) -> None:
    """Another connection holds the write lock: the writer stalls, the memory queue fills, and every record it
    refuses is counted per stream and published as a `not_committed` gap event with its time range."""
    state = tmp_path / "state"
    ob = Outbox(state, OutboxConfig(commit_interval_ms=5), queue_size=50)
    ob.start()
    blocker = sqlite3.connect(state / "outbox.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the writer's next commit waits on this lock: a stalled writer
    prod = Producer(ob)
    try:
        prod.put(600, pace_every=1_000_000)
        refused = dict(prod.refused)
        assert sum(refused.values()) >= 600 - 50 - 500  # the writer holds at most one batch, the queue 50
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert ob.flush(30)
    ob.stop()
    with sqlite3.connect(state / "outbox.db") as c:
        rows = c.execute("SELECT stream, seq, payload FROM records ORDER BY id").fetchall()
    gaps = [json.loads(p) for s, _, p in rows if s == GAP_STREAM]
    counts = Counter()
    for g in gaps:
        assert g["reason"] == "not_committed"
        counts[g["gap_stream"]] += g["count"]
    assert dict(counts) == refused, "gap events count exactly the refused records, per stream"
    for s in STREAMS:
        committed = [seq for st, seq, _ in rows if st == s]
        assert committed == list(range(prod.produced[s] - refused.get(s, 0)))
    assert ob.stats.get("outbox_dropped_queue_full") == sum(refused.values()) == ob.lost_total


def test_tally_saved_when_the_database_refuses_writes_is_published_once_at_next_start(tmp_path: Path) -> None:
    """SQLITE_READONLY at shutdown (as a card remounted read-only gives; injected with `PRAGMA query_only`): the
    gap event cannot be committed, so the tally goes to `outbox.lost`, is published at the next start, once."""
    state = tmp_path / "state"
    ob = Outbox(state, OutboxConfig(commit_interval_ms=5))
    ob.start()
    prod = Producer(ob)
    prod.put(10)
    assert ob.flush(10)
    ob._conn.execute("PRAGMA query_only = ON")
    prod.put(30)
    assert wait(lambda: ob.fault is not None, 10)
    assert ob.fault_info()["cause"] == "read_only"
    ob.stop(timeout=2)
    assert ob.lost_total == 30 and "saved in" in ob.lost_saved
    for _ in range(2):  # the second start must not publish it again
        ob2 = Outbox(state, OutboxConfig(commit_interval_ms=5))
        ob2.start()
        ob2.put(Emit("reading", "a", BASE_TS, {"value": -1}))
        assert ob2.flush(10)
        ob2.stop()
    with sqlite3.connect(state / "outbox.db") as c:
        gaps = [json.loads(p) for (p,) in c.execute("SELECT payload FROM records WHERE stream = ?", (GAP_STREAM,))]
    assert [(g["reason"], g["gap_stream"], g["count"]) for g in gaps] == [("not_committed", "a", 15),
                                                                          ("not_committed", "b", 15)]
    assert gaps[0]["first_ts"] < gaps[0]["last_ts"]


def test_doctor_and_status_say_the_outbox_is_wedged_why_and_the_fix(broker, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The running service's outbox refuses writes (SQLITE_READONLY, injected with `PRAGMA query_only` as a tmpfs
    cannot be remounted read-only under an open database): `status` and `doctor` say it is wedged, why, the fix."""
    from agent.cli import build_parser
    from agent.cli.doctor import Doctor
    from agent.service import Service, read_status
    from tests.agent_helpers import run_agent

    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[agent]\nid = "p"\n[mqtt]\nurl = "mqtt://127.0.0.1:{broker.port}"\n'
                   '[[sensors]]\nname = "probe"\ndriver = "emulated.temperature"\ninterval_s = 0.1\n')
    from agent.config import load
    agent = run_agent(load(cfg, emulate=True), tmp_path / "state")
    sock = tmp_path / "status.sock"
    service = Service(agent, status_socket=sock, environ={})
    service.ready()
    try:
        assert wait(lambda: agent.outbox.next_seq("probe") > 0)
        agent.outbox._conn.execute("PRAGMA query_only = ON")
        assert wait(lambda: agent.outbox.fault is not None, 20)
        doc = read_status(sock)
        ob = doc["outbox"]
        assert ob["wedged"] is True and ob["fault_cause"] == "read_only" and "read-only" in ob["fix"]
        args = build_parser().parse_args(["status", "--state-dir", str(tmp_path / "state"), "--socket", str(sock)])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "WEDGED (read only)" in out and "fix:" in out
        args = build_parser().parse_args(["doctor", "--config", str(cfg), "--state-dir", str(tmp_path / "state"),
                                          "--socket", str(sock)])
        doctor = Doctor(args)
        doctor.run()
        line = next(c for c in doctor.results if c.name == "outbox")
        assert line.status == "FAIL" and line.message.startswith("WEDGED") and "read only" in line.message
        assert "read-only" in line.hint
        agent.outbox._conn.execute("PRAGMA query_only = OFF")
        assert wait(lambda: agent.outbox.fault is None, 20)
        assert read_status(sock)["outbox"]["wedged"] is False
    finally:
        service.stopping()
        agent.stop(drain_s=0.5)


def test_agent_stop_while_wedged_and_the_broker_away_counts_everything(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM's path (Pipeline.stop) with the outbox refusing writes, no broker and a huge drain: it cuts the drain to
    its budget, counts every record it could not commit, saves the tally, and says the true number; the next start
    publishes it."""
    import logging

    from tests.agent_helpers import run_agent
    caplog.set_level(logging.INFO)
    state = tmp_path / "state"
    agent = run_agent(small_config(free_port()), state)
    assert wait(lambda: agent.outbox.next_seq("temp") > 0, 30)
    agent.outbox._conn.execute("PRAGMA query_only = ON")  # as a card remounted read-only
    assert wait(lambda: agent.outbox.fault is not None and agent.outbox.queue_depth() > 0, 30)
    t0 = time.monotonic()
    agent.stop(drain_s=600)
    print(f"\nstop while wedged, broker away, drain_s=600: {time.monotonic() - t0:.1f} s")
    ob = agent.outbox
    at_stop = ob.stats.get("outbox_lost_at_shutdown")
    assert at_stop > 0 and ob.lost_total == at_stop + ob.stats.get("outbox_dropped_queue_full")
    assert any("rather than 600 s at shutdown" in r.message for r in caplog.records)
    (line,) = [r.message for r in caplog.records if r.message.startswith("stopped in")]
    assert f"{at_stop} records could not be committed at shutdown (saved in" in line, line
    # the next start publishes the tally, per stream
    ob2 = Outbox(state, OutboxConfig(commit_interval_ms=5))
    ob2.start()
    assert ob2.flush(10) and wait(lambda: not ob2.not_committed(), 10)
    ob2.stop()
    with sqlite3.connect(state / "outbox.db") as c:
        gaps = [json.loads(p) for (p,) in c.execute("SELECT payload FROM records WHERE stream = ?", (GAP_STREAM,))]
    assert sum(g["count"] for g in gaps if g["reason"] == "not_committed") == ob.lost_total
