-- The checkpoints of the projections that the client's projection framework runs
-- (pg_eventstore_client::projection). A database set up by release 0.2.0 has this table
-- already, from that release's V2 (which also created the shop read models, now migrated
-- by the shop crate's own set); IF NOT EXISTS keeps it, rows and all.

CREATE SCHEMA IF NOT EXISTS projections;

COMMENT ON SCHEMA projections IS
    'Checkpoints of the projections run by pg_eventstore_client (the eventstore daemon).';

-- One row per projection. `position` moves in the same transaction as the projection's
-- read-model writes, so each event's effect lands exactly once.
CREATE TABLE IF NOT EXISTS projections.checkpoints (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    -- Events applied since the projection started from zero (the last rebuild).
    events_applied  bigint      NOT NULL DEFAULT 0 CHECK (events_applied >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The daemon that runs the projection now (informational; an advisory lock decides).
    owner           text,
    owner_since     timestamptz,
    -- Set while the projection is stopped at an event it cannot apply; cleared when it
    -- applies that event.
    failed_position bigint,
    failed_stream   text,
    failed_version  bigint,
    failed_type     text,
    failed_event_id uuid,
    error           text,
    failed_at       timestamptz,
    failures        integer     NOT NULL DEFAULT 0
);

COMMENT ON TABLE projections.checkpoints IS
    'Per projection: the global position applied up to, its owner, and the event it is stopped at, if any.';
