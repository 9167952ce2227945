-- State as of a time: the seed's way of reproducing a production bug. Events are never
-- changed, so what any stream (or the whole shop) looked like at a past moment is a query
-- over the events recorded up to it. `eventstore replay shop --schema asof --time T` does
-- the same for the shop's read-model tables, into a schema of its own.
CREATE EXTENSION IF NOT EXISTS pg_eventstore;

SELECT eventstore.append('user-grace',
    '[{"type": "user-created", "data": {"username": "grace", "fullName": "Grace Hopper"}}]',
    eventstore.no_stream());
SELECT eventstore.append('order-77',
    '[{"type": "order-placed",
       "data": {"username": "grace", "items": [{"sku": "beans-1kg", "qty": 2, "price": 24.9}], "currency": "EUR"}},
      {"type": "order-paid", "data": {"amount": 49.8, "method": "card"}}]',
    eventstore.no_stream());

-- The moment the bug report names. (psql keeps it in a variable.)
SELECT pg_sleep(0.01);
SELECT clock_timestamp() AS bug_at \gset
SELECT pg_sleep(0.01);

-- Afterwards the order moves on and the user is renamed.
SELECT eventstore.append('order-77', '[{"type": "order-shipped", "data": {"carrier": "dhl", "trackingNumber": "TN77"}}]', 1);
SELECT eventstore.append('user-grace', '[{"type": "user-renamed", "data": {"fullName": "Rear Admiral Hopper"}}]', 0);

-- The order's history up to the moment, and its status then and now.
SELECT version, type, data, recorded_at
FROM eventstore.read_stream('order-77')
WHERE recorded_at <= :'bug_at';

SELECT (SELECT type FROM eventstore.read_stream('order-77') WHERE recorded_at <= :'bug_at'
        ORDER BY version DESC LIMIT 1) AS status_then,
       (SELECT type FROM eventstore.read_stream('order-77', 0, 1000)
        ORDER BY version DESC LIMIT 1) AS status_now;

-- The user's name then: fold the stream's name-setting events up to the moment.
SELECT data->>'fullName' AS full_name_then
FROM eventstore.read_stream('user-grace')
WHERE recorded_at <= :'bug_at' AND type IN ('user-created', 'user-renamed')
ORDER BY version DESC LIMIT 1;

-- The global position of that moment: `eventstore replay shop --schema asof --position P`
-- rebuilds the read models exactly as the daemon had them once it had applied P.
SELECT max(position) AS bug_position
FROM eventstore.events
WHERE recorded_at <= :'bug_at' \gset
SELECT count(*) AS events_then FROM eventstore.read_all(0, 1000) WHERE position <= :bug_position;

SET walkthrough.bug_at = :'bug_at';
DO $$
BEGIN
    ASSERT (SELECT type FROM eventstore.read_stream('order-77')
            WHERE recorded_at <= current_setting('walkthrough.bug_at')::timestamptz
            ORDER BY version DESC LIMIT 1) = 'order-paid', 'paid, not yet shipped, at the moment';
    ASSERT (SELECT data->>'fullName' FROM eventstore.read_stream('user-grace')
            WHERE recorded_at <= current_setting('walkthrough.bug_at')::timestamptz
            ORDER BY version DESC LIMIT 1) = 'Grace Hopper', 'not yet renamed at the moment';
    ASSERT eventstore.stream_version('order-77') = 2;
END
$$;
