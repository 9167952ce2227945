-- pg_eventstore 0.3.0:
-- - an unknown subscription group is 42704 undefined_object (was 22023), so clients tell it
--   from a bad argument;
-- - create_group's refusal of an existing name carries the constraint name
--   subscription_groups_group_name_key, so clients tell it from a duplicate event id (23505
--   too) by SQLSTATE and constraint;
-- - view eventstore.groups gains from_position;
-- - eventstore.health(): the store's health in one row, for any language and any monitor;
-- - the comment of wakeup_mode() names eventstore.wakeup_interval.
-- This file is the upgrade script from 0.2.0 and, through extension_sql_file!, part of the
-- 0.3.0 install script.

-- The group named `group_name`, locked FOR UPDATE when `for_update`; raises 42704 when there
-- is none.
CREATE OR REPLACE FUNCTION eventstore._group(group_name text, for_update boolean)
RETURNS eventstore.subscription_groups
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    found_group eventstore.subscription_groups;
BEGIN
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

-- The same view with from_position added at the end (CREATE OR REPLACE VIEW keeps the
-- existing columns and may only add new ones after them).
CREATE OR REPLACE VIEW eventstore.groups AS
SELECT g.group_name,
       -- Every event of the group up to here is acked or parked.
       least(g.position, coalesce(o.first_open - 1, g.position)) AS position,
       coalesce(o.in_flight, 0) AS in_flight,
       coalesce(o.parked, 0) AS parked,
       -- Events of the group not handled yet and not in flight: waiting in the group plus
       -- those of the log after the cursor.
       coalesce(o.waiting, 0)
         + (SELECT count(*) FROM eventstore.events AS e
            WHERE e.position > g.position
              AND e.position < eventstore._visible_below()
              AND (g.event_types IS NULL OR e.type = ANY (g.event_types))
              AND (g.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (g.categories))) AS lag,
       coalesce(o.consumers, 0) AS consumers,
       g.categories,
       g.event_types,
       g.max_attempts,
       g.lease_timeout,
       g.ordered_by_stream,
       g.created_at,
       g.from_position
FROM eventstore.subscription_groups AS g
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE ge.consumer IS NOT NULL) AS in_flight,
           count(*) FILTER (WHERE ge.parked_at IS NOT NULL) AS parked,
           count(*) FILTER (WHERE ge.consumer IS NULL AND ge.parked_at IS NULL) AS waiting,
           count(DISTINCT ge.consumer) AS consumers,
           min(ge.position) FILTER (WHERE ge.parked_at IS NULL) AS first_open
    FROM eventstore.group_events AS ge
    WHERE ge.group_id = g.group_id
) AS o ON true;

CREATE FUNCTION eventstore.health(
    OUT streams bigint,
    OUT events bigint,
    OUT head_position bigint,
    OUT held_back_events bigint,
    OUT oldest_xact_pid integer,
    OUT oldest_xact_database name,
    OUT oldest_xact_application text,
    OUT oldest_xact_state text,
    OUT oldest_xact_start timestamptz,
    OUT oldest_xact_age interval,
    OUT oldest_xact_query text
)
LANGUAGE sql STABLE AS $$
    SELECT (SELECT count(*) FROM eventstore.events AS e WHERE e.version = 0),
           (SELECT count(*) FROM eventstore.events),
           eventstore.head_position(),
           (SELECT count(*) FROM eventstore.events AS e
            WHERE e.position >= eventstore._visible_below()),
           a.pid, a.datname, a.application_name, a.state, a.xact_start,
           clock_timestamp() - a.xact_start, left(a.query, 200)
    FROM (SELECT) AS one
    LEFT JOIN LATERAL (
        SELECT s.pid, s.datname, s.application_name, s.state, s.xact_start, s.query
        FROM pg_catalog.pg_stat_activity AS s
        WHERE s.backend_xid IS NOT NULL
        ORDER BY pg_catalog.age(s.backend_xid) DESC
        LIMIT 1
    ) AS a ON true
$$;

COMMENT ON FUNCTION eventstore._group(text, boolean) IS 'Internal: looks a group up, optionally locking it (42704 when missing).';

COMMENT ON FUNCTION eventstore.create_group(text, text[], text[], bigint, integer, interval, boolean) IS
'Creates a persistent subscription group: competing consumers share it through fetch/ack/nack, each event goes to one of them.
categories / event_types: NULL for all, else only those. from_position: the group starts after it (0: the whole log).
max_attempts: deliveries before an event is parked. lease_timeout: how long a fetched event stays leased to its consumer.
ordered_by_stream: events of one stream go to one consumer at a time, in version order; a parked event holds its stream back until replayed or dropped.
Errors: 23505 the group exists (constraint subscription_groups_group_name_key), 22023 bad options.';

COMMENT ON FUNCTION eventstore.alter_group(text, text[], text[], bigint, integer, interval, boolean) IS
'Changes a group''s options; NULL keeps an option, an empty array removes the categories or event_types filter.
from_position repositions the group: events waiting in it are read again from the log after that position; leased and parked events stay. 42704 when the group does not exist.';

COMMENT ON FUNCTION eventstore.delete_group(text) IS
'Deletes a group with its leases and parked events. 42704 when the group does not exist.';

COMMENT ON VIEW eventstore.groups IS
'Persistent subscription groups: position (every event of the group up to it is acked or parked), in_flight (leased now), parked, lag (events not handled yet and not in flight), consumers holding leases, and the options (from_position: where the group started or was last repositioned to).';

COMMENT ON FUNCTION eventstore.health() IS
'The store''s health in one row: streams, events, head_position (the newest position read_all returns now), held_back_events (committed events not readable yet because an older transaction still runs), and that oldest transaction of the cluster holding a transaction id: its pid, database, application, state, start, age and query (first 200 characters). NULLs when no transaction holds an id.';

COMMENT ON FUNCTION eventstore.wakeup_mode() IS
'How appends wake subscribers on channel eventstore. coalesced: pg_eventstore is in shared_preload_libraries and one background worker per database sends NOTIFY eventstore with the head position at most once per eventstore.wakeup_interval (3 ms by default). per_transaction: each appending transaction sends NOTIFY eventstore with an empty payload itself, which serializes notifying commits.';
