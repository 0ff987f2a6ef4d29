-- edge-agent fleet schema (PostgreSQL 13+). Created by `edge-agent ingest` on first start (idempotent).
-- Documented in docs/fleet.md. Every data table is keyed by (agent, stream, seq): the wire contract's identity of
-- a record, so a duplicate delivery is dropped by ON CONFLICT DO NOTHING and every record is stored exactly once.

CREATE TABLE IF NOT EXISTS readings (          -- kind `reading`: one slow value
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,          -- time of the value (from the record)
    quality     text        NOT NULL,          -- good / uncertain / bad
    value       double precision,              -- NULL when the read failed or was NaN
    unit        text,
    error       text,                          -- why the read failed (quality bad)
    historical  boolean     NOT NULL DEFAULT false,  -- sent from the agent's backlog after an outage
    received    timestamptz NOT NULL DEFAULT now(),  -- commit time in this database
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS features (          -- kind `features`: one window of a stream sensor
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,          -- time of the window's first sample
    quality     text        NOT NULL,
    unit        text,
    rate_hz     double precision,
    n           integer,                       -- window length (samples)
    gap_before  bigint,                        -- samples lost before the window
    features    jsonb       NOT NULL,          -- per axis a table of features: {"x": {"rms": 1.5, "zone": "B"}}
    extra       jsonb,                         -- any other field of the body
    historical  boolean     NOT NULL DEFAULT false,
    received    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS events (            -- kind `event`: state and zone changes, anomalies, gap events
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    quality     text        NOT NULL,
    event       text,                          -- state / zone / anomaly / gap / ...
    body        jsonb       NOT NULL,          -- the body without agent, stream, seq, ts, quality, historical
    historical  boolean     NOT NULL DEFAULT false,
    received    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS health (            -- kind `health`: the agent's own vital signs
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    quality     text        NOT NULL,
    body        jsonb       NOT NULL,
    historical  boolean     NOT NULL DEFAULT false,
    received    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS captures (          -- kind `capture`: raw windows (base64 float32 per axis)
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    quality     text        NOT NULL,
    body        jsonb       NOT NULL,
    historical  boolean     NOT NULL DEFAULT false,
    received    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS status_records (    -- kind `status` records sent through the outbox (not the birth)
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    seq         bigint      NOT NULL,
    ts          timestamptz NOT NULL,
    quality     text        NOT NULL,
    body        jsonb       NOT NULL,
    historical  boolean     NOT NULL DEFAULT false,
    received    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, seq)
);

CREATE TABLE IF NOT EXISTS agents (            -- one row per agent: the retained status topic, last seen
    agent       text        PRIMARY KEY,
    status      text,                          -- online / offline (retained `<prefix>/<agent>/status`)
    version     text,
    config      text,                          -- sha256 prefix of the agent's config file
    boot        timestamptz,
    status_ts   timestamptz,                   -- `ts` of the last online birth
    status_at   timestamptz,                   -- when this database last received a status message
    last_seen   timestamptz                    -- when this database last received a record of this agent
);

CREATE TABLE IF NOT EXISTS streams (           -- one row per (agent, stream): the seq bookkeeping
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    kind        text        NOT NULL,
    max_seq     bigint      NOT NULL DEFAULT -1,  -- highest seq received or explained by a gap event
    watermark   bigint      NOT NULL DEFAULT -1,  -- every seq <= watermark is stored or explained by a gap event
    records     bigint      NOT NULL DEFAULT 0,   -- records stored
    last_ts     timestamptz,                   -- newest record time
    last_lag_ms double precision,              -- DB commit time minus record time of the newest record
    last_at     timestamptz,                   -- when the newest record was committed here
    PRIMARY KEY (agent, stream)
);

CREATE TABLE IF NOT EXISTS holes (             -- open holes: seq ranges not received and not explained (yet)
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    first_seq   bigint      NOT NULL,
    last_seq    bigint      NOT NULL,          -- inclusive
    opened      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent, stream, first_seq)
);

CREATE TABLE IF NOT EXISTS gaps (              -- explained gaps: seq ranges the agent says it dropped (gap events)
    agent       text        NOT NULL,
    stream      text        NOT NULL,          -- the stream that lost records (the event's gap_stream)
    first_seq   bigint      NOT NULL,
    last_seq    bigint      NOT NULL,          -- inclusive
    reason      text,                          -- outbox_full / expired / purged / ...
    event_seq   bigint      NOT NULL,          -- seq of the gap event on stream `outbox`
    ts          timestamptz NOT NULL,
    PRIMARY KEY (agent, stream, first_seq, event_seq)
);

CREATE INDEX IF NOT EXISTS readings_ts ON readings (agent, stream, ts);
CREATE INDEX IF NOT EXISTS features_ts ON features (agent, stream, ts);
CREATE INDEX IF NOT EXISTS events_ts ON events (agent, stream, ts);

CREATE TABLE IF NOT EXISTS arrivals (          -- work queue: seq ranges stored (or explained) since the last fold
    id          bigserial   PRIMARY KEY,
    agent       text        NOT NULL,
    stream      text        NOT NULL,
    kind        text        NOT NULL,          -- the record kind, or `gap` for a range a gap event explains
    first_seq   bigint      NOT NULL,
    last_seq    bigint      NOT NULL,
    n           bigint      NOT NULL,          -- records stored in this range (0 for an explained range)
    last_ts     timestamptz,
    at          timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS rejected (          -- messages that could not be stored, and why
    id          bigserial   PRIMARY KEY,
    topic       text        NOT NULL,
    reason      text        NOT NULL,
    payload     bytea,
    received    timestamptz NOT NULL DEFAULT now()
);
