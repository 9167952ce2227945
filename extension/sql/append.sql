-- Implemented in Rust (src/append.rs), declared here because it takes its jsonb argument as a
-- raw datum and returns eventstore.append_result.
CREATE FUNCTION eventstore.append(
    stream text,
    events jsonb,
    expected_version bigint DEFAULT NULL
) RETURNS eventstore.append_result
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'eventstore_append';

CREATE FUNCTION eventstore.try_append(
    stream text,
    events jsonb,
    expected_version bigint DEFAULT NULL
) RETURNS eventstore.append_attempt
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'eventstore_try_append';
