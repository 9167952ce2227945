-- The coffee shop of the seed article: one stream per aggregate (`customer-helen`,
-- `customer-bruno`, one `coffeeorder-<n>` per order), and the state of an order as of a time.
CREATE EXTENSION IF NOT EXISTS pg_eventstore;

SELECT * FROM eventstore.append('customer-helen',
    '[{"type": "customer-registered", "data": {"name": "Helen"}}]', eventstore.no_stream());
SELECT * FROM eventstore.append('customer-bruno',
    '[{"type": "customer-registered", "data": {"name": "Bruno"}}]', eventstore.no_stream());

SELECT * FROM eventstore.append('coffeeorder-123',
    '[{"type": "coffee-ordered", "data": {"customer": "helen", "size": "large", "extras": ["cream"], "sugar": false}}]',
    eventstore.no_stream());
SELECT * FROM eventstore.append('coffeeorder-123',
    '[{"type": "coffee-order-paid", "data": {"amount": 3.20}}]', 0);
SELECT * FROM eventstore.append('coffeeorder-123',
    '[{"type": "coffee-prepared", "data": {"barista": "bruno"}}]', 1);

-- What is the coffee order? Fold its events.
SELECT stream,
       max(data->>'size') FILTER (WHERE type = 'coffee-ordered') AS size,
       bool_or(type = 'coffee-order-paid') AS paid,
       bool_or(type = 'coffee-prepared') AS prepared,
       max(version) AS version
FROM eventstore.read_stream('coffeeorder-123')
GROUP BY stream;

-- As of a moment: only the events recorded up to then. Here, as of the payment.
SELECT string_agg(type, ', ' ORDER BY version) AS history_as_of_payment
FROM eventstore.read_stream('coffeeorder-123')
WHERE recorded_at <= (SELECT recorded_at FROM eventstore.read_stream('coffeeorder-123')
                      WHERE type = 'coffee-order-paid');

-- Every customer: the `customer` category of the global log.
SELECT stream, data->>'name' AS name FROM eventstore.read_category('customer');

-- (The test suite runs this file; these checks make it fail loudly if the story breaks.)
DO $$
BEGIN
    ASSERT eventstore.stream_version('coffeeorder-123') = 2, 'three events in the order';
    ASSERT (SELECT count(*) FROM eventstore.read_category('customer')) = 2, 'two customers';
    ASSERT (SELECT count(*) FROM eventstore.read_stream('coffeeorder-123')
            WHERE recorded_at <= (SELECT recorded_at FROM eventstore.read_stream('coffeeorder-123')
                                  WHERE type = 'coffee-order-paid')) = 2, 'two events as of payment';
END
$$;
