-- pg_eventstore 0.4.0:
-- - positions survive a logical dump and restore (pg_dump/pg_restore, COPY) into any
--   cluster: a per-database position base, raised when loaded events lie above what this
--   cluster's transaction ids would give;
-- - writes on a hot standby are refused with 25006 and a message that says so;
-- - least privilege: no function is executable by PUBLIC; the roles eventstore_reader,
--   eventstore_writer, eventstore_consumer and eventstore_admin are granted instead, and
--   every SECURITY DEFINER function pins its search_path.
-- This file is the upgrade script from 0.3.0 and, through extension_sql_file!, part of the
-- 0.4.0 install script.

---------------------------------------------------------------------------------------------
-- The position base.
--
-- Positions are `(transaction id + base) << 20 | index`. A transaction id means something
-- only in the cluster that assigned it: events restored into another cluster keep their
-- positions, which may lie far above the ids that cluster hands out. The base lifts the ids
-- of this database above every stored position. It is 0 until a load of events needs more,
-- and only ever grows. It is not dumped: a restored database derives its own from the
-- events it receives (eventstore._events_loaded()).
CREATE TABLE eventstore.position_base (
    base       bigint      NOT NULL CHECK (base >= 0),
    changed_at timestamptz NOT NULL DEFAULT now(),
    single_row boolean     NOT NULL DEFAULT true PRIMARY KEY CHECK (single_row)
);

INSERT INTO eventstore.position_base (base) VALUES (0);

-- The bound below which every event belongs to an ended transaction (see reads.sql), in the
-- statement's snapshot: its xmin and the base that snapshot sees. The reads name it in a
-- subquery, which keeps them inlinable.
CREATE VIEW eventstore._log_horizon AS
SELECT (pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint + b.base)
           << 20 AS visible_below
FROM eventstore.position_base AS b;

CREATE OR REPLACE FUNCTION eventstore._visible_below() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT h.visible_below FROM eventstore._log_horizon AS h
$$;

CREATE OR REPLACE FUNCTION eventstore.read_all(
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    event_types text[] DEFAULT NULL,
    categories text[] DEFAULT NULL
) RETURNS SETOF eventstore.recorded_event
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
    FROM eventstore.events AS e
    WHERE e.position > eventstore._check_position(read_all.after_position)
      AND e.position < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
      AND (read_all.event_types IS NULL OR e.type = ANY (read_all.event_types))
      AND (read_all.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (read_all.categories))
    ORDER BY e.position
    LIMIT eventstore._check_count(read_all.max_count)
$$;

CREATE OR REPLACE FUNCTION eventstore.read_category(
    category text,
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    consumer_group_member int DEFAULT NULL,
    consumer_group_size int DEFAULT NULL
) RETURNS SETOF eventstore.recorded_event
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
    FROM eventstore.events AS e
    WHERE split_part(e.stream, '-', 1) = eventstore._check_category(read_category.category)
      AND e.position > eventstore._check_position(read_category.after_position)
      AND e.position < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
      AND eventstore._check_consumer_group(read_category.consumer_group_member,
                                           read_category.consumer_group_size)
      AND (read_category.consumer_group_size IS NULL
           OR mod(hashtextextended(e.stream, 0) & 9223372036854775807,
                  read_category.consumer_group_size) = read_category.consumer_group_member)
    ORDER BY e.position
    LIMIT eventstore._check_count(read_category.max_count)
$$;

CREATE OR REPLACE FUNCTION eventstore.head_position() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(max(e.position), 0)
    FROM eventstore.events AS e
    WHERE e.position < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
$$;

-- Tells every session that the base changed: appends cache it (src/position.rs).
CREATE FUNCTION eventstore._position_base_changed() RETURNS void
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'eventstore_position_base_changed';

-- Raises 25006 on a hot standby: "cannot <what> on a hot standby".
CREATE FUNCTION eventstore._refuse_on_standby(what text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pg_catalog.pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot % on a hot standby', what
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'This server is a standby in recovery; it serves reads only.',
                  HINT = 'Send writes to the primary.';
    END IF;
END
$$;

-- Raises the base so that positions handed out from now on lie above every stored event,
-- and returns it. Only events loaded from elsewhere can lie at or above
-- (next transaction id + base) << 20; for them the base becomes top + 1 - next id. The SHARE
-- lock waits for the appends in flight and holds new ones off until this transaction ends,
-- so no append keeps a position under the old base once readers use the new one. A
-- transaction that already had an id when this ran and appends later may still land below
-- a loaded event: in a loaded stream that is the usual 40001 (its retry gets a new id), and
-- elsewhere readers hold the loaded events back until that transaction ends, as for any
-- transaction still running. Readers see the new base together with the events that required
-- it, in one snapshot.
CREATE FUNCTION eventstore.rebase_positions() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    top bigint;
    next_id bigint;
    current_base bigint;
BEGIN
    PERFORM eventstore._refuse_on_standby('rebase positions');
    LOCK TABLE eventstore.events IN SHARE MODE;
    SELECT b.base INTO current_base FROM eventstore.position_base AS b FOR UPDATE;
    -- No id below next_id is unassigned but this transaction's own: the snapshot's xmax is
    -- above every ended transaction's. Counting its own id in keeps this transaction's
    -- appends after a load above the loaded events too.
    SELECT max(e.position) >> 20,
           greatest(pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                    pg_current_xact_id()::text::bigint)
    INTO top, next_id
    FROM eventstore.events AS e;
    IF top IS NULL OR top + 1 - next_id <= current_base THEN
        RETURN current_base;
    END IF;
    UPDATE eventstore.position_base SET base = top + 1 - next_id, changed_at = now();
    PERFORM eventstore._position_base_changed();
    RETURN top + 1 - next_id;
END
$$;

-- After a statement that inserted into eventstore.events other than append (COPY by
-- pg_restore or a user, INSERT ... SELECT): rebase when the loaded events lie at or above
-- what this cluster hands out next. Appends insert directly and never fire it
-- (src/events_table.rs); the full INSERT they fall back to never needs it.
CREATE FUNCTION eventstore._events_loaded() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    top bigint;
BEGIN
    SELECT max(e.position) >> 20 INTO top FROM eventstore.events AS e;
    IF top >= greatest(pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
                       pg_current_xact_id()::text::bigint + 1)
              + (SELECT b.base FROM eventstore.position_base AS b) THEN
        PERFORM eventstore.rebase_positions();
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_loaded
    AFTER INSERT ON eventstore.events
    FOR EACH STATEMENT EXECUTE FUNCTION eventstore._events_loaded();

-- A database whose events were restored under an older version gets its base now.
SELECT eventstore.rebase_positions();

-- The group ids' sequence travels with the groups, so a restored database creates new
-- groups under fresh ids.
SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_groups_group_id_seq', '');

---------------------------------------------------------------------------------------------
-- Hot standbys: every writing group function refuses with 25006. They all look their group
-- up through _group(), except create_group; parked() only reads and no longer uses it.

CREATE OR REPLACE FUNCTION eventstore._group(group_name text, for_update boolean)
RETURNS eventstore.subscription_groups
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    found_group eventstore.subscription_groups;
BEGIN
    PERFORM eventstore._refuse_on_standby('change subscription groups');
    PERFORM eventstore._check_name('group_name', _group.group_name);
    IF for_update THEN
        SELECT * INTO found_group FROM eventstore.subscription_groups AS g
        WHERE g.group_name = _group.group_name FOR UPDATE;
    ELSE
        SELECT * INTO found_group FROM eventstore.subscription_groups AS g
        WHERE g.group_name = _group.group_name;
    END IF;
    IF found_group.group_id IS NULL THEN
        RAISE EXCEPTION 'subscription group "%" does not exist', _group.group_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with eventstore.create_group(); eventstore.groups lists the groups.';
    END IF;
    RETURN found_group;
END
$$;

CREATE OR REPLACE FUNCTION eventstore.create_group(
    group_name text,
    categories text[] DEFAULT NULL,
    event_types text[] DEFAULT NULL,
    from_position bigint DEFAULT 0,
    max_attempts int DEFAULT 5,
    lease_timeout interval DEFAULT '30 seconds',
    ordered_by_stream boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
BEGIN
    PERFORM eventstore._refuse_on_standby('create subscription groups');
    PERFORM eventstore._check_name('group_name', group_name);
    PERFORM eventstore._check_group_options(categories, event_types, from_position,
        max_attempts, lease_timeout, ordered_by_stream, false);
    INSERT INTO eventstore.subscription_groups AS g
        (group_name, categories, event_types, from_position, max_attempts, lease_timeout,
         ordered_by_stream, position)
    VALUES (group_name, categories, event_types, from_position, max_attempts, lease_timeout,
            ordered_by_stream, from_position)
    ON CONFLICT ON CONSTRAINT subscription_groups_group_name_key DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'subscription group "%" already exists', group_name
            USING ERRCODE = 'unique_violation',
                  CONSTRAINT = 'subscription_groups_group_name_key',
                  HINT = 'Change it with eventstore.alter_group(), or delete it first.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION eventstore.parked(group_name text)
RETURNS TABLE (
    "position"  bigint,
    stream      text,
    version     bigint,
    type        text,
    data        jsonb,
    metadata    jsonb,
    id          uuid,
    recorded_at timestamptz,
    attempt     int,
    reason      text,
    parked_at   timestamptz
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    found_id int;
BEGIN
    PERFORM eventstore._check_name('group_name', parked.group_name);
    SELECT g.group_id INTO found_id FROM eventstore.subscription_groups AS g
    WHERE g.group_name = parked.group_name;
    IF found_id IS NULL THEN
        RAISE EXCEPTION 'subscription group "%" does not exist', parked.group_name
            USING ERRCODE = 'undefined_object',
                  HINT = 'Create it with eventstore.create_group(); eventstore.groups lists the groups.';
    END IF;
    RETURN QUERY
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
           ge.attempt, ge.reason, ge.parked_at
    FROM eventstore.group_events AS ge JOIN eventstore.events AS e ON e.position = ge.position
    WHERE ge.group_id = found_id AND ge.parked_at IS NOT NULL
    ORDER BY ge.position;
END
$$;

---------------------------------------------------------------------------------------------
-- Least privilege.
--
-- The roles are created where missing (they belong to the cluster, not to this database or
-- extension, and stay when it is dropped). A user grants one of them:
--   GRANT eventstore_writer TO app;
DO $$
DECLARE
    wanted text;
BEGIN
    FOREACH wanted IN ARRAY ARRAY['eventstore_reader', 'eventstore_writer',
                                  'eventstore_consumer', 'eventstore_admin'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS r WHERE r.rolname = wanted) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
        END IF;
    END LOOP;
    -- writer and consumer include reader; admin includes both.
    IF NOT pg_catalog.pg_has_role('eventstore_writer', 'eventstore_reader', 'MEMBER') THEN
        GRANT eventstore_reader TO eventstore_writer;
    END IF;
    IF NOT pg_catalog.pg_has_role('eventstore_consumer', 'eventstore_reader', 'MEMBER') THEN
        GRANT eventstore_reader TO eventstore_consumer;
    END IF;
    IF NOT pg_catalog.pg_has_role('eventstore_admin', 'eventstore_writer', 'MEMBER') THEN
        GRANT eventstore_writer TO eventstore_admin;
    END IF;
    IF NOT pg_catalog.pg_has_role('eventstore_admin', 'eventstore_consumer', 'MEMBER') THEN
        GRANT eventstore_consumer TO eventstore_admin;
    END IF;
END
$$;

-- Every role may look into the schema; what it may call is each function's own grant.
GRANT USAGE ON SCHEMA eventstore TO PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstore FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA eventstore FROM PUBLIC;

-- Reads and subscriptions. The read functions are inlined into the caller's query and run
-- with its privileges, so the reader also reads the log and the helpers they call.
GRANT EXECUTE ON FUNCTION
    eventstore.read_stream(text, bigint, integer, boolean),
    eventstore.read_all(bigint, integer, text[], text[]),
    eventstore.read_category(text, bigint, integer, integer, integer),
    eventstore.head_position(),
    eventstore.stream_version(text),
    eventstore.category(text),
    eventstore.health(),
    eventstore.wakeup_mode(),
    eventstore.any_version(),
    eventstore.no_stream(),
    eventstore.stream_exists(),
    eventstore._visible_below(),
    eventstore._check_stream(text),
    eventstore._check_category(text),
    eventstore._check_count(integer),
    eventstore._check_position(bigint),
    eventstore._check_from_version(bigint, boolean),
    eventstore._check_consumer_group(integer, integer)
    TO eventstore_reader;
GRANT SELECT ON eventstore.events, eventstore.position_base, eventstore._log_horizon,
    eventstore.groups
    TO eventstore_reader;

-- Appends. append inserts into the log itself; the writer gets no INSERT on the table, so
-- every event goes through append's checks and positions.
GRANT EXECUTE ON FUNCTION
    eventstore.append(text, jsonb, bigint),
    eventstore.try_append(text, jsonb, bigint)
    TO eventstore_writer;

-- Competing consumers. The group functions write the groups' internal tables as their owner.
GRANT EXECUTE ON FUNCTION
    eventstore.fetch(text, text, integer),
    eventstore.ack(text, text, bigint[]),
    eventstore.nack(text, text, bigint[], interval, text),
    eventstore.park(text, text, bigint[], text),
    eventstore.parked(text)
    TO eventstore_consumer;

-- Group administration and the position base.
GRANT EXECUTE ON FUNCTION
    eventstore.create_group(text, text[], text[], bigint, integer, interval, boolean),
    eventstore.alter_group(text, text[], text[], bigint, integer, interval, boolean),
    eventstore.delete_group(text),
    eventstore.replay_parked(text, bigint[]),
    eventstore.drop_parked(text, bigint[]),
    eventstore.rebase_positions()
    TO eventstore_admin;

ALTER FUNCTION eventstore.fetch(text, text, integer)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.ack(text, text, bigint[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.nack(text, text, bigint[], interval, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.park(text, text, bigint[], text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.parked(text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.create_group(text, text[], text[], bigint, integer, interval, boolean)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.alter_group(text, text[], text[], bigint, integer, interval, boolean)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.delete_group(text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.replay_parked(text, bigint[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION eventstore.drop_parked(text, bigint[])
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------------------------
COMMENT ON TABLE eventstore.position_base IS
'Internal: the per-database position base. Positions are (transaction id + base) << 20 | index; the base grows when restored or copied events lie above the ids this cluster assigns (eventstore.rebase_positions()).';

COMMENT ON VIEW eventstore._log_horizon IS
'Internal: visible_below, the bound under which every event belongs to an ended transaction, in the current snapshot.';

COMMENT ON FUNCTION eventstore._visible_below() IS
'Internal: every event below this position belongs to an ended transaction ((the snapshot''s xmin + the position base) << 20).';

COMMENT ON FUNCTION eventstore.rebase_positions() IS
'Raises the position base so that new events get positions above every stored one, and returns it. Runs by itself after a COPY or INSERT into eventstore.events (pg_restore); call it after loading events with triggers disabled (pg_restore --disable-triggers). Waits for appends in flight and holds new ones until its transaction ends.';

COMMENT ON FUNCTION eventstore._events_loaded() IS
'Internal: after a COPY or INSERT into eventstore.events, rebases positions when the loaded events lie at or above what this cluster assigns next.';

COMMENT ON FUNCTION eventstore._position_base_changed() IS
'Internal: tells every session to re-read the position base.';

COMMENT ON FUNCTION eventstore._refuse_on_standby(text) IS
'Internal: raises 25006 on a hot standby.';
