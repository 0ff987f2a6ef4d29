"""The fleet side: what runs next to the broker, not on the Pi.

`edge-agent ingest` (agent/fleet/ingest.py) subscribes to the agents' topics and stores every record exactly once
in PostgreSQL (schema: agent/fleet/schema.sql, documented in docs/fleet.md); `edge-agent fleet gaps|status`
(agent/fleet/view.py) read it back. Seq bookkeeping (watermarks, open holes, gaps explained by the agents' gap
events) lives in agent/fleet/gaps.py.

This package never touches the outbox, the uplink or the hardware, and the agent never imports it: its database
driver (psycopg 3, the `fleet` extra) is imported lazily, only by these commands.
"""
