-- \df+ eventstore.* documents every function.

COMMENT ON FUNCTION eventstore.append(text, jsonb, bigint) IS
'Appends events to a stream atomically and returns (first_version, last_version, first_position, last_position).
events: a JSON array of {"type": text, "data": any JSON, "metadata": object?, "id": uuid?}; a missing id gets a fresh UUID.
expected_version: NULL any version, -1 the stream must not exist, -2 it must exist, n >= 0 its last version must be n.
Errors: 40001 wrong expected version (re-read and retry), 22023 malformed events or arguments, 23505 event id already used elsewhere.
Re-sending events whose ids are already stored in this stream at the same versions succeeds without writing.';

COMMENT ON FUNCTION eventstore.try_append(text, jsonb, bigint) IS
'Appends like eventstore.append, but reports a wrong expected version as data instead of raising 40001: the result row is (NULL, NULL, NULL, NULL, current_version), nothing is written and the transaction stays usable.
On success it returns (first_version, last_version, first_position, last_position, last_version). Every other error is raised as by append.';

COMMENT ON FUNCTION eventstore.head_position() IS
'The position of the newest event read_all can return now (0 when there is none). Subscribers compare it with their checkpoint; wake-ups on channel eventstore carry it as their payload.';

COMMENT ON FUNCTION eventstore.read_stream(text, bigint, integer, boolean) IS
'Reads up to max_count events of a stream in version order, starting at from_version.
backwards = true reads in descending version order; from_version -1 then starts at the end of the stream.';

COMMENT ON FUNCTION eventstore.read_all(bigint, integer, text[], text[]) IS
'Reads up to max_count events of the global log after after_position, in position order, optionally only the given event types and categories.
Returns only events whose transactions have ended, so resuming after the last position read never skips or repeats a committed event.';

COMMENT ON FUNCTION eventstore.read_category(text, bigint, integer, integer, integer) IS
'Reads up to max_count events of one category (the stream name before its first "-") after after_position, in position order.
With consumer_group_member m and consumer_group_size n, returns only the streams that hash to member m, so each stream goes to exactly one member.';

COMMENT ON FUNCTION eventstore.stream_version(text) IS
'The version of the last event of a stream, or -1 when the stream does not exist.';

COMMENT ON FUNCTION eventstore.category(text) IS
'The category of a stream name: the text before its first "-" ("order" for "order-42").';

COMMENT ON FUNCTION eventstore.any_version() IS
'expected_version for append meaning any version: NULL.';

COMMENT ON FUNCTION eventstore.no_stream() IS
'expected_version for append meaning the stream must not exist: -1.';

COMMENT ON FUNCTION eventstore.stream_exists() IS
'expected_version for append meaning the stream must exist: -2.';

COMMENT ON FUNCTION eventstore._check_stream(text) IS 'Internal: validates a stream name (22023).';
COMMENT ON FUNCTION eventstore._check_category(text) IS 'Internal: validates a category name (22023).';
COMMENT ON FUNCTION eventstore._check_count(integer) IS 'Internal: validates max_count (22023).';
COMMENT ON FUNCTION eventstore._check_position(bigint) IS 'Internal: validates after_position (22023).';
COMMENT ON FUNCTION eventstore._check_from_version(bigint, boolean) IS
'Internal: validates from_version and resolves -1 for backwards reads (22023).';
COMMENT ON FUNCTION eventstore._check_consumer_group(integer, integer) IS
'Internal: validates consumer group arguments (22023).';
COMMENT ON FUNCTION eventstore._refuse_event_change() IS
'Internal: trigger that keeps stored events immutable.';

COMMENT ON FUNCTION eventstore.wakeup_mode() IS
'How appends wake subscribers on channel eventstore. coalesced: pg_eventstore is in shared_preload_libraries and one background worker per database sends NOTIFY eventstore with the head position at most once per eventstore.wakeup_interval (3 ms by default). per_transaction: each appending transaction sends NOTIFY eventstore with an empty payload itself, which serializes notifying commits.';
