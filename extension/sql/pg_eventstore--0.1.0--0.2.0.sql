-- Persistent subscription groups: competing consumers over the global log or categories.
--
-- This file is both the upgrade from 0.1.0 (ALTER EXTENSION pg_eventstore UPDATE) and part of
-- the install script of 0.2.0 (extension/src/lib.rs includes it), so the two cannot drift.
-- It uses only what 0.1.0 already had.
--
-- Model: a group reads the log once, in position order, through its cursor
-- (subscription_groups.position: every event of the group up to it has entered the group).
-- An event that entered and is not acked yet has a row in group_events: leased to a consumer
-- until lease_until, waiting (for its retry_at, or in an ordered group for its stream), or
-- parked. Ack deletes the row. Only fetch() leases, under the group row's lock, so no event is
-- leased to two consumers at once; ack and nack touch only rows the calling consumer holds.

CREATE TABLE eventstore.subscription_groups (
    group_id          int         GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_name        text        NOT NULL UNIQUE,
    categories        text[],
    event_types       text[],
    from_position     bigint      NOT NULL,
    max_attempts      int         NOT NULL,
    lease_timeout     interval    NOT NULL,
    ordered_by_stream boolean     NOT NULL,
    position          bigint      NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE eventstore.subscription_groups IS
    'Persistent subscription groups. Manage with eventstore.create_group/alter_group/delete_group; see the view eventstore.groups.';

CREATE TABLE eventstore.group_events (
    group_id    int         NOT NULL,
    position    bigint      NOT NULL,
    -- Ordered groups only: the event's stream, so one stream is leased to one consumer at a time.
    stream      text,
    -- Deliveries so far: fetch counts one up, a lease that runs out keeps it.
    attempt     int         NOT NULL DEFAULT 0,
    consumer    text,
    lease_until timestamptz,
    retry_at    timestamptz NOT NULL DEFAULT '-infinity',
    parked_at   timestamptz,
    reason      text,
    CONSTRAINT group_events_pkey PRIMARY KEY (group_id, position)
);

COMMENT ON TABLE eventstore.group_events IS
    'Events of persistent subscription groups that are not acked yet: leased, waiting for a retry or their stream, or parked.';

CREATE INDEX group_events_stream_idx
    ON eventstore.group_events (group_id, stream, position) WHERE stream IS NOT NULL;

SELECT pg_catalog.pg_extension_config_dump('eventstore.subscription_groups', '');
SELECT pg_catalog.pg_extension_config_dump('eventstore.group_events', '');

-- Raises 22023 unless `value` is a usable name (group or consumer).
CREATE FUNCTION eventstore._check_name(what text, value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL OR value = '' THEN
        RAISE EXCEPTION '% must not be NULL or empty', what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF octet_length(value) > 200 THEN
        RAISE EXCEPTION '% must be at most 200 bytes, got %', what, octet_length(value)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$$;

-- The group named `group_name`, locked FOR UPDATE when `for_update`; raises 22023 when there is none.
CREATE FUNCTION eventstore._group(group_name text, for_update boolean)
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
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Create it with eventstore.create_group(); eventstore.groups lists the groups.';
    END IF;
    RETURN found_group;
END
$$;

-- Raises 22023 unless the options are valid; NULL means "not given" where `partial`.
CREATE FUNCTION eventstore._check_group_options(
    categories text[], event_types text[], from_position bigint, max_attempts int,
    lease_timeout interval, ordered_by_stream boolean, partial boolean
) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF categories IS NOT NULL THEN
        IF cardinality(categories) = 0 AND NOT partial THEN
            RAISE EXCEPTION 'categories must not be empty'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use NULL for every category.';
        END IF;
        PERFORM eventstore._check_category(c) FROM unnest(categories) AS c;
    END IF;
    IF event_types IS NOT NULL THEN
        IF cardinality(event_types) = 0 AND NOT partial THEN
            RAISE EXCEPTION 'event_types must not be empty'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Use NULL for every event type.';
        END IF;
        IF EXISTS (SELECT FROM unnest(event_types) AS t WHERE t IS NULL OR t = '') THEN
            RAISE EXCEPTION 'event_types must not contain NULL or empty names'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF from_position < 0 OR (from_position IS NULL AND NOT partial) THEN
        RAISE EXCEPTION 'from_position must be >= 0, got %', coalesce(from_position::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 0 to start at the beginning of the log.';
    END IF;
    IF max_attempts NOT BETWEEN 1 AND 1000 OR (max_attempts IS NULL AND NOT partial) THEN
        RAISE EXCEPTION 'max_attempts must be between 1 and 1000, got %', coalesce(max_attempts::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF lease_timeout <= interval '0' OR lease_timeout > interval '1 day'
       OR (lease_timeout IS NULL AND NOT partial) THEN
        RAISE EXCEPTION 'lease_timeout must be more than 0 and at most 1 day, got %', coalesce(lease_timeout::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF ordered_by_stream IS NULL AND NOT partial THEN
        RAISE EXCEPTION 'ordered_by_stream must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION eventstore.create_group(
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
                  HINT = 'Change it with eventstore.alter_group(), or delete it first.';
    END IF;
END
$$;

CREATE FUNCTION eventstore.alter_group(
    group_name text,
    categories text[] DEFAULT NULL,
    event_types text[] DEFAULT NULL,
    from_position bigint DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    lease_timeout interval DEFAULT NULL,
    ordered_by_stream boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(alter_group.group_name, true);
BEGIN
    PERFORM eventstore._check_group_options(alter_group.categories, alter_group.event_types,
        alter_group.from_position, alter_group.max_attempts, alter_group.lease_timeout,
        alter_group.ordered_by_stream, true);
    IF alter_group.from_position IS NOT NULL THEN
        -- Repositioned: what waits is read again from the log; leases and parked events stay.
        DELETE FROM eventstore.group_events AS ge
        WHERE ge.group_id = g.group_id AND ge.consumer IS NULL AND ge.parked_at IS NULL;
    END IF;
    IF alter_group.ordered_by_stream IS DISTINCT FROM g.ordered_by_stream
       AND alter_group.ordered_by_stream IS NOT NULL THEN
        UPDATE eventstore.group_events AS ge
        SET stream = CASE WHEN alter_group.ordered_by_stream THEN
                         (SELECT e.stream FROM eventstore.events AS e WHERE e.position = ge.position)
                     END
        WHERE ge.group_id = g.group_id;
    END IF;
    UPDATE eventstore.subscription_groups AS s
    SET categories = CASE
            WHEN alter_group.categories IS NULL THEN s.categories
            WHEN cardinality(alter_group.categories) = 0 THEN NULL
            ELSE alter_group.categories END,
        event_types = CASE
            WHEN alter_group.event_types IS NULL THEN s.event_types
            WHEN cardinality(alter_group.event_types) = 0 THEN NULL
            ELSE alter_group.event_types END,
        from_position = coalesce(alter_group.from_position, s.from_position),
        position = coalesce(alter_group.from_position, s.position),
        max_attempts = coalesce(alter_group.max_attempts, s.max_attempts),
        lease_timeout = coalesce(alter_group.lease_timeout, s.lease_timeout),
        ordered_by_stream = coalesce(alter_group.ordered_by_stream, s.ordered_by_stream)
    WHERE s.group_id = g.group_id;
END
$$;

CREATE FUNCTION eventstore.delete_group(group_name text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g eventstore.subscription_groups := eventstore._group(delete_group.group_name, true);
BEGIN
    DELETE FROM eventstore.group_events AS ge WHERE ge.group_id = g.group_id;
    DELETE FROM eventstore.subscription_groups AS s WHERE s.group_id = g.group_id;
END
$$;

-- Leases that ran out return to the group; the delivery counted as an attempt, so an event
-- whose handler keeps killing its consumer is parked after max_attempts.
CREATE FUNCTION eventstore._expire_leases(g eventstore.subscription_groups, moment timestamptz)
RETURNS void
LANGUAGE sql AS $$
    UPDATE eventstore.group_events AS ge
    SET consumer = NULL,
        lease_until = NULL,
        retry_at = moment,
        parked_at = CASE WHEN ge.attempt >= g.max_attempts THEN moment END,
        reason = CASE WHEN ge.attempt >= g.max_attempts
                      THEN format('the lease of consumer %s ran out on attempt %s', ge.consumer, ge.attempt)
                      ELSE ge.reason END
    WHERE ge.group_id = g.group_id
      AND ge.consumer IS NOT NULL
      AND ge.lease_until < moment
$$;

-- The next positions of the log the group wants after its cursor, up to `max_count`, and
-- moves the cursor past them (to the head when fewer than max_count were found).
CREATE FUNCTION eventstore._take_from_log(g eventstore.subscription_groups, max_count int)
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    visible bigint := eventstore._visible_below();
    taken bigint[];
BEGIN
    SELECT coalesce(array_agg(e.position ORDER BY e.position), '{}') INTO taken
    FROM (SELECT e.position
          FROM eventstore.events AS e
          WHERE e.position > g.position
            AND e.position < visible
            AND (g.event_types IS NULL OR e.type = ANY (g.event_types))
            AND (g.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (g.categories))
          ORDER BY e.position
          LIMIT max_count) AS e;
    UPDATE eventstore.subscription_groups AS s
    SET position = CASE WHEN cardinality(taken) < max_count
                        THEN greatest(s.position, visible - 1)
                        ELSE taken[cardinality(taken)] END
    WHERE s.group_id = g.group_id;
    RETURN taken;
END
$$;

CREATE FUNCTION eventstore.fetch(group_name text, consumer text, max_count int DEFAULT 100)
RETURNS TABLE (
    "position"  bigint,
    stream      text,
    version     bigint,
    type        text,
    data        jsonb,
    metadata    jsonb,
    id          uuid,
    recorded_at timestamptz,
    attempt     int
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
-- $1, $2, $3: group_name, consumer, max_count ("fetch" is a keyword and cannot qualify them).
DECLARE
    g eventstore.subscription_groups := eventstore._group($1, true);
    who text := eventstore._check_name('consumer', $2);
    wanted int := eventstore._check_count($3);
    moment timestamptz := clock_timestamp();
    lease timestamptz := moment + g.lease_timeout;
    fresh bigint[];
    leased int;
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
    PERFORM eventstore._expire_leases(g, moment);
    IF NOT g.ordered_by_stream THEN
        -- Retries that are due come first: they are older than anything after the cursor.
        RETURN QUERY
        WITH due AS (
            UPDATE eventstore.group_events AS ge
            SET consumer = who, lease_until = lease, attempt = ge.attempt + 1
            WHERE ge.group_id = g.group_id
              AND ge.position IN (SELECT w.position FROM eventstore.group_events AS w
                                  WHERE w.group_id = g.group_id
                                    AND w.consumer IS NULL AND w.parked_at IS NULL
                                    AND w.retry_at <= moment
                                  ORDER BY w.position
                                  LIMIT wanted)
            RETURNING ge.position, ge.attempt
        )
        SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
               due.attempt
        FROM due JOIN eventstore.events AS e ON e.position = due.position
        ORDER BY e.position;
        GET DIAGNOSTICS leased = ROW_COUNT;
        IF leased < wanted THEN
            fresh := eventstore._take_from_log(g, wanted - leased);
            -- ON CONFLICT: after alter_group(from_position) the log may offer an event that is
            -- still leased or parked; it stays where it is.
            RETURN QUERY
            WITH entered AS (
                INSERT INTO eventstore.group_events AS ge
                    (group_id, position, attempt, consumer, lease_until)
                SELECT g.group_id, p, 1, who, lease FROM unnest(fresh) AS p
                ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING
                RETURNING ge.position
            )
            SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
                   1
            FROM entered JOIN eventstore.events AS e ON e.position = entered.position
            ORDER BY e.position;
        END IF;
        RETURN;
    END IF;

    -- Ordered by stream: events enter the group as waiting, then each stream whose first
    -- waiting event is free (its earlier events acked, not leased, not parked, retry due) is
    -- leased with its following events, in version order, to this consumer alone.
    IF (SELECT count(*) FROM eventstore.group_events AS w
        WHERE w.group_id = g.group_id AND w.consumer IS NULL AND w.parked_at IS NULL)
       < 10 * wanted THEN
        fresh := eventstore._take_from_log(g, wanted);
        INSERT INTO eventstore.group_events AS ge (group_id, position, stream)
        SELECT g.group_id, e.position, e.stream
        FROM unnest(fresh) AS p JOIN eventstore.events AS e ON e.position = p
        ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING;
    END IF;
    RETURN QUERY
    WITH heads AS (
        SELECT DISTINCT ON (h.stream) h.stream, h.consumer, h.parked_at, h.retry_at
        FROM eventstore.group_events AS h
        WHERE h.group_id = g.group_id AND h.stream IS NOT NULL
        ORDER BY h.stream, h.position
    ),
    free AS (
        SELECT heads.stream FROM heads
        WHERE heads.consumer IS NULL AND heads.parked_at IS NULL AND heads.retry_at <= moment
    ),
    chosen AS (
        SELECT w.position FROM eventstore.group_events AS w JOIN free ON free.stream = w.stream
        WHERE w.group_id = g.group_id AND w.consumer IS NULL AND w.parked_at IS NULL
        ORDER BY w.position
        LIMIT wanted
    ),
    taken AS (
        UPDATE eventstore.group_events AS ge
        SET consumer = who, lease_until = lease, attempt = ge.attempt + 1
        FROM chosen
        WHERE ge.group_id = g.group_id AND ge.position = chosen.position
        RETURNING ge.position, ge.attempt
    )
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
           taken.attempt
    FROM taken JOIN eventstore.events AS e ON e.position = taken.position
    ORDER BY e.position;
END
$$;

CREATE FUNCTION eventstore._check_positions(positions bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF positions IS NULL THEN
        RAISE EXCEPTION 'positions must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN positions;
END
$$;

CREATE FUNCTION eventstore.ack(group_name text, consumer text, positions bigint[]) RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(ack.group_name, false);
    who text := eventstore._check_name('consumer', ack.consumer);
    acked int;
BEGIN
    DELETE FROM eventstore.group_events AS ge
    WHERE ge.group_id = g.group_id
      AND ge.position = ANY (eventstore._check_positions(ack.positions))
      AND ge.consumer = who;
    GET DIAGNOSTICS acked = ROW_COUNT;
    RETURN acked;
END
$$;

-- nack() and park(): the consumer's leases on `positions` end; each event waits for a retry
-- after `retry_after`, or is parked when `park` or out of attempts.
CREATE FUNCTION eventstore._give_back(
    group_name text, consumer text, positions bigint[], retry_after interval, reason text,
    park boolean
) RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(_give_back.group_name, false);
    who text := eventstore._check_name('consumer', _give_back.consumer);
    moment timestamptz := clock_timestamp();
    given_back int;
BEGIN
    IF _give_back.retry_after IS NULL OR _give_back.retry_after < interval '0' THEN
        RAISE EXCEPTION 'retry_after must be >= 0, got %', coalesce(_give_back.retry_after::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH failed AS (
        UPDATE eventstore.group_events AS ge
        SET consumer = NULL,
            lease_until = NULL,
            retry_at = moment + _give_back.retry_after,
            parked_at = CASE WHEN park OR ge.attempt >= g.max_attempts THEN moment END,
            reason = coalesce(_give_back.reason,
                              format('%s by consumer %s', CASE WHEN park THEN 'parked' ELSE 'nacked' END, who))
        WHERE ge.group_id = g.group_id
          AND ge.position = ANY (eventstore._check_positions(_give_back.positions))
          AND ge.consumer = who
        RETURNING ge.stream, ge.position
    ),
    -- Ordered groups: the stream's later events this consumer holds go back untried, so
    -- they are delivered again after the failed one, in order.
    released AS (
        UPDATE eventstore.group_events AS ge
        SET consumer = NULL, lease_until = NULL, attempt = ge.attempt - 1
        FROM (SELECT f.stream, min(f.position) AS position FROM failed AS f
              WHERE f.stream IS NOT NULL GROUP BY f.stream) AS first_failed
        WHERE ge.group_id = g.group_id
          AND ge.stream = first_failed.stream
          AND ge.position > first_failed.position
          AND ge.consumer = who
          AND ge.position <> ALL (_give_back.positions)
        RETURNING 1
    )
    SELECT count(*) INTO given_back FROM failed;
    RETURN given_back;
END
$$;

CREATE FUNCTION eventstore.nack(
    group_name text,
    consumer text,
    positions bigint[],
    retry_after interval DEFAULT '0 seconds',
    reason text DEFAULT NULL
) RETURNS int
LANGUAGE sql AS $$
    SELECT eventstore._give_back(group_name, consumer, positions, retry_after, reason, false)
$$;

CREATE FUNCTION eventstore.park(
    group_name text,
    consumer text,
    positions bigint[],
    reason text DEFAULT NULL
) RETURNS int
LANGUAGE sql AS $$
    SELECT eventstore._give_back(group_name, consumer, positions, interval '0', reason, true)
$$;

CREATE FUNCTION eventstore.parked(group_name text)
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
    g eventstore.subscription_groups := eventstore._group(parked.group_name, false);
BEGIN
    RETURN QUERY
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
           ge.attempt, ge.reason, ge.parked_at
    FROM eventstore.group_events AS ge JOIN eventstore.events AS e ON e.position = ge.position
    WHERE ge.group_id = g.group_id AND ge.parked_at IS NOT NULL
    ORDER BY ge.position;
END
$$;

CREATE FUNCTION eventstore.replay_parked(group_name text, positions bigint[] DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(replay_parked.group_name, false);
    replayed int;
BEGIN
    UPDATE eventstore.group_events AS ge
    SET parked_at = NULL, attempt = 0, retry_at = '-infinity'
    WHERE ge.group_id = g.group_id
      AND ge.parked_at IS NOT NULL
      AND (replay_parked.positions IS NULL OR ge.position = ANY (replay_parked.positions));
    GET DIAGNOSTICS replayed = ROW_COUNT;
    RETURN replayed;
END
$$;

CREATE FUNCTION eventstore.drop_parked(group_name text, positions bigint[] DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(drop_parked.group_name, false);
    dropped int;
BEGIN
    DELETE FROM eventstore.group_events AS ge
    WHERE ge.group_id = g.group_id
      AND ge.parked_at IS NOT NULL
      AND (drop_parked.positions IS NULL OR ge.position = ANY (drop_parked.positions));
    GET DIAGNOSTICS dropped = ROW_COUNT;
    RETURN dropped;
END
$$;

CREATE VIEW eventstore.groups AS
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
       g.created_at
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

COMMENT ON VIEW eventstore.groups IS
'Persistent subscription groups: position (every event of the group up to it is acked or parked), in_flight (leased now), parked, lag (events not handled yet and not in flight), consumers holding leases, and the options.';

COMMENT ON FUNCTION eventstore.create_group(text, text[], text[], bigint, integer, interval, boolean) IS
'Creates a persistent subscription group: competing consumers share it through fetch/ack/nack, each event goes to one of them.
categories / event_types: NULL for all, else only those. from_position: the group starts after it (0: the whole log).
max_attempts: deliveries before an event is parked. lease_timeout: how long a fetched event stays leased to its consumer.
ordered_by_stream: events of one stream go to one consumer at a time, in version order; a parked event holds its stream back until replayed or dropped.
Errors: 23505 the group exists, 22023 bad options.';

COMMENT ON FUNCTION eventstore.alter_group(text, text[], text[], bigint, integer, interval, boolean) IS
'Changes a group''s options; NULL keeps an option, an empty array removes the categories or event_types filter.
from_position repositions the group: events waiting in it are read again from the log after that position; leased and parked events stay. 22023 when the group does not exist.';

COMMENT ON FUNCTION eventstore.delete_group(text) IS
'Deletes a group with its leases and parked events. 22023 when the group does not exist.';

COMMENT ON FUNCTION eventstore.fetch(text, text, integer) IS
'Leases up to max_count events of the group to consumer until lease_timeout passes and returns them in position order with their attempt (1 on first delivery).
Events are due retries and then new events of the log; an event whose lease ran out is delivered again, and parked once its attempts reach max_attempts.
Holds the group''s row lock until the calling transaction ends, so call it in a transaction of its own.';

COMMENT ON FUNCTION eventstore.ack(text, text, bigint[]) IS
'Marks events handled; returns how many were acked. Only the consumer holding an event''s lease can ack it: positions not leased to consumer are left alone and not counted.';

COMMENT ON FUNCTION eventstore.nack(text, text, bigint[], interval, text) IS
'Gives events back for a retry after retry_after, recording reason; returns how many. An event that has had max_attempts deliveries is parked instead.
Only the consumer holding a lease can nack it. In a group ordered by stream, the consumer''s later events of the same streams go back untried.';

COMMENT ON FUNCTION eventstore.park(text, text, bigint[], text) IS
'Parks events at once, whatever their attempts, recording reason (for events a handler can never process, such as invalid input); returns how many.
Only the consumer holding a lease can park it. In a group ordered by stream, the consumer''s later events of the same streams go back untried.';

COMMENT ON FUNCTION eventstore.parked(text) IS
'The parked events of a group with their attempts, the last reason and when they were parked.';

COMMENT ON FUNCTION eventstore.replay_parked(text, bigint[]) IS
'Returns parked events (all, or those at positions) to the group with their attempts reset; returns how many.';

COMMENT ON FUNCTION eventstore.drop_parked(text, bigint[]) IS
'Deletes parked events (all, or those at positions) from the group for good; returns how many.';

COMMENT ON FUNCTION eventstore._check_name(text, text) IS 'Internal: validates a group or consumer name (22023).';
COMMENT ON FUNCTION eventstore._group(text, boolean) IS 'Internal: looks a group up, optionally locking it (22023 when missing).';
COMMENT ON FUNCTION eventstore._check_group_options(text[], text[], bigint, integer, interval, boolean, boolean) IS
'Internal: validates group options (22023).';
COMMENT ON FUNCTION eventstore._expire_leases(eventstore.subscription_groups, timestamptz) IS
'Internal: returns leases that ran out to their group, parking events out of attempts.';
COMMENT ON FUNCTION eventstore._take_from_log(eventstore.subscription_groups, integer) IS
'Internal: the next positions of the log for a group, moving its cursor.';
COMMENT ON FUNCTION eventstore._give_back(text, text, bigint[], interval, text, boolean) IS
'Internal: ends leases for nack and park.';
COMMENT ON FUNCTION eventstore._check_positions(bigint[]) IS 'Internal: validates a positions array (22023).';
