-- The read side is plain SQL on purpose: the planner inlines these functions into the
-- caller's query, so a read is one index scan that hands stored jsonb through untouched.
-- Argument checks are the Rust functions eventstore._check_*(), which raise 22023.

-- Every event below this position belongs to a transaction that has ended, so the set of
-- committed events below it can no longer change. Positions are `xid << 20 | index`, and
-- the snapshot's xmin is the oldest transaction id still running.
CREATE FUNCTION eventstore._visible_below() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())::text::bigint << 20
$$;

CREATE FUNCTION eventstore.category(stream text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT split_part(stream, '-', 1)
$$;

CREATE FUNCTION eventstore.stream_version(stream text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(max(e.version), -1)
    FROM eventstore.events AS e
    WHERE e.stream = eventstore._check_stream(stream_version.stream)
$$;

CREATE FUNCTION eventstore.read_stream(
    stream text,
    from_version bigint DEFAULT 0,
    max_count int DEFAULT 1000,
    backwards boolean DEFAULT false
) RETURNS SETOF eventstore.recorded_event
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    (SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
     FROM eventstore.events AS e
     WHERE NOT read_stream.backwards
       AND e.stream = eventstore._check_stream(read_stream.stream)
       AND e.version >= eventstore._check_from_version(read_stream.from_version, read_stream.backwards)
     ORDER BY e.version
     LIMIT eventstore._check_count(read_stream.max_count))
    UNION ALL
    (SELECT e.position, e.stream, e.version, e.type, e.data, e.metadata, e.id, e.recorded_at
     FROM eventstore.events AS e
     WHERE read_stream.backwards
       AND e.stream = eventstore._check_stream(read_stream.stream)
       AND e.version <= eventstore._check_from_version(read_stream.from_version, read_stream.backwards)
     ORDER BY e.version DESC
     LIMIT eventstore._check_count(read_stream.max_count))
$$;

CREATE FUNCTION eventstore.read_all(
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
      AND e.position < eventstore._visible_below()
      AND (read_all.event_types IS NULL OR e.type = ANY (read_all.event_types))
      AND (read_all.categories IS NULL OR split_part(e.stream, '-', 1) = ANY (read_all.categories))
    ORDER BY e.position
    LIMIT eventstore._check_count(read_all.max_count)
$$;

CREATE FUNCTION eventstore.read_category(
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
      AND e.position < eventstore._visible_below()
      AND eventstore._check_consumer_group(read_category.consumer_group_member,
                                           read_category.consumer_group_size)
      AND (read_category.consumer_group_size IS NULL
           OR mod(hashtextextended(e.stream, 0) & 9223372036854775807,
                  read_category.consumer_group_size) = read_category.consumer_group_member)
    ORDER BY e.position
    LIMIT eventstore._check_count(read_category.max_count)
$$;

-- The newest position read_all can return now. Computed from the same statement snapshot as a
-- read_all in the same query, so a reader that gets fewer rows than it asked for knows that
-- nothing up to this position is missing, even with type or category filters.
CREATE FUNCTION eventstore.head_position() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT coalesce(max(e.position), 0)
    FROM eventstore.events AS e
    WHERE e.position < eventstore._visible_below()
$$;
