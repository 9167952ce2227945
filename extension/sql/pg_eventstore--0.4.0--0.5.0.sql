-- pg_eventstore 0.5.0: subscription groups at the speed of reading the log.
--
-- - A fetch leases new events of the log as one row per batch (eventstore.group_leases: the
--   positions, who holds them, until when); an ack of the whole batch deletes that row. Rows
--   per event (eventstore.group_events) are kept only for exceptions: nacked, retried,
--   parked and expired events, and in an ordered group the events of a stream held behind
--   one of those.
-- - Ordered groups split the streams into 64 buckets by a hash of the stream name, with a
--   cursor each. A fetch claims the free buckets furthest behind (half of them, so that the
--   other consumers find some) and leases their next events; a bucket stays with its lease
--   until the lease is settled or runs out, so one stream is never with two consumers.
--   A stream with an exception row is "held": its new events wait behind it as rows, and
--   nothing else waits. This ends the stall where events held behind parked ones filled the
--   group's intake and stopped every stream.
-- - eventstore.groups gains held_back: events waiting behind a parked event of their stream.
-- - The groups' reads of the log and the filtered catch-up reads take the position-ordered
--   plan whatever the planner's statistics say.
-- Groups in flight keep their leased, waiting and parked events across the update: those
-- are rows, and rows are still leased, acked, retried and parked as before.
-- This file is the upgrade script from 0.4.0 and, through extension_sql_file!, part of the
-- 0.5.0 install script.

---------------------------------------------------------------------------------------------
-- State.

-- bucket_positions: NULL while every bucket's cursor is `position` (always, unless the group
-- is or was ordered by stream); else the cursor of bucket b at bucket_positions[b + 1], and
-- `position` is the lowest of them. replay_below: after alter_group() moved the cursor back,
-- events below it may still be leased or parked, and are not taken from the log again.
ALTER TABLE eventstore.subscription_groups
    ADD COLUMN bucket_positions bigint[],
    ADD COLUMN replay_below bigint NOT NULL DEFAULT 0;

CREATE TABLE eventstore.group_leases (
    group_id       int         NOT NULL,
    first_position bigint      NOT NULL,
    last_position  bigint      NOT NULL,
    consumer       text        NOT NULL,
    lease_until    timestamptz NOT NULL,
    -- Ordered groups: the stream buckets the lease holds. NULL: all of them (leased while the
    -- group was unordered).
    buckets        int[],
    -- The events leased, in position order, and those of them acked or given back since.
    positions      bigint[]    NOT NULL,
    settled        bigint[]    NOT NULL DEFAULT '{}',
    CONSTRAINT group_leases_pkey PRIMARY KEY (group_id, first_position)
);

-- A lease is written at fetch and deleted at ack: compressing its positions, or moving them
-- out of line, would cost more than the rest of the lease (eventstore._insert_leases keeps
-- a lease to 800 positions, which fit in a page).
ALTER TABLE eventstore.group_leases ALTER COLUMN positions SET STORAGE PLAIN;

-- Leases that ran out, found without visiting the many deleted ones a busy group leaves
-- until vacuum.
CREATE INDEX group_leases_until_idx ON eventstore.group_leases (group_id, lease_until);

SELECT pg_catalog.pg_extension_config_dump('eventstore.group_leases', '');

-- The stream bucket of an ordered group (0 .. 63).
CREATE FUNCTION eventstore._stream_bucket(stream text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
    SELECT (pg_catalog.hashtextextended(stream, 0) & 63)::int
$$;

-- Whether the event at `position` is leased, waiting or parked in the group.
CREATE FUNCTION eventstore._in_group(group_id int, "position" bigint) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT EXISTS (SELECT FROM eventstore.group_events AS ge
                   WHERE ge.group_id = _in_group.group_id AND ge.position = _in_group.position)
        OR EXISTS (SELECT FROM eventstore.group_leases AS l
                   WHERE l.group_id = _in_group.group_id
                     AND _in_group.position BETWEEN l.first_position AND l.last_position
                     AND _in_group.position = ANY (l.positions))
$$;

---------------------------------------------------------------------------------------------
-- Leases.

-- Leases that ran out return to the group as rows; the delivery counted as an attempt, so
-- an event whose handler keeps killing its consumer is parked after max_attempts.
CREATE OR REPLACE FUNCTION eventstore._expire_leases(g eventstore.subscription_groups, moment timestamptz)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
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
      AND ge.lease_until < moment;
    IF NOT EXISTS (SELECT FROM eventstore.group_leases AS l
                   WHERE l.group_id = g.group_id AND l.lease_until < moment) THEN
        RETURN;
    END IF;
    WITH gone AS (
        DELETE FROM eventstore.group_leases AS l
        WHERE l.group_id = g.group_id AND l.lease_until < moment
        RETURNING l.consumer, l.positions, l.settled
    )
    INSERT INTO eventstore.group_events AS ge
        (group_id, position, stream, attempt, retry_at, parked_at, reason)
    SELECT g.group_id, e.position, CASE WHEN g.ordered_by_stream THEN e.stream END, 1, moment,
           CASE WHEN g.max_attempts <= 1 THEN moment END,
           CASE WHEN g.max_attempts <= 1
                THEN format('the lease of consumer %s ran out on attempt 1', gone.consumer) END
    FROM gone
    CROSS JOIN LATERAL unnest(gone.positions) AS p
    JOIN eventstore.events AS e ON e.position = p
    WHERE p <> ALL (gone.settled)
    ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING;
END
$$;

-- The group's rows that are due, leased to `who`: retries, and in an ordered group the
-- waiting events of streams nobody else holds, each stream from its first event on.
CREATE FUNCTION eventstore._lease_rows(
    g eventstore.subscription_groups, who text, lease timestamptz, moment timestamptz, wanted int
) RETURNS TABLE ("position" bigint, attempt int)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    -- Buckets another consumer's lease holds: their streams stay with that consumer.
    elsewhere int[];
BEGIN
    IF NOT g.ordered_by_stream THEN
        RETURN QUERY
        UPDATE eventstore.group_events AS ge
        SET consumer = who, lease_until = lease, attempt = ge.attempt + 1
        WHERE ge.group_id = g.group_id
          AND ge.position IN (SELECT w.position FROM eventstore.group_events AS w
                              WHERE w.group_id = g.group_id
                                AND w.consumer IS NULL AND w.parked_at IS NULL
                                AND w.retry_at <= moment
                              ORDER BY w.position
                              LIMIT wanted)
        RETURNING ge.position, ge.attempt;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM eventstore.group_events AS w
                   WHERE w.group_id = g.group_id AND w.consumer IS NULL AND w.parked_at IS NULL
                     AND w.stream IS NOT NULL) THEN
        RETURN;
    END IF;
    SELECT CASE WHEN bool_or(l.buckets IS NULL) THEN ARRAY(SELECT generate_series(0, 63))
                ELSE coalesce(array_agg(DISTINCT b), '{}') END
    INTO elsewhere
    FROM eventstore.group_leases AS l
    LEFT JOIN LATERAL unnest(l.buckets) AS b ON true
    WHERE l.group_id = g.group_id AND l.consumer <> who;
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
          AND eventstore._stream_bucket(heads.stream) <> ALL (elsewhere)
    ),
    chosen AS (
        SELECT w.position FROM eventstore.group_events AS w JOIN free ON free.stream = w.stream
        WHERE w.group_id = g.group_id AND w.consumer IS NULL AND w.parked_at IS NULL
        ORDER BY w.position
        LIMIT wanted
    )
    UPDATE eventstore.group_events AS ge
    SET consumer = who, lease_until = lease, attempt = ge.attempt + 1
    FROM chosen
    WHERE ge.group_id = g.group_id AND ge.position = chosen.position
    RETURNING ge.position, ge.attempt;
END
$$;

-- Leases `positions` (in position order) to `who` as one lease, or several of at most 800
-- events: a lease's positions are stored uncompressed in the row (STORAGE PLAIN), which
-- must fit in a page.
CREATE FUNCTION eventstore._insert_leases(
    g eventstore.subscription_groups, who text, lease timestamptz, buckets int[], positions bigint[]
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO eventstore.group_leases
        (group_id, first_position, last_position, consumer, lease_until, buckets, positions)
    SELECT g.group_id, c.part[1], c.part[cardinality(c.part)], who, lease, buckets, c.part
    FROM generate_series(1, cardinality(positions), 800) AS s(i)
    CROSS JOIN LATERAL (SELECT positions[s.i : s.i + 799] AS part) AS c;
END
$$;

-- Unordered groups: the next `wanted` events of the log after the cursor, leased to `who`
-- and returned whole, in position order, in one statement (one walk of the log).
CREATE FUNCTION eventstore._lease_range(
    g eventstore.subscription_groups, who text, lease timestamptz, visible bigint, wanted int
) RETURNS SETOF eventstore.recorded_event
LANGUAGE plpgsql
-- Walk the log in position order whatever the statistics say (see read_all). JIT would only
-- be drawn in by the cost these settings put on the small sorts left.
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $$
BEGIN
    RETURN QUERY
    WITH taken AS MATERIALIZED (
        SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
        FROM eventstore.events AS e
        WHERE e.position > g.position
          AND e.position < visible
          AND (g.event_types IS NULL OR e.type = ANY (g.event_types))
          AND (g.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (g.categories))
          AND (g.bucket_positions IS NULL
               OR e.position > g.bucket_positions[eventstore._stream_bucket(e.stream) + 1])
          AND (e.position >= g.replay_below OR NOT eventstore._in_group(g.group_id, e.position))
        ORDER BY e.position
        LIMIT wanted
    ),
    batch AS (
        -- Read back in the order written: position order.
        SELECT array_agg(t.position) AS positions,
               CASE WHEN count(*) < wanted THEN visible - 1 ELSE max(t.position) END AS reached
        FROM taken AS t
    ),
    leased AS (
        -- As _insert_leases does (a data-modifying WITH runs whether read or not).
        INSERT INTO eventstore.group_leases
            (group_id, first_position, last_position, consumer, lease_until, buckets, positions)
        SELECT g.group_id, c.part[1], c.part[cardinality(c.part)], who, lease, NULL, c.part
        FROM batch AS b
        CROSS JOIN LATERAL generate_series(1, cardinality(b.positions), 800) AS s(i)
        CROSS JOIN LATERAL (SELECT b.positions[s.i : s.i + 799] AS part) AS c
    ),
    moved AS (
        -- Every cursor moves to at least `reached`; the bucket cursors (left by ordered
        -- mode) are gone once all lie behind it.
        UPDATE eventstore.subscription_groups AS s
        SET position = greatest(s.position, b.reached),
            bucket_positions =
                CASE WHEN (SELECT max(c) FROM unnest(s.bucket_positions) AS c) > b.reached
                     THEN ARRAY(SELECT greatest(c.at, b.reached)
                                FROM unnest(s.bucket_positions) WITH ORDINALITY AS c(at, n)
                                ORDER BY c.n) END
        FROM batch AS b
        WHERE s.group_id = g.group_id
    )
    -- In position order, as written (a sort here would cost as much as the lease).
    SELECT t.position, t.stream, t.version, t.type, t.data, t.metadata, t.id, t.recorded_at
    FROM taken AS t;
END
$$;

-- The group's events of the log after `after`, in position order, with their stream
-- buckets: at most `max_count`. Inlined into the callers (which read the columns they use).
CREATE FUNCTION eventstore._group_log(
    g eventstore.subscription_groups, after bigint, visible bigint, max_count int
) RETURNS TABLE (
    "position" bigint, stream text, version bigint, type text, data jsonb, metadata jsonb,
    id uuid, recorded_at timestamptz, bucket int
)
LANGUAGE sql STABLE AS $$
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
           eventstore._stream_bucket(e.stream)
    FROM eventstore.events AS e
    WHERE e.position > _group_log.after
      AND e.position < _group_log.visible
      AND ((_group_log.g).event_types IS NULL OR e.type = ANY ((_group_log.g).event_types))
      AND ((_group_log.g).categories IS NULL
           OR split_part(e.stream, '-', 1) = ANY ((_group_log.g).categories))
      AND (e.position >= (_group_log.g).replay_below
           OR NOT eventstore._in_group((_group_log.g).group_id, e.position))
    ORDER BY e.position
    LIMIT _group_log.max_count
$$;

-- Ordered groups: claims the free buckets furthest behind (half of the free ones, so that
-- other consumers find some) and leases their next events, up to `wanted`, to `who` as one
-- lease holding those buckets. When the claimed buckets have fewer events, the free buckets
-- that have some are claimed too. Events of a held stream (one with rows in the group) wait
-- behind its rows instead, and the walk goes on past them. Returns the leased events, in
-- position order.
CREATE FUNCTION eventstore._lease_streams(
    g eventstore.subscription_groups, who text, lease timestamptz, visible bigint, wanted int
) RETURNS SETOF eventstore.recorded_event
LANGUAGE plpgsql
-- Walk the log in position order whatever the statistics say (see read_all). JIT would only
-- be drawn in by the cost these settings put on the small sorts left.
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $$
DECLARE
    cursors bigint[] := coalesce(g.bucket_positions, array_fill(g.position, ARRAY[64]));
    held int[];
    free int[];
    claimed int[];
    extra int[];
    -- Buckets with events in what was read, after their cursors.
    seen int[];
    moving int[];
    lowest bigint;
    -- One walk reads at most this many events of the log, whatever it finds in them.
    scan_limit int := 16 * wanted;
    scanned bigint;
    last_scanned bigint;
    reached bigint;
    remaining int;
    found bigint[];
    found_events eventstore.recorded_event[];
    kept bigint[];
    leased bigint[] := '{}';
    leased_events eventstore.recorded_event[] := '{}';
    any_held boolean;
    walks int := 0;
BEGIN
    -- The buckets no lease holds, furthest behind first.
    SELECT CASE WHEN bool_or(l.buckets IS NULL) THEN ARRAY(SELECT generate_series(0, 63))
                ELSE coalesce(array_agg(h), '{}') END
    INTO held
    FROM eventstore.group_leases AS l
    LEFT JOIN LATERAL unnest(l.buckets) AS h ON true
    WHERE l.group_id = g.group_id;
    SELECT coalesce(array_agg(b ORDER BY cursors[b + 1], b), '{}') INTO free
    FROM generate_series(0, 63) AS b
    WHERE b <> ALL (held);
    IF cardinality(free) = 0 THEN
        RETURN;
    END IF;
    -- Whether any stream is held, looked at after the leases: a transaction that gave a
    -- stream's events back (rows) and ended the lease that held its bucket committed before
    -- the leases were read, so its rows are seen here.
    any_held := EXISTS (SELECT FROM eventstore.group_events AS ge
                        WHERE ge.group_id = g.group_id AND ge.stream IS NOT NULL);
    claimed := free[1 : (cardinality(free) + 1) / 2];
    LOOP
        walks := walks + 1;
        remaining := wanted - cardinality(leased);
        SELECT min(cursors[b + 1]) INTO lowest FROM unnest(claimed) AS b;
        -- The claimed buckets' next events, whole, in position order (as the walk yields
        -- them). The subquery's LIMIT keeps the bucket test out of the walk of the log, and
        -- the outer LIMIT stops the walk once enough are found.
        SELECT coalesce(array_agg(m.position), '{}'),
               coalesce(array_agg(ROW(m.position, m.stream, m.version, m.type, m.data,
                                      m.metadata, m.id, m.recorded_at)::eventstore.recorded_event),
                        '{}')
        INTO found, found_events
        FROM (SELECT r.*
              FROM eventstore._group_log(g, lowest, visible, scan_limit) AS r
              WHERE r.bucket = ANY (claimed) AND r.position > cursors[r.bucket + 1]
              LIMIT remaining) AS m;
        IF cardinality(found) = remaining THEN
            reached := found[cardinality(found)];
            moving := claimed;
        ELSE
            -- Everything up to the scan limit was read: how far that went, and which
            -- buckets had events in it.
            SELECT count(*), max(r.position),
                   coalesce(array_agg(DISTINCT r.bucket)
                            FILTER (WHERE r.position > cursors[r.bucket + 1]), '{}')
            INTO scanned, last_scanned, seen
            FROM eventstore._group_log(g, lowest, visible, scan_limit) AS r;
            extra := ARRAY(SELECT unnest(free) INTERSECT SELECT unnest(seen)
                           EXCEPT SELECT unnest(claimed));
            IF cardinality(extra) > 0 THEN
                claimed := claimed || extra;
                CONTINUE;
            END IF;
            reached := CASE WHEN scanned = scan_limit THEN last_scanned ELSE visible - 1 END;
            -- The free buckets that had nothing in what was read move on too: those whose
            -- cursor is not behind where this walk began (after an earlier walk moved the
            -- claimed ones on, a free bucket left behind has events this walk never read).
            moving := claimed || ARRAY(SELECT b FROM unnest(free) AS b WHERE cursors[b + 1] >= lowest
                                       EXCEPT SELECT unnest(seen));
        END IF;

        kept := found;
        IF any_held AND cardinality(found) > 0 THEN
            WITH candidates AS MATERIALIZED (
                SELECT f AS event, f.position, f.stream,
                       EXISTS (SELECT FROM eventstore.group_events AS ge
                               WHERE ge.group_id = g.group_id AND ge.stream = f.stream) AS held
                FROM unnest(found_events) AS f
            ),
            waiting AS (
                INSERT INTO eventstore.group_events AS ge (group_id, position, stream)
                SELECT g.group_id, c.position, c.stream FROM candidates AS c WHERE c.held
                ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING
            )
            -- Read back in the order written: position order.
            SELECT coalesce(array_agg(c.position) FILTER (WHERE NOT c.held), '{}'),
                   coalesce(array_agg(c.event) FILTER (WHERE NOT c.held), '{}')
            INTO kept, found_events
            FROM candidates AS c;
        END IF;
        leased := leased || kept;
        leased_events := leased_events || found_events;
        SELECT array_agg(CASE WHEN (c.n - 1)::int = ANY (moving) THEN greatest(c.at, reached)
                              ELSE c.at END
                         ORDER BY c.n)
        INTO cursors
        FROM unnest(cursors) WITH ORDINALITY AS c(at, n);
        -- Done when the batch is full, or the log has nothing more for these buckets; events
        -- held back may have left room, so walk on (a few times at most per fetch).
        EXIT WHEN cardinality(leased) >= wanted
               OR (cardinality(found) < remaining AND scanned < scan_limit)
               OR walks >= 16;
    END LOOP;
    IF walks = 1 THEN
        RETURN QUERY SELECT * FROM unnest(leased_events);
    ELSE
        -- Buckets claimed in a later walk may have events before the first walk's.
        leased := ARRAY(SELECT p FROM unnest(leased) AS p ORDER BY p);
        RETURN QUERY SELECT * FROM unnest(leased_events) AS e ORDER BY e.position;
    END IF;
    IF cardinality(leased) > 0 THEN
        PERFORM eventstore._insert_leases(g, who, lease, claimed, leased);
    END IF;
    UPDATE eventstore.subscription_groups AS s
    SET bucket_positions = CASE WHEN m.lowest = m.highest THEN NULL ELSE cursors END,
        position = m.lowest
    FROM (SELECT min(c) AS lowest, max(c) AS highest FROM unnest(cursors) AS c) AS m
    WHERE s.group_id = g.group_id;
END
$$;

CREATE OR REPLACE FUNCTION eventstore.fetch(group_name text, consumer text, max_count int DEFAULT 100)
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
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
-- $1, $2, $3: group_name, consumer, max_count ("fetch" is a keyword and cannot qualify them).
DECLARE
    g eventstore.subscription_groups := eventstore._group($1, true);
    who text := eventstore._check_name('consumer', $2);
    wanted int := eventstore._check_count($3);
    moment timestamptz := clock_timestamp();
    lease timestamptz := moment + g.lease_timeout;
    taken bigint[];
    attempts int[];
    fresh bigint[];
BEGIN
    IF wanted = 0 THEN
        RETURN;
    END IF;
    PERFORM eventstore._expire_leases(g, moment);
    -- Rows first: retries are older than anything after the cursor, and in an ordered group
    -- a held stream's rows come before its newer events. Most fetches find none.
    IF EXISTS (SELECT FROM eventstore.group_events AS ge WHERE ge.group_id = g.group_id) THEN
        SELECT coalesce(array_agg(r.position ORDER BY r.position), '{}'),
               coalesce(array_agg(r.attempt ORDER BY r.position), '{}')
        INTO taken, attempts
        FROM eventstore._lease_rows(g, who, lease, moment, wanted) AS r;
    ELSE
        taken := '{}';
        attempts := '{}';
    END IF;
    IF cardinality(taken) = 0 THEN
        -- The common case: new events of the log, read and leased in one walk.
        IF g.ordered_by_stream THEN
            RETURN QUERY
            SELECT f.position, f.stream, f.version, f.type, f.data, f.metadata, f.id,
                   f.recorded_at, 1
            FROM eventstore._lease_streams(g, who, lease, eventstore._visible_below(), wanted) AS f;
        ELSE
            RETURN QUERY
            SELECT f.position, f.stream, f.version, f.type, f.data, f.metadata, f.id,
                   f.recorded_at, 1
            FROM eventstore._lease_range(g, who, lease, eventstore._visible_below(), wanted) AS f;
        END IF;
        RETURN;
    END IF;
    IF cardinality(taken) < wanted THEN
        IF g.ordered_by_stream THEN
            fresh := ARRAY(SELECT f.position
                           FROM eventstore._lease_streams(g, who, lease, eventstore._visible_below(),
                                                          wanted - cardinality(taken)) AS f);
        ELSE
            fresh := ARRAY(SELECT f.position
                           FROM eventstore._lease_range(g, who, lease, eventstore._visible_below(),
                                                        wanted - cardinality(taken)) AS f);
        END IF;
        taken := taken || fresh;
        attempts := attempts || array_fill(1, ARRAY[cardinality(fresh)]);
    END IF;
    -- One lookup by position per event, whatever the statistics say (LIMIT keeps the
    -- planner from turning the lookups into a join over the whole log).
    RETURN QUERY
    SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at,
           t.attempt
    FROM unnest(taken, attempts) AS t(position, attempt)
    CROSS JOIN LATERAL (SELECT * FROM eventstore.events AS x
                        WHERE x.position = t.position LIMIT 1) AS e
    ORDER BY t.position;
END
$$;

-- Marks `positions` settled (acked or given back) in the leases `who` holds, deletes the
-- leases that are settled whole, and returns the positions that were pending until now.
CREATE FUNCTION eventstore._settle(g eventstore.subscription_groups, who text, positions bigint[])
RETURNS TABLE ("position" bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    lowest bigint := (SELECT min(p) FROM unnest(positions) AS p);
    highest bigint := (SELECT max(p) FROM unnest(positions) AS p);
BEGIN
    PERFORM FROM eventstore.group_leases AS l
    WHERE l.group_id = g.group_id AND l.consumer = who
      AND l.first_position <= highest AND l.last_position >= lowest
    FOR UPDATE;
    RETURN QUERY
    WITH hit AS (
        SELECT l.first_position AS lease, array_agg(lp.p ORDER BY lp.p) AS newly
        FROM eventstore.group_leases AS l
        CROSS JOIN LATERAL unnest(l.positions) AS lp(p)
        JOIN (SELECT DISTINCT p FROM unnest(positions) AS p) AS a ON a.p = lp.p
        WHERE l.group_id = g.group_id AND l.consumer = who
          AND l.first_position <= highest AND l.last_position >= lowest
          AND lp.p <> ALL (l.settled)
        GROUP BY l.first_position
    ),
    marked AS (
        UPDATE eventstore.group_leases AS l
        SET settled = l.settled || hit.newly
        FROM hit
        WHERE l.group_id = g.group_id AND l.first_position = hit.lease
        RETURNING hit.newly
    )
    SELECT p FROM marked CROSS JOIN LATERAL unnest(marked.newly) AS p;
    DELETE FROM eventstore.group_leases AS l
    WHERE l.group_id = g.group_id AND l.consumer = who
      AND l.first_position <= highest AND l.last_position >= lowest
      AND cardinality(l.settled) >= cardinality(l.positions);
END
$$;

CREATE OR REPLACE FUNCTION eventstore.ack(group_name text, consumer text, positions bigint[]) RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(ack.group_name, false);
    who text := eventstore._check_name('consumer', ack.consumer);
    acked_positions bigint[] := eventstore._check_positions(ack.positions);
    acked int;
    from_rows int;
BEGIN
    IF cardinality(acked_positions) = 0 THEN
        RETURN 0;
    END IF;
    -- The common case: a consumer acks the whole batch a fetch leased.
    DELETE FROM eventstore.group_leases AS l
    WHERE l.group_id = g.group_id
      AND l.first_position = acked_positions[1]
      AND l.consumer = who
      AND l.positions = acked_positions
      AND l.settled = '{}';
    GET DIAGNOSTICS acked = ROW_COUNT;
    IF acked > 0 THEN
        RETURN cardinality(acked_positions);
    END IF;
    SELECT count(*) INTO acked FROM eventstore._settle(g, who, acked_positions);
    DELETE FROM eventstore.group_events AS ge
    WHERE ge.group_id = g.group_id
      AND ge.position = ANY (acked_positions)
      AND ge.consumer = who;
    GET DIAGNOSTICS from_rows = ROW_COUNT;
    RETURN acked + from_rows;
END
$$;

-- nack() and park(): the consumer's leases on `positions` end; each event waits for a retry
-- after `retry_after`, or is parked when `park` or out of attempts.
CREATE OR REPLACE FUNCTION eventstore._give_back(
    group_name text, consumer text, positions bigint[], retry_after interval, reason text,
    park boolean
) RETURNS int
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    g eventstore.subscription_groups := eventstore._group(_give_back.group_name, false);
    who text := eventstore._check_name('consumer', _give_back.consumer);
    given bigint[] := eventstore._check_positions(_give_back.positions);
    moment timestamptz := clock_timestamp();
    from_rows int;
    failed bigint[];
    later bigint[];
BEGIN
    IF _give_back.retry_after IS NULL OR _give_back.retry_after < interval '0' THEN
        RAISE EXCEPTION 'retry_after must be >= 0, got %', coalesce(_give_back.retry_after::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(given) = 0 THEN
        RETURN 0;
    END IF;
    -- Retries the consumer holds as rows.
    WITH failed AS (
        UPDATE eventstore.group_events AS ge
        SET consumer = NULL,
            lease_until = NULL,
            retry_at = moment + _give_back.retry_after,
            parked_at = CASE WHEN park OR ge.attempt >= g.max_attempts THEN moment END,
            reason = coalesce(_give_back.reason,
                              format('%s by consumer %s', CASE WHEN park THEN 'parked' ELSE 'nacked' END, who))
        WHERE ge.group_id = g.group_id
          AND ge.position = ANY (given)
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
          AND ge.position <> ALL (given)
        RETURNING 1
    )
    SELECT count(*) INTO from_rows FROM failed;

    -- Events of the consumer's leases: they become rows, delivered once more.
    SELECT coalesce(array_agg(s.position ORDER BY s.position), '{}') INTO failed
    FROM eventstore._settle(g, who, given) AS s;
    IF cardinality(failed) = 0 THEN
        RETURN from_rows;
    END IF;
    INSERT INTO eventstore.group_events AS ge
        (group_id, position, stream, attempt, retry_at, parked_at, reason)
    SELECT g.group_id, e.position, CASE WHEN g.ordered_by_stream THEN e.stream END, 1,
           moment + _give_back.retry_after,
           CASE WHEN park OR g.max_attempts <= 1 THEN moment END,
           coalesce(_give_back.reason,
                    format('%s by consumer %s', CASE WHEN park THEN 'parked' ELSE 'nacked' END, who))
    FROM unnest(failed) AS p JOIN eventstore.events AS e ON e.position = p
    ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING;
    IF g.ordered_by_stream THEN
        -- The later events of the failed streams in the consumer's leases go back untried.
        SELECT coalesce(array_agg(e.position ORDER BY e.position), '{}') INTO later
        FROM eventstore.group_leases AS l
        CROSS JOIN LATERAL unnest(l.positions) AS p
        JOIN eventstore.events AS e ON e.position = p
        JOIN (SELECT fe.stream, min(fe.position) AS position
              FROM unnest(failed) AS f JOIN eventstore.events AS fe ON fe.position = f
              GROUP BY fe.stream) AS first_failed
          ON first_failed.stream = e.stream AND e.position > first_failed.position
        WHERE l.group_id = g.group_id AND l.consumer = who AND p <> ALL (l.settled);
        IF cardinality(later) > 0 THEN
            INSERT INTO eventstore.group_events AS ge (group_id, position, stream)
            SELECT g.group_id, e.position, e.stream
            FROM eventstore._settle(g, who, later) AS s
            JOIN eventstore.events AS e ON e.position = s.position
            ON CONFLICT ON CONSTRAINT group_events_pkey DO NOTHING;
        END IF;
    END IF;
    RETURN from_rows + cardinality(failed);
END
$$;

CREATE OR REPLACE FUNCTION eventstore.alter_group(
    group_name text,
    categories text[] DEFAULT NULL,
    event_types text[] DEFAULT NULL,
    from_position bigint DEFAULT NULL,
    max_attempts int DEFAULT NULL,
    lease_timeout interval DEFAULT NULL,
    ordered_by_stream boolean DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g eventstore.subscription_groups := eventstore._group(alter_group.group_name, true);
BEGIN
    PERFORM eventstore._check_group_options(alter_group.categories, alter_group.event_types,
        alter_group.from_position, alter_group.max_attempts, alter_group.lease_timeout,
        alter_group.ordered_by_stream, true);
    IF alter_group.from_position IS NOT NULL THEN
        -- Waiting events are read again from the log; leased and parked ones stay, and are
        -- not taken from the log a second time.
        DELETE FROM eventstore.group_events AS ge
        WHERE ge.group_id = g.group_id AND ge.consumer IS NULL AND ge.parked_at IS NULL;
        UPDATE eventstore.subscription_groups AS s
        SET replay_below = greatest(s.replay_below,
                                    (SELECT max(c) FROM unnest(coalesce(s.bucket_positions,
                                                                        ARRAY[s.position])) AS c) + 1),
            bucket_positions = NULL
        WHERE s.group_id = g.group_id;
    END IF;
    IF alter_group.ordered_by_stream IS DISTINCT FROM g.ordered_by_stream
       AND alter_group.ordered_by_stream IS NOT NULL THEN
        UPDATE eventstore.group_events AS ge
        SET stream = CASE WHEN alter_group.ordered_by_stream THEN
                         (SELECT e.stream FROM eventstore.events AS e WHERE e.position = ge.position) END
        WHERE ge.group_id = g.group_id;
        -- Leases taken while unordered hold every bucket until they are settled; leases of
        -- an ordered group mean nothing to an unordered one.
        UPDATE eventstore.group_leases AS l
        SET buckets = NULL
        WHERE l.group_id = g.group_id;
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

CREATE OR REPLACE FUNCTION eventstore.delete_group(group_name text) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    g eventstore.subscription_groups := eventstore._group(delete_group.group_name, true);
BEGIN
    DELETE FROM eventstore.group_leases AS l WHERE l.group_id = g.group_id;
    DELETE FROM eventstore.group_events AS ge WHERE ge.group_id = g.group_id;
    DELETE FROM eventstore.subscription_groups AS s WHERE s.group_id = g.group_id;
END
$$;

DROP FUNCTION eventstore._take_from_log(eventstore.subscription_groups, integer);

---------------------------------------------------------------------------------------------
-- Catch-up reads whose plan does not hang on statistics.
--
-- Right after a bulk load, before ANALYZE, the planner has no histogram of positions. It then
-- takes "after_position < position < visible_below" for a narrow range (0.5 % of the log),
-- and any filter on types or categories for a rare one, and prefers collecting every event
-- of the range and sorting them over walking the position index and stopping after
-- max_count: each page of a catch-up read the whole log.
-- - Unfiltered reads stay inlined into the caller's query; their upper bound is written as
--   (position + 0) < visible_below, which the planner does not pair with the lower bound
--   into a range, so the estimate stays a third of the log and the ordered walk wins (the
--   bound only passes over the events of transactions still running).
-- - Filtered reads go through _read_all_filtered(), which is planned with sorts and bitmap
--   scans ruled out: the log in position order with the type filter, or each category from
--   the category index in position order (as read_category does), pages merged.
CREATE FUNCTION eventstore._read_all_filtered(
    after_position bigint, max_count int, event_types text[], categories text[]
) RETURNS SETOF eventstore.recorded_event
LANGUAGE sql STABLE PARALLEL SAFE
-- JIT would only be drawn in by the cost these settings put on the merge of the categories.
SET enable_sort = off SET enable_bitmapscan = off SET jit = off
AS $$
    (SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
     FROM eventstore.events AS e
     WHERE _read_all_filtered.categories IS NULL
       AND e.position > _read_all_filtered.after_position
       AND e.position < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
       AND e.type = ANY (_read_all_filtered.event_types)
     ORDER BY e.position
     LIMIT _read_all_filtered.max_count)
    UNION ALL
    (SELECT c.position, c.stream, c.version, c.type, c.data, c.metadata, c.id, c.recorded_at
     FROM (SELECT DISTINCT wanted.category
           FROM unnest(_read_all_filtered.categories) AS wanted(category)) AS wanted
     CROSS JOIN LATERAL (
         SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
         FROM eventstore.events AS e
         WHERE split_part(e.stream, '-', 1) = wanted.category
           AND e.position > _read_all_filtered.after_position
           AND e.position < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
           AND (_read_all_filtered.event_types IS NULL
                OR e.type = ANY (_read_all_filtered.event_types))
         ORDER BY e.position
         LIMIT _read_all_filtered.max_count) AS c
     WHERE _read_all_filtered.categories IS NOT NULL
     ORDER BY c.position
     LIMIT _read_all_filtered.max_count)
$$;

CREATE OR REPLACE FUNCTION eventstore.read_all(
    after_position bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    event_types text[] DEFAULT NULL,
    categories text[] DEFAULT NULL
) RETURNS SETOF eventstore.recorded_event
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    (SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
     FROM eventstore.events AS e
     WHERE read_all.event_types IS NULL AND read_all.categories IS NULL
       AND e.position > eventstore._check_position(read_all.after_position)
       AND e.position + 0 < (SELECT h.visible_below FROM eventstore._log_horizon AS h)
     ORDER BY e.position
     LIMIT eventstore._check_count(read_all.max_count))
    UNION ALL
    SELECT f.position, f.stream, f.version, f.type, f.data, f.metadata, f.id, f.recorded_at
    FROM eventstore._read_all_filtered(eventstore._check_position(read_all.after_position),
                                       eventstore._check_count(read_all.max_count),
                                       read_all.event_types, read_all.categories) AS f
    WHERE read_all.event_types IS NOT NULL OR read_all.categories IS NOT NULL
$$;

-- The same view with held_back added at the end.
CREATE OR REPLACE VIEW eventstore.groups AS
SELECT g.group_name,
       -- Every event of the group up to here is acked or parked.
       least(g.position,
             coalesce(o.first_open - 1, g.position),
             coalesce(l.first_pending - 1, g.position)) AS position,
       coalesce(o.in_flight, 0) + coalesce(l.in_flight, 0) AS in_flight,
       coalesce(o.parked, 0) AS parked,
       -- Events of the group not handled yet and not in flight: waiting in the group plus
       -- those of the log after the cursors.
       coalesce(o.waiting, 0)
         + (SELECT count(*) FROM eventstore.events AS e
            WHERE e.position > g.position
              AND e.position < eventstore._visible_below()
              AND (g.bucket_positions IS NULL
                   OR e.position > g.bucket_positions[eventstore._stream_bucket(e.stream) + 1])
              AND (g.event_types IS NULL OR e.type = ANY (g.event_types))
              AND (g.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (g.categories))) AS lag,
       (SELECT count(DISTINCT c.consumer)
        FROM (SELECT ge.consumer FROM eventstore.group_events AS ge
              WHERE ge.group_id = g.group_id AND ge.consumer IS NOT NULL
              UNION ALL
              SELECT gl.consumer FROM eventstore.group_leases AS gl
              WHERE gl.group_id = g.group_id) AS c) AS consumers,
       g.categories,
       g.event_types,
       g.max_attempts,
       g.lease_timeout,
       g.ordered_by_stream,
       g.created_at,
       g.from_position,
       -- Events waiting behind a parked event of their stream (ordered groups).
       coalesce(o.held_back, 0) AS held_back
FROM eventstore.subscription_groups AS g
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE ge.consumer IS NOT NULL) AS in_flight,
           count(*) FILTER (WHERE ge.parked_at IS NOT NULL) AS parked,
           count(*) FILTER (WHERE ge.consumer IS NULL AND ge.parked_at IS NULL) AS waiting,
           count(*) FILTER (WHERE ge.consumer IS NULL AND ge.parked_at IS NULL
                              AND ge.stream IN (SELECT p.stream FROM eventstore.group_events AS p
                                                WHERE p.group_id = g.group_id
                                                  AND p.parked_at IS NOT NULL)) AS held_back,
           min(ge.position) FILTER (WHERE ge.parked_at IS NULL) AS first_open
    FROM eventstore.group_events AS ge
    WHERE ge.group_id = g.group_id
) AS o ON true
LEFT JOIN LATERAL (
    SELECT sum(cardinality(gl.positions) - cardinality(gl.settled)) AS in_flight,
           min((SELECT min(p) FROM unnest(gl.positions) AS p WHERE p <> ALL (gl.settled))) AS first_pending
    FROM eventstore.group_leases AS gl
    WHERE gl.group_id = g.group_id
) AS l ON true;

---------------------------------------------------------------------------------------------
-- Privileges: the new internal functions are the group functions' own (they run as the
-- extension's owner); readers of the groups view call the bucket function.
REVOKE ALL ON FUNCTION
    eventstore._stream_bucket(text),
    eventstore._read_all_filtered(bigint, integer, text[], text[]),
    eventstore._in_group(integer, bigint),
    eventstore._lease_rows(eventstore.subscription_groups, text, timestamptz, timestamptz, integer),
    eventstore._insert_leases(eventstore.subscription_groups, text, timestamptz, integer[], bigint[]),
    eventstore._lease_range(eventstore.subscription_groups, text, timestamptz, bigint, integer),
    eventstore._lease_streams(eventstore.subscription_groups, text, timestamptz, bigint, integer),
    eventstore._group_log(eventstore.subscription_groups, bigint, bigint, integer),
    eventstore._settle(eventstore.subscription_groups, text, bigint[])
    FROM PUBLIC;
REVOKE ALL ON TABLE eventstore.group_leases FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    eventstore._stream_bucket(text),
    eventstore._read_all_filtered(bigint, integer, text[], text[])
    TO eventstore_reader;

---------------------------------------------------------------------------------------------
COMMENT ON TABLE eventstore.group_leases IS
    'Batches of new events that fetch leased to a consumer, one row per batch: the positions, which of them are acked or given back, the holder, until when and (ordered groups) the stream buckets held.';

COMMENT ON VIEW eventstore.groups IS
'Persistent subscription groups: position (every event of the group up to it is acked or parked), in_flight (leased now), parked, lag (events not handled yet and not in flight), consumers holding leases, the options, and held_back (events waiting behind a parked event of their stream).';

COMMENT ON FUNCTION eventstore.fetch(text, text, integer) IS
'Leases up to max_count events of the group to consumer until lease_timeout passes and returns them in position order with their attempt (1 on first delivery).
Events are due retries and then new events of the log; an event whose lease ran out is delivered again, and parked once its attempts reach max_attempts.
In a group ordered by stream, a stream is with one consumer at a time, and a parked event holds back its own stream only.
Holds the group''s row lock until the calling transaction ends, so call it in a transaction of its own.';

COMMENT ON FUNCTION eventstore._stream_bucket(text) IS
'Internal: the stream bucket (0 to 63) of an ordered group''s stream.';
COMMENT ON FUNCTION eventstore._read_all_filtered(bigint, integer, text[], text[]) IS
'Internal: read_all with event types or categories, in position order whatever the statistics.';
COMMENT ON FUNCTION eventstore._in_group(integer, bigint) IS
'Internal: whether an event is leased, waiting or parked in a group.';
COMMENT ON FUNCTION eventstore._expire_leases(eventstore.subscription_groups, timestamptz) IS
'Internal: returns leases that ran out to their group as rows, parking events out of attempts.';
COMMENT ON FUNCTION eventstore._lease_rows(eventstore.subscription_groups, text, timestamptz, timestamptz, integer) IS
'Internal: leases a group''s due rows (retries; in ordered groups the waiting events of free streams).';
COMMENT ON FUNCTION eventstore._insert_leases(eventstore.subscription_groups, text, timestamptz, integer[], bigint[]) IS
'Internal: records leases of positions (at most 800 per lease).';
COMMENT ON FUNCTION eventstore._lease_range(eventstore.subscription_groups, text, timestamptz, bigint, integer) IS
'Internal: leases the next events of the log to a consumer of an unordered group and returns them.';
COMMENT ON FUNCTION eventstore._lease_streams(eventstore.subscription_groups, text, timestamptz, bigint, integer) IS
'Internal: claims free stream buckets of an ordered group and leases their next events, as one lease.';
COMMENT ON FUNCTION eventstore._group_log(eventstore.subscription_groups, bigint, bigint, integer) IS
'Internal: a group''s events of the log after a position, in position order, with their stream buckets.';
COMMENT ON FUNCTION eventstore._settle(eventstore.subscription_groups, text, bigint[]) IS
'Internal: marks positions of a consumer''s leases acked or given back; returns those that were pending.';
