-- pg_eventstore in five minutes, for psql users.
--   psql -X -v ON_ERROR_STOP=1 -d yourdb -f sql/01_quickstart.sql
CREATE EXTENSION IF NOT EXISTS pg_eventstore;

-- Append to a new stream: -1 (eventstore.no_stream()) says it must not exist yet.
SELECT * FROM eventstore.append(
    'user-donald',
    '[{"type": "user-created", "data": {"username": "donald", "fullName": "Donald Duck"}}]',
    eventstore.no_stream());

-- Append more, expecting the stream to be exactly at version 0.
SELECT * FROM eventstore.append(
    'user-donald',
    '[{"type": "user-renamed", "data": {"fullName": "Donald F. Duck"},
       "metadata": {"correlationId": "req-17", "causationId": "cmd-4"}}]',
    0);

-- A stale writer that still believes the stream is at version 0 is refused with SQLSTATE
-- 40001: it re-reads the stream and decides again.
DO $$
BEGIN
    PERFORM eventstore.append('user-donald', '[{"type": "user-deactivated", "data": {}}]', 0);
    RAISE EXCEPTION 'the stale append should have been refused';
EXCEPTION WHEN serialization_failure THEN
    RAISE NOTICE 'refused as expected: %', SQLERRM;
END
$$;

-- Retrying an append whose reply was lost is safe when the events carry ids.
SELECT * FROM eventstore.append('order-1001',
    '[{"type": "order-placed", "id": "0b7c4f3e-4d52-4c1e-9f0a-6d5e2b1a9c01",
       "data": {"username": "donald", "items": [{"sku": "duck-pond", "qty": 1, "price": 12.5}], "currency": "EUR"}}]',
    eventstore.no_stream());
SELECT * FROM eventstore.append('order-1001',
    '[{"type": "order-placed", "id": "0b7c4f3e-4d52-4c1e-9f0a-6d5e2b1a9c01",
       "data": {"username": "donald", "items": [{"sku": "duck-pond", "qty": 1, "price": 12.5}], "currency": "EUR"}}]',
    eventstore.no_stream());

-- Read a stream forwards, and backwards from its end (-1).
SELECT version, type, data FROM eventstore.read_stream('user-donald');
SELECT version, type FROM eventstore.read_stream('user-donald', -1, 1, true);
SELECT eventstore.stream_version('user-donald') AS donald, eventstore.stream_version('user-nobody') AS nobody;

-- The global log, in position order, and one category of it.
SELECT position, stream, version, type FROM eventstore.read_all();
SELECT stream, type FROM eventstore.read_category('order');

-- Each failure carries a SQLSTATE a program can branch on; nothing is written.
DO $$
BEGIN
    PERFORM eventstore.append('order-1002', '[{"type": "order-placed"}]');
EXCEPTION WHEN invalid_parameter_value THEN
    RAISE NOTICE 'refused as expected: %', SQLERRM;
END
$$;

-- (The test suite runs this file; these checks make it fail loudly if the story breaks.)
DO $$
BEGIN
    ASSERT eventstore.stream_version('user-donald') = 1, 'two events for donald';
    ASSERT eventstore.stream_version('order-1001') = 0, 'the retried append wrote once';
    ASSERT (SELECT count(*) FROM eventstore.read_all() WHERE stream IN ('user-donald', 'order-1001')) = 3,
        'three events in the log';
END
$$;
