-- Competing consumers from psql: the seeds' processing component scales with a persistent
-- subscription group. Two workers share the input messages; a failing message is retried,
-- then parked; an invalid one is parked at once; a worker that dies loses its leases.
CREATE EXTENSION IF NOT EXISTS pg_eventstore;

SELECT eventstore.create_group('shop-processing',
    event_types => ARRAY['ShopDataReceived'], max_attempts => 2, lease_timeout => '5 seconds');

-- The gateway stores five raw messages on the input stream.
SELECT eventstore.append('shop-input', jsonb_agg(jsonb_build_object(
           'type', 'ShopDataReceived',
           'data', jsonb_build_object('orderId', 'o' || n),
           'metadata', jsonb_build_object('Applies', 'PlaceOrder', 'Source', 'web'))))
FROM generate_series(1, 5) AS n;

-- Worker 1 takes two, worker 2 the rest; each event is leased to one of them.
SELECT position, data->>'orderId' AS order_id, attempt FROM eventstore.fetch('shop-processing', 'worker-1', 2);
SELECT array_agg(position) AS w2 FROM eventstore.fetch('shop-processing', 'worker-2', 100) \gset
SELECT * FROM eventstore.groups;

-- Worker 2 handles its three: o3 and o4 succeed, o5 fails and is retried after a second.
SELECT eventstore.ack('shop-processing', 'worker-2', (:'w2'::bigint[])[1:2]);
SELECT eventstore.nack('shop-processing', 'worker-2', (:'w2'::bigint[])[3:3], '0 seconds', 'payment service down');
-- Worker 1 cannot ack what worker 2 holds: nothing happens.
SELECT eventstore.ack('shop-processing', 'worker-1', :'w2'::bigint[]) AS acked_by_the_wrong_worker;

-- Worker 1 dies without acking. After its lease runs out, worker 2 gets its events again
-- (attempt 2), together with the retry of o5.
SELECT pg_sleep(5.1);
SELECT position, data->>'orderId' AS order_id, attempt FROM eventstore.fetch('shop-processing', 'worker-2', 100);

-- One is invalid, parked at once; o5 fails again and, out of attempts, is parked; the rest
-- is handled.
SELECT eventstore.park('shop-processing', 'worker-2',
    ARRAY(SELECT position FROM eventstore.read_stream('shop-input') WHERE data->>'orderId' = 'o1'),
    'o1: items are missing');
SELECT eventstore.nack('shop-processing', 'worker-2', (:'w2'::bigint[])[3:3], '0 seconds', 'payment service still down');
SELECT eventstore.ack('shop-processing', 'worker-2',
    ARRAY(SELECT position FROM eventstore.read_stream('shop-input') WHERE data->>'orderId' = 'o2'));

SELECT group_name, in_flight, parked, lag FROM eventstore.groups;
SELECT data->>'orderId' AS order_id, attempt, reason FROM eventstore.parked('shop-processing');

DO $$
BEGIN
    ASSERT (SELECT (in_flight, parked, lag) = (0::bigint, 2::bigint, 0::bigint)
            FROM eventstore.groups WHERE group_name = 'shop-processing');
    ASSERT (SELECT array_agg(reason ORDER BY position) FROM eventstore.parked('shop-processing'))
           = ARRAY['o1: items are missing', 'payment service still down'];
END
$$;

-- Once the payment service is back, the parked o5 is replayed and handled.
SELECT eventstore.replay_parked('shop-processing', (:'w2'::bigint[])[3:3]);
SELECT position, data->>'orderId' AS order_id, attempt FROM eventstore.fetch('shop-processing', 'worker-1', 100);
SELECT eventstore.ack('shop-processing', 'worker-1', (:'w2'::bigint[])[3:3]);
SELECT * FROM eventstore.groups;

DO $$
BEGIN
    ASSERT (SELECT (in_flight, parked, lag) = (0::bigint, 1::bigint, 0::bigint)
            FROM eventstore.groups WHERE group_name = 'shop-processing');
END
$$;
