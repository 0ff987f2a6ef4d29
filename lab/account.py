"""Field lab, power-cut part: accounts for every record after a series of power cuts (run on the host).

Inputs: the broker's side (every message a QoS 1 subscriber got, `topic payload` lines, in order), the guest's outbox
check after each boot (`N seen-so-far json`: integrity and per-stream next_seq), and the final report (clean stop,
records left unsent). Fails, naming the stream and seqs, when:
  * an outbox fails PRAGMA integrity_check after a cut;
  * the broker received a seq that the outbox, after the cut, had not durably committed (its next_seq is not past
    it): that seq would be handed out again;
  * one (stream, seq) arrived with two different bodies (a seq reused);
  * a seq is missing between a stream's first and last without a gap event on stream `outbox` naming it.
Touches nothing; prints a summary.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

# fields that say how a record travelled, not what it is: a record re-sent from the backlog is marked historical
TRANSPORT = {"kind", "historical"}


def main(recv_path: str, boots_path: str, final_path: str) -> int:
    lines = open(recv_path, encoding="utf-8", errors="replace").read().splitlines()
    msgs = []
    for line in lines:
        topic, _, payload = line.partition(" ")
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        msgs.append((topic, payload, body if isinstance(body, dict) else None))
    problems: list[str] = []
    boots = []
    for row in open(boots_path).read().splitlines():
        name, seen, js = row.split(" ", 2)
        boots.append((name, int(seen), json.loads(js) if js.strip() else {}))

    # durability: what the broker had before each boot's agent started must be committed in the outbox
    for name, seen, check in boots:
        if check.get("outbox") is None:
            if seen:
                problems.append(f"boot {name}: no outbox after the cut, but the broker had {seen} messages")
            continue
        if check.get("integrity") != ["ok"]:
            problems.append(f"boot {name}: PRAGMA integrity_check: {check.get('integrity')}")
        streams = check.get("streams", {})
        top: dict[str, int] = {}
        for _t, _p, b in msgs[:seen]:
            if b and "stream" in b and "seq" in b:
                top[b["stream"]] = max(top.get(b["stream"], -1), b["seq"])
        for s, hi in sorted(top.items()):
            nxt = streams.get(s, {}).get("next_seq")
            if nxt is None or nxt <= hi:
                problems.append(f"boot {name}: the broker has {s} seq {hi} but the outbox after the cut has next_seq "
                                f"{nxt}: that seq was published before it was durably committed")
    final = json.load(open(final_path))
    status = final.get("main_status") or []  # ExecMainStatus and Result, in systemctl's order
    if final.get("stop_rc") != 0 or "0" not in status or "success" not in status:
        problems.append(f"final clean stop: systemctl stop rc {final.get('stop_rc')}, {final.get('main_status')}")
    if final.get("export_rc") != 0:
        problems.append(f"final export failed: {final.get('export_err')}")

    bodies: dict[tuple[str, int], set[str]] = defaultdict(set)
    gaps: dict[str, set[int]] = defaultdict(set)
    seqs: dict[str, set[int]] = defaultdict(set)
    def take(b: dict) -> None:
        s, q = b["stream"], b["seq"]
        seqs[s].add(q)
        bodies[(s, q)].add(json.dumps({k: v for k, v in b.items() if k not in TRANSPORT}, sort_keys=True))
        if b.get("event") == "gap" and "gap_stream" in b:
            for lo, hi in b.get("ranges", []):
                gaps[b["gap_stream"]].update(range(lo, hi + 1))
    for _t, _p, b in msgs:
        if b and "stream" in b and "seq" in b:
            take(b)
    for b in final.get("unsent", []):
        if "stream" in b and "seq" in b:
            take(b)
    for (s, q), v in bodies.items():
        if len(v) > 1:
            problems.append(f"{s} seq {q} arrived with {len(v)} different bodies: a seq reused")
    total = 0
    for s, qs in sorted(seqs.items()):
        total += len(qs)
        missing = sorted(set(range(min(qs), max(qs) + 1)) - qs - gaps.get(s, set()))
        if missing:
            more = " ..." if len(missing) > 20 else ""
            problems.append(f"{s}: seqs missing without a gap event: {missing[:20]}{more} ({len(missing)})")
        print(f"[lab]   {s}: seq {min(qs)}..{max(qs)}, {len(qs)} distinct, {len(gaps.get(s, set()))} in gap events")
    print(f"[lab]   {len(msgs)} messages received, {total} distinct records, "
          f"{len(final.get('unsent', []))} left unsent after the final drain, {len(boots)} boots checked")
    for p in problems:
        print(f"[lab]   FAILED: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
