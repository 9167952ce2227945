-- The portable form of pg_eventstore: plain SQL and PL/pgSQL for the parts the extension
-- implements in Rust, for servers that load no custom library (managed PostgreSQL).
--
-- This is not an install script. client/src/portable.rs builds one from the extension's
-- frozen install script of a release (extension/sql/released/): each statement that declares
-- a C function is replaced by the block below that names its symbol, and the few statements
-- that need an extension or a superuser change as portable.rs describes. The result is
-- committed as sql/portable/pg_eventstore--VERSION.sql; a test fails when it drifts.
--
-- Each block starts with a line "-- portable: replaces <symbol>" and runs to the next such
-- line. The functions keep the signatures, volatility and parallel safety of the ones they
-- replace, and raise the same messages with the same SQLSTATEs.
--
-- Differences a user can see (documented in the README):
-- - append and try_append are SECURITY DEFINER: the writer has no INSERT on the log, and a
--   PL/pgSQL function inserts with its owner's rights, where the C function inserts directly.
-- - Appends send no NOTIFY: wakeup_mode() is 'notifier', and wake-ups come from the
--   coalescing notifier (`eventstore notify`, also run by `eventstore run`).
-- - The stream append lock is pg_advisory_xact_lock(1163087872, hashtext(stream)) (key 1 is
--   "ES" << 16), an ordinary advisory lock in pg_locks (objsubid 2).
-- - Under REPEATABLE READ, an append that meets a concurrent one reports 40001 without the
--   stream's newest version, which its snapshot cannot see.

-- portable: replaces eventstore_append
-- The uuid of text in the forms the extension accepts (hyphenated, 32 hex digits, braced,
-- urn:uuid:), NULL for anything else. Internal to the portable form; not STRICT, so that
-- the planner inlines it.
CREATE FUNCTION eventstore._parse_uuid(value text) RETURNS uuid
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
    WHEN value ~ '^(?:(?:urn:uuid:)?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}|[0-9a-fA-F]{32})$'
        THEN (CASE WHEN value LIKE 'urn:%' THEN substr(value, 10) ELSE value END)::uuid
    END
$$;

-- A version 7 uuid (RFC 9562): 48 bits of Unix milliseconds, then random bits, as the
-- extension generates for events without an id. Internal to the portable form.
CREATE FUNCTION eventstore._uuid_v7() RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$
    SELECT encode(
        set_byte(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            6,
            (get_byte(uuid_send(gen_random_uuid()), 6) & 15) | 112),
        'hex')::uuid
$$;

-- Stores a checked batch at consecutive versions and positions; returns how many events it
-- stored. PL/pgSQL, so that its plan is kept (a SQL function's is made on every call).
-- Internal to the portable form.
CREATE FUNCTION eventstore._insert_events(
    stream text,
    events jsonb,
    first_version bigint,
    first_position bigint
) RETURNS int
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    inserted int;
BEGIN
    INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id)
    SELECT _insert_events.first_position + e.n - 1,
           _insert_events.stream,
           _insert_events.first_version + e.n - 1,
           e.value ->> 'type',
           e.value -> 'data',
           CASE WHEN jsonb_typeof(e.value -> 'metadata') = 'object' THEN e.value -> 'metadata'
                ELSE '{}'::jsonb END,
           CASE WHEN jsonb_typeof(e.value -> 'id') = 'string'
                THEN eventstore._parse_uuid(e.value ->> 'id')
                ELSE eventstore._uuid_v7() END
    FROM jsonb_array_elements(_insert_events.events) WITH ORDINALITY AS e(value, n);
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END
$$;

-- Raises the extension's error for the first thing wrong with an append's arguments, in
-- the order the extension checks them. _append calls it only when its own quick checks
-- fail, so that the messages cost nothing on the way of a good append. Internal to the
-- portable form.
CREATE FUNCTION eventstore._append_problem(
    stream text,
    events jsonb,
    expected_version bigint,
    caller text
) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    fields_hint constant text :=
        'An event is a JSON object {"type": text, "data": any JSON, "metadata": object?, "id": uuid?}.';
    event_count int;
    problem text;
    problem_hint text;
    problem_index int;
    id_count int;
    repeat_index int;
    repeated_id uuid;
    repeat_first int;
BEGIN
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot run eventstore.% on a hot standby', caller
            USING ERRCODE = 'read_only_sql_transaction',
                  DETAIL = 'This server is a standby in recovery; it serves reads only.',
                  HINT = 'Send writes to the primary.';
    END IF;
    PERFORM eventstore._check_stream(stream);
    IF events IS NULL THEN
        RAISE EXCEPTION 'events must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF expected_version IS NOT NULL AND expected_version < -2 THEN
        RAISE EXCEPTION 'expected_version % is not valid', expected_version
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use NULL (any version), -1 (no stream), -2 (stream exists) or a version >= 0.';
    END IF;
    IF jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'events must be a JSON array of event objects'
            USING ERRCODE = 'invalid_parameter_value', HINT = fields_hint;
    END IF;
    event_count := jsonb_array_length(events);
    IF event_count = 0 THEN
        RAISE EXCEPTION 'events must contain at least one event'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- The first malformed event in batch order: its index, the message and the hint if it
    -- has one; and how many events carry an id.
    SELECT (array_agg(c.i ORDER BY c.i) FILTER (WHERE c.problem IS NOT NULL))[1],
           (array_agg(c.problem[1] ORDER BY c.i) FILTER (WHERE c.problem IS NOT NULL))[1],
           (array_agg(c.problem[2] ORDER BY c.i) FILTER (WHERE c.problem IS NOT NULL))[1],
           count(*) FILTER (WHERE c.has_id)
    INTO problem_index, problem, problem_hint, id_count
    FROM (
        SELECT e.n - 1 AS i,
               jsonb_typeof(e.value -> 'id') = 'string' AS has_id,
               CASE
               WHEN jsonb_typeof(e.value) <> 'object' THEN
                   ARRAY[format('events[%s] must be a JSON object', e.n - 1), fields_hint]
               WHEN NOT e.value ? 'type' THEN
                   ARRAY[format('events[%s].type is missing', e.n - 1), fields_hint]
               WHEN jsonb_typeof(e.value -> 'type') <> 'string'
                    OR e.value ->> 'type' = ''
                    OR octet_length(e.value ->> 'type') > 1024 THEN
                   ARRAY[format('events[%s].type must be a non-empty string of at most 1024 bytes', e.n - 1)]
               WHEN NOT e.value ? 'data' THEN
                   ARRAY[format('events[%s].data is missing', e.n - 1),
                         'Use {} or null for an event without data.']
               WHEN jsonb_typeof(e.value -> 'metadata') NOT IN ('object', 'null') THEN
                   ARRAY[format('events[%s].metadata must be a JSON object', e.n - 1)]
               WHEN jsonb_typeof(e.value -> 'id') NOT IN ('string', 'null') THEN
                   ARRAY[format('events[%s].id must be a UUID string', e.n - 1)]
               WHEN jsonb_typeof(e.value -> 'id') = 'string'
                    AND eventstore._parse_uuid(e.value ->> 'id') IS NULL THEN
                   ARRAY[format('events[%s].id is not a valid UUID: "%s"', e.n - 1,
                                e.value ->> 'id')]
               WHEN EXISTS (SELECT FROM jsonb_object_keys(e.value) AS k(key)
                            WHERE k.key NOT IN ('type', 'data', 'metadata', 'id')) THEN
                   ARRAY[format('events[%s] has an unknown field "%s"', e.n - 1,
                                (SELECT k.key FROM jsonb_object_keys(e.value) AS k(key)
                                 WHERE k.key NOT IN ('type', 'data', 'metadata', 'id')
                                 LIMIT 1)),
                         fields_hint]
               END AS problem
        FROM jsonb_array_elements(events) WITH ORDINALITY AS e(value, n)
    ) AS c;
    -- An id that repeats an earlier event's counts as a problem of the later event, unless
    -- an event before it is malformed.
    IF id_count > 1 THEN
        SELECT d.i, d.id, d.first INTO repeat_index, repeated_id, repeat_first
        FROM (
            SELECT c.i, c.id, min(c.i) OVER (PARTITION BY c.id) AS first
            FROM (
                SELECT e.n - 1 AS i, eventstore._parse_uuid(e.value ->> 'id') AS id
                FROM jsonb_array_elements(events) WITH ORDINALITY AS e(value, n)
                WHERE jsonb_typeof(e.value) = 'object' AND jsonb_typeof(e.value -> 'id') = 'string'
            ) AS c
            WHERE c.id IS NOT NULL
        ) AS d
        WHERE d.first < d.i
        ORDER BY d.i
        LIMIT 1;
        IF repeat_index < coalesce(problem_index, event_count) THEN
            RAISE EXCEPTION 'events[%].id % repeats the id of events[%]',
                repeat_index, repeated_id, repeat_first
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    IF problem IS NOT NULL THEN
        IF problem_hint IS NULL THEN
            RAISE EXCEPTION '%', problem USING ERRCODE = 'invalid_parameter_value';
        END IF;
        RAISE EXCEPTION '%', problem
            USING ERRCODE = 'invalid_parameter_value', HINT = problem_hint;
    END IF;

END
$$;

-- Appends or reports the stream's version; `raise_conflict` raises 40001 instead (append).
-- Internal to the portable form: append and try_append are its two faces, and only they
-- (as its owner, with their search_path) may call it.
CREATE FUNCTION eventstore._append(
    stream text,
    events jsonb,
    expected_version bigint,
    raise_conflict boolean,
    caller text
) RETURNS eventstore.append_attempt
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
DECLARE
    current_version bigint;
    last_position bigint;
    version_matches boolean;
    any_stored boolean;
    bad_events bigint;
    id_count bigint;
    ids uuid[];
    txid bigint;
    base bigint;
    lifted bigint;
    first_index bigint;
    first_position bigint;
    event_count int;
    -- _insert_events is called by assignment, a simple expression, where PERFORM would run
    -- one more statement.
    inserted int;
    stored record;
    result eventstore.append_attempt;
    read_committed boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
    -- The arguments and the events are checked by a few small expressions; when any fails,
    -- _append_problem raises the error the extension gives. (Every statement of a function
    -- is compiled again in each transaction: the full checks would cost a good append more
    -- than its insert.)
    IF pg_is_in_recovery() OR stream IS NULL OR stream = '' OR octet_length(stream) > 1024
       OR events IS NULL OR expected_version < -2 OR jsonb_typeof(events) <> 'array'
       OR jsonb_array_length(events) = 0 THEN
        PERFORM eventstore._append_problem(stream, events, expected_version, caller);
    END IF;
    -- Holds off eventstore.rebase_positions() (SHARE) until this transaction ends, before
    -- the base is read below.
    LOCK TABLE eventstore.events IN ROW EXCLUSIVE MODE;
    PERFORM pg_advisory_xact_lock(1163087872, hashtext(stream));
    txid := pg_current_xact_id()::text::bigint;

    -- Under REPEATABLE READ the base row is locked, which fails with 40001 when a rebase
    -- committed after the snapshot was taken.
    IF NOT read_committed THEN
        PERFORM FROM eventstore.position_base FOR KEY SHARE;
    END IF;
    -- In one statement: the events checked (how many are malformed, and the ids they
    -- carry), the stream's head, whether any of the ids is stored already, the position
    -- base and the last position this transaction has taken.
    SELECT v.bad_events, v.id_count, v.ids, v.event_count,
           h.version, h.position, b.base,
           v.id_count > 0 AND EXISTS (SELECT FROM eventstore.events AS s WHERE s.id = ANY (v.ids)),
           (SELECT max(e.position) FROM eventstore.events AS e
            WHERE e.position >= (txid + b.base) << 20 AND e.position < (txid + b.base + 1) << 20)
    INTO bad_events, id_count, ids, event_count,
         current_version, last_position, base, any_stored, first_index
    FROM (
        SELECT count(*) FILTER (WHERE (
                   jsonb_typeof(c.value) = 'object'
                   AND jsonb_typeof(c.value -> 'type') = 'string'
                   AND c.value ->> 'type' <> ''
                   AND octet_length(c.value ->> 'type') <= 1024
                   AND c.value ? 'data'
                   AND coalesce(jsonb_typeof(c.value -> 'metadata'), 'null') IN ('object', 'null')
                   AND coalesce(jsonb_typeof(c.value -> 'id'), 'null') IN ('string', 'null')
                   AND (c.id IS NOT NULL OR NOT c.value ? 'id' OR c.value -> 'id' = 'null')
                   AND c.value - '{type,data,metadata,id}'::text[] = '{}'::jsonb) IS NOT TRUE)
                   AS bad_events,
               count(c.id) AS id_count,
               array_agg(c.id) FILTER (WHERE c.id IS NOT NULL) AS ids,
               count(*) AS event_count
        FROM (
            SELECT e.value,
                   CASE WHEN jsonb_typeof(e.value -> 'id') = 'string'
                        THEN eventstore._parse_uuid(e.value ->> 'id') END AS id
            FROM jsonb_array_elements(events) AS e(value)
        ) AS c
    ) AS v
    CROSS JOIN eventstore.position_base AS b
    LEFT JOIN LATERAL (
        SELECT e.version, e.position FROM eventstore.events AS e
        WHERE e.stream = _append.stream
        ORDER BY e.version DESC
        LIMIT 1
    ) AS h ON true;
    -- Two events with one id: a sort only for batches with ids, not for every call.
    IF bad_events > 0
       OR (id_count > 1 AND (SELECT count(DISTINCT i) FROM unnest(ids) AS i) < id_count) THEN
        PERFORM eventstore._append_problem(stream, events, expected_version, caller);
    END IF;
    current_version := coalesce(current_version, -1);
    last_position := coalesce(last_position, -1);
    version_matches := expected_version IS NULL
        OR (expected_version = -1 AND current_version = -1)
        OR (expected_version = -2 AND current_version >= 0)
        OR expected_version = current_version;

    -- A retry of an append whose reply was lost finds its events by id.
    IF any_stored
       AND (NOT version_matches OR expected_version IS NULL OR expected_version = -2) THEN
        SELECT (count(s.id) = count(*)
                AND bool_and(s.stream = _append.stream
                             AND s.version = first_stored.version + b.n - 1)
                AND (expected_version IS NULL
                     OR (expected_version = -1 AND first_stored.version = 0)
                     OR (expected_version = -2 AND first_stored.version >= 1)
                     OR expected_version = first_stored.version - 1)) AS is_retry,
               count(s.id) AS found,
               first_stored.version AS first_version,
               first_stored.position AS first_position,
               max(s.version) AS last_version,
               max(s.position) AS last_position,
               (array_agg(s.id ORDER BY b.n) FILTER (WHERE s.id IS NOT NULL))[1] AS used_id,
               (array_agg(s.stream ORDER BY b.n) FILTER (WHERE s.id IS NOT NULL))[1] AS used_by,
               (array_agg(s.version ORDER BY b.n) FILTER (WHERE s.id IS NOT NULL))[1] AS used_at
        INTO stored
        FROM jsonb_array_elements(events) WITH ORDINALITY AS b(value, n)
        LEFT JOIN eventstore.events AS s
               ON jsonb_typeof(b.value -> 'id') = 'string'
              AND s.id = eventstore._parse_uuid(b.value ->> 'id')
        LEFT JOIN LATERAL (
            SELECT f.version, f.position FROM eventstore.events AS f
            WHERE jsonb_typeof(events -> 0 -> 'id') = 'string'
              AND f.id = eventstore._parse_uuid(events -> 0 ->> 'id')
        ) AS first_stored ON true
        GROUP BY first_stored.version, first_stored.position;
        IF stored.found > 0 THEN
            IF stored.is_retry THEN
                result := ROW(stored.first_version, stored.last_version, stored.first_position,
                              stored.last_position, stored.last_version);
                RETURN result;
            END IF;
            RAISE EXCEPTION 'event id % is already used by stream "%" at version %',
                stored.used_id, stored.used_by, stored.used_at
                USING ERRCODE = 'unique_violation',
                      DETAIL = 'An append whose events all carry the ids already stored, in the same order at the same versions, succeeds without writing; any other reuse of an id is refused.',
                      HINT = 'Give each new event a fresh id.';
        END IF;
    END IF;

    IF NOT version_matches THEN
        IF raise_conflict THEN
            RAISE EXCEPTION 'wrong expected version for stream "%": expected %, actual %',
                stream,
                CASE expected_version WHEN -1 THEN 'no stream (-1)'
                                      WHEN -2 THEN 'an existing stream (-2)'
                                      ELSE expected_version::text END,
                current_version
                USING ERRCODE = 'serialization_failure',
                      DETAIL = format('Stream "%s" is at version %s (-1: it does not exist).',
                                      stream, current_version),
                      HINT = 'Re-read the stream, decide again, and retry the append.';
        END IF;
        result := ROW(NULL, NULL, NULL, NULL, current_version);
        RETURN result;
    END IF;

    -- Positions: (transaction id + base) << 20 | index, the index counting this
    -- transaction's events so far.
    lifted := txid + base;
    IF lifted > 8796093022207 THEN
        RAISE EXCEPTION 'transaction id % plus the position base no longer fits in a 63-bit event position', txid
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
    first_index := coalesce(first_index - (lifted << 20) + 1, 0);
    IF first_index + event_count > 1048576 THEN
        RAISE EXCEPTION 'a transaction can append at most 1048576 events'
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Split the import into several transactions.';
    END IF;
    first_position := (lifted << 20) | first_index;
    IF first_position <= last_position THEN
        RAISE EXCEPTION 'could not serialize access: stream "%" was appended to by a transaction younger than this one', stream
            USING ERRCODE = 'serialization_failure',
                  DETAIL = format('The stream''s last event is at position %s; this transaction''s events would sort before it in the global log.', last_position),
                  HINT = 'Retry the transaction.';
    END IF;

    -- The events at consecutive versions and positions. Under REPEATABLE READ the snapshot
    -- may predate an append that committed while this one waited for the lock: its version
    -- is taken, and appending on top of what this snapshot sees would be a lost update.
    IF read_committed THEN
        inserted := eventstore._insert_events(stream, events, current_version + 1, first_position);
    ELSE
        BEGIN
            inserted := eventstore._insert_events(stream, events, current_version + 1, first_position);
        EXCEPTION WHEN unique_violation THEN
            IF NOT EXISTS (SELECT FROM eventstore.events AS e
                           WHERE e.stream = _append.stream AND e.version = current_version + 1) THEN
                RAISE EXCEPTION 'could not serialize access: stream "%" was appended to by a concurrent transaction', stream
                    USING ERRCODE = 'serialization_failure',
                          DETAIL = format('This transaction''s snapshot sees version %s; a transaction that committed since has appended.', current_version),
                          HINT = 'Retry the transaction.';
            END IF;
            RAISE;
        END;
    END IF;
    result := ROW(current_version + 1, current_version + event_count, first_position,
                  first_position + event_count - 1, current_version + event_count);
    RETURN result;
END
$$;

CREATE FUNCTION eventstore.append(
    stream text,
    events jsonb,
    expected_version bigint DEFAULT NULL
) RETURNS eventstore.append_result
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a eventstore.append_attempt := eventstore._append(stream, events, expected_version, true, 'append');
    result eventstore.append_result;
BEGIN
    result := ROW(a.first_version, a.last_version, a.first_position, a.last_position);
    RETURN result;
END
$$;

-- portable: replaces eventstore_try_append
CREATE FUNCTION eventstore.try_append(
    stream text,
    events jsonb,
    expected_version bigint DEFAULT NULL
) RETURNS eventstore.append_attempt
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN eventstore._append(stream, events, expected_version, false, 'try_append');
END
$$;

-- portable: replaces _check_category_wrapper
CREATE FUNCTION eventstore._check_category(category text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF category IS NULL THEN
        RAISE EXCEPTION 'category must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF category = '' THEN
        RAISE EXCEPTION 'category must not be empty' USING ERRCODE = 'invalid_parameter_value';
    ELSIF strpos(category, '-') > 0 THEN
        RAISE EXCEPTION 'category "%" must not contain ''-''', category
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The category of stream "order-42" is "order".';
    END IF;
    RETURN category;
END
$$;

-- portable: replaces _check_consumer_group_wrapper
CREATE FUNCTION eventstore._check_consumer_group(member int, size int) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF member IS NULL AND size IS NULL THEN
        RETURN true;
    ELSIF member IS NULL OR size IS NULL THEN
        RAISE EXCEPTION 'consumer_group_member and consumer_group_size must be given together'
            USING ERRCODE = 'invalid_parameter_value';
    ELSIF size < 1 OR member < 0 OR member >= size THEN
        RAISE EXCEPTION 'consumer_group_member must be between 0 and consumer_group_size - 1 (size %, member %)', size, member
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN true;
END
$$;

-- portable: replaces _check_count_wrapper
CREATE FUNCTION eventstore._check_count(max_count int) RETURNS int
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF max_count IS NULL THEN
        RAISE EXCEPTION 'max_count must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF max_count < 0 OR max_count > 100000 THEN
        RAISE EXCEPTION 'max_count must be between 0 and 100000, got %', max_count
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Read a long stream or log in pages, continuing after the last event read.';
    END IF;
    RETURN max_count;
END
$$;

-- portable: replaces _check_from_version_wrapper
CREATE FUNCTION eventstore._check_from_version(from_version bigint, backwards boolean) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF backwards IS NULL THEN
        RAISE EXCEPTION 'backwards must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF from_version IS NULL THEN
        RAISE EXCEPTION 'from_version must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF from_version = -1 AND backwards THEN
        RETURN 9223372036854775807;
    ELSIF from_version < 0 THEN
        RAISE EXCEPTION 'from_version must be >= 0, got %', from_version
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = CASE WHEN backwards
                              THEN 'Use -1 to read backwards from the end of the stream.'
                              ELSE 'Use 0 to read from the start of the stream.' END;
    END IF;
    RETURN from_version;
END
$$;

-- portable: replaces _check_position_wrapper
CREATE FUNCTION eventstore._check_position(after_position bigint) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF after_position IS NULL THEN
        RAISE EXCEPTION 'after_position must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF after_position < 0 THEN
        RAISE EXCEPTION 'after_position must be >= 0, got %', after_position
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use 0 to read from the beginning.';
    END IF;
    RETURN after_position;
END
$$;

-- portable: replaces _check_stream_wrapper
CREATE FUNCTION eventstore._check_stream(stream text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
BEGIN
    IF stream IS NULL THEN
        RAISE EXCEPTION 'stream must not be NULL' USING ERRCODE = 'invalid_parameter_value';
    ELSIF stream = '' THEN
        RAISE EXCEPTION 'stream must not be empty' USING ERRCODE = 'invalid_parameter_value';
    ELSIF octet_length(stream) > 1024 THEN
        RAISE EXCEPTION 'stream name is % bytes long; the limit is 1024', octet_length(stream)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN stream;
END
$$;

-- portable: replaces any_version_wrapper
CREATE FUNCTION eventstore.any_version() RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT NULL::bigint $$;

-- portable: replaces no_stream_wrapper
CREATE FUNCTION eventstore.no_stream() RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT -1::bigint $$;

-- portable: replaces stream_exists_wrapper
CREATE FUNCTION eventstore.stream_exists() RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT -2::bigint $$;

-- portable: replaces wakeup_mode_wrapper
-- 'notifier': appends do not notify; a coalescing notifier process sends the wake-ups.
CREATE FUNCTION eventstore.wakeup_mode() RETURNS text
LANGUAGE sql STABLE STRICT PARALLEL SAFE
AS $$ SELECT 'notifier'::text $$;

-- portable: replaces eventstore_position_base_changed
-- Appends read the base on every call here; there is no cache to tell.
CREATE FUNCTION eventstore._position_base_changed() RETURNS void
LANGUAGE plpgsql VOLATILE PARALLEL UNSAFE
AS $$
BEGIN
    RETURN;
END
$$;

-- portable: replaces roles
-- The roles are created where missing when the installing role may create roles. A database
-- owner without CREATEROLE installs the store without them: the grants to them below are
-- skipped, and the owner grants its objects to the application's roles itself (or a role
-- with CREATEROLE creates the four roles before the install).
DO $$
DECLARE
    wanted text;
    missing text[];
BEGIN
    SELECT array_agg(r.name ORDER BY r.n) INTO missing
    FROM unnest(ARRAY['eventstore_reader', 'eventstore_writer',
                      'eventstore_consumer', 'eventstore_admin']) WITH ORDINALITY AS r(name, n)
    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles AS pr WHERE pr.rolname = r.name);
    IF missing IS NOT NULL
       AND NOT (SELECT pr.rolsuper OR pr.rolcreaterole FROM pg_catalog.pg_roles AS pr
                WHERE pr.rolname = current_user) THEN
        RAISE NOTICE 'pg_eventstore: roles % are missing and % may not create them; the store is installed without them',
            array_to_string(missing, ', '), current_user
            USING HINT = 'The owner of schema eventstore grants access to it; or a role with CREATEROLE creates the four roles, and the store is installed again.';
        RETURN;
    END IF;
    FOREACH wanted IN ARRAY coalesce(missing, '{}') LOOP
        EXECUTE format('CREATE ROLE %I NOLOGIN', wanted);
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
