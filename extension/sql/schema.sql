-- The event log: one row per event, never updated or deleted.
--
-- `position` is the event's place in the global log. It is derived from the 64-bit id of the
-- transaction that appended it and the event's index within that transaction
-- (`xid << 20 | index`), so readers can hand out only events whose transaction is older than
-- every transaction still running (see eventstore._visible_below()) and never skip one that
-- commits late.
CREATE TABLE eventstore.events (
    position    bigint      NOT NULL,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    data        jsonb       NOT NULL,
    metadata    jsonb       NOT NULL,
    id          uuid        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT statement_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (position),
    CONSTRAINT events_stream_version_key UNIQUE (stream, version),
    CONSTRAINT events_id_key UNIQUE (id),
    CONSTRAINT events_version_check CHECK (version >= 0)
);

COMMENT ON TABLE eventstore.events IS
    'The event log. Append with eventstore.append(); rows are immutable.';

-- read_category() scans one category in position order.
CREATE INDEX events_category_position_idx
    ON eventstore.events (split_part(stream, '-', 1), position);

-- Extension-owned tables are left out of pg_dump unless registered here.
SELECT pg_catalog.pg_extension_config_dump('eventstore.events', '');

-- A stored event, as every read function returns it.
CREATE TYPE eventstore.recorded_event AS (
    position    bigint,
    stream      text,
    version     bigint,
    type        text,
    data        jsonb,
    metadata    jsonb,
    id          uuid,
    recorded_at timestamptz
);

-- What eventstore.append() returns.
CREATE TYPE eventstore.append_result AS (
    first_version  bigint,
    last_version   bigint,
    first_position bigint,
    last_position  bigint
);

-- What eventstore.try_append() returns: append_result plus the stream's version. When the
-- stream is not at the expected version the first four columns are NULL and nothing is written.
CREATE TYPE eventstore.append_attempt AS (
    first_version   bigint,
    last_version    bigint,
    first_position  bigint,
    last_position   bigint,
    current_version bigint
);

-- Stored events are facts: refuse UPDATE, DELETE and TRUNCATE.
CREATE FUNCTION eventstore._refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stored events are immutable: % on eventstore.events is not allowed', TG_OP
        USING ERRCODE = 'feature_not_supported',
              HINT = 'Append a compensating event instead.';
END
$$;

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._refuse_event_change();
