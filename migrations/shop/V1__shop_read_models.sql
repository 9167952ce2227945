-- The read models of the seed shop, kept current by the shop projection (`eventstore run`);
-- nothing else should write to them. `eventstore rebuild shop` empties them and replays the
-- log from the start. The checkpoints live in the store's own migrations (projections).
--
-- A database set up by release 0.2.0 has these tables already (that release's store
-- migration V2 created them); IF NOT EXISTS adopts them as they are.

CREATE SCHEMA IF NOT EXISTS shop;

COMMENT ON SCHEMA shop IS
    'Read models of the seed shop, kept current by the shop projection.';

CREATE TABLE IF NOT EXISTS shop.users (
    username    text        PRIMARY KEY,
    full_name   text        NOT NULL,
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- The user's orders that are not cancelled.
    order_count integer     NOT NULL DEFAULT 0 CHECK (order_count >= 0),
    -- The amounts paid on those orders (a cancelled paid order is refunded).
    total_spent numeric     NOT NULL DEFAULT 0 CHECK (total_spent >= 0)
);

COMMENT ON TABLE shop.users IS
    'One row per user-created event (stream user-<username>), with the user''s order count and spending.';

CREATE TABLE IF NOT EXISTS shop.orders (
    order_id        text        PRIMARY KEY,
    username        text        NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled')),
    items           jsonb       NOT NULL,
    item_count      integer     NOT NULL CHECK (item_count >= 0),
    total           numeric     NOT NULL CHECK (total >= 0),
    currency        text        NOT NULL,
    placed_at       timestamptz NOT NULL,
    paid_at         timestamptz,
    shipped_at      timestamptz,
    cancelled_at    timestamptz,
    -- The version of the order's stream last applied.
    version         bigint      NOT NULL CHECK (version >= 0),
    amount_paid     numeric,
    payment_method  text,
    carrier         text,
    tracking_number text,
    cancel_reason   text
);

CREATE INDEX IF NOT EXISTS orders_username_idx ON shop.orders (username);

COMMENT ON TABLE shop.orders IS
    'One row per order stream (order-<order_id>): placed -> paid -> shipped, or cancelled before shipping.';

-- Events the shop projection did not apply because they make no sense for the state they
-- arrive in (paying a cancelled order, renaming an unknown user): kept for a person to look
-- at, never silently dropped.
CREATE TABLE IF NOT EXISTS shop.anomalies (
    position    bigint      PRIMARY KEY,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL
);

COMMENT ON TABLE shop.anomalies IS
    'Shop events that were recorded but not applied, and why (see the README''s business rules).';
