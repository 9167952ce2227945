-- eventstore serve (pg_eventstore_server): EventStoreDB's persistent subscriptions.
--
-- Each one is a subscription group of the store (eventstore.groups) named
-- `<event_source>::<subscription_group>`, which holds its progress, leases and parked
-- events. This table keeps what only the protocol knows: where the subscription's events
-- come from as its clients name them, the filter the server applies, and the settings that
-- GetInfo reports back. Its row and the store's group are created and deleted together.

CREATE SCHEMA IF NOT EXISTS kurrentdb;

COMMENT ON SCHEMA kurrentdb IS
    'eventstore serve: what EventStoreDB''s gRPC protocol knows of persistent subscriptions '
    'beyond the store''s subscription groups.';

CREATE TABLE kurrentdb.persistent_subscriptions (
    -- The store's group.
    group_name           text        PRIMARY KEY,
    -- The stream the clients subscribed to, or $all.
    event_source         text        NOT NULL,
    -- The group's name as the clients know it.
    subscription_group   text        NOT NULL,
    -- Where it started, as GetInfo reports it: "0", "-1" or a revision for a stream;
    -- "C:<commit>/P:<prepare>" for $all.
    start_from           text        NOT NULL,
    -- A stream group of a stream other than $ce-/$et-: the server delivers only that
    -- stream's events from this revision on; the others are acked unseen.
    stream               text,
    from_revision        bigint      CHECK (from_revision >= 0),
    -- A filtered $all group: on the stream name or the event type, a regular expression or
    -- prefixes.
    filter_on            text        CHECK (filter_on IN ('stream', 'event_type')),
    filter_regex         text,
    filter_prefixes      text[],
    -- Settings the store's groups do not use, kept as given.
    consumer_strategy    text        NOT NULL,
    max_subscriber_count integer     NOT NULL CHECK (max_subscriber_count >= 0),
    resolve_links        boolean     NOT NULL,
    extra_statistics     boolean     NOT NULL,
    checkpoint_after_ms  integer     NOT NULL,
    min_checkpoint_count integer     NOT NULL,
    max_checkpoint_count integer     NOT NULL,
    live_buffer_size     integer     NOT NULL,
    read_batch_size      integer     NOT NULL,
    history_buffer_size  integer     NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_source, subscription_group),
    CHECK ((stream IS NULL) = (from_revision IS NULL)),
    CHECK (filter_on IS NOT NULL OR (filter_regex IS NULL AND filter_prefixes IS NULL))
);

COMMENT ON TABLE kurrentdb.persistent_subscriptions IS
    'The persistent subscriptions of eventstore serve, one per store subscription group.';

-- Where the store's roles exist (the extension creates them), its administrators manage the
-- subscriptions and its consumers read them.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'eventstore_admin') THEN
        GRANT USAGE ON SCHEMA kurrentdb TO eventstore_admin;
        GRANT SELECT, INSERT, UPDATE, DELETE ON kurrentdb.persistent_subscriptions
            TO eventstore_admin;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'eventstore_consumer') THEN
        GRANT USAGE ON SCHEMA kurrentdb TO eventstore_consumer;
        GRANT SELECT ON kurrentdb.persistent_subscriptions TO eventstore_consumer;
    END IF;
END
$$;
