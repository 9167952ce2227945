-- The read models of the seed shop and the checkpoints of the projections that fill them.
-- The projection daemon (`eventstore run`) keeps these tables current; nothing else should
-- write to them. `eventstore rebuild shop` empties them and replays the log from the start.

CREATE SCHEMA IF NOT EXISTS projections;

COMMENT ON SCHEMA projections IS
    'Checkpoints of the projections run by the eventstore daemon.';

-- One row per projection. `position` moves in the same transaction as the projection's
-- read-model writes, so each event's effect lands exactly once.
CREATE TABLE projections.checkpoints (
    name            text        PRIMARY KEY,
    position        bigint      NOT NULL DEFAULT 0 CHECK (position >= 0),
    -- Events applied since the projection started from zero (the last rebuild).
    events_applied  bigint      NOT NULL DEFAULT 0 CHECK (events_applied >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The daemon that runs the projection now (informational; an advisory lock decides).
    owner           text,
    owner_since     timestamptz,
    -- Set while the projection is stopped at an event it cannot apply; cleared when it
    -- applies that event.
    failed_position bigint,
    failed_stream   text,
    failed_version  bigint,
    failed_type     text,
    failed_event_id uuid,
    error           text,
    failed_at       timestamptz,
    failures        integer     NOT NULL DEFAULT 0
);

COMMENT ON TABLE projections.checkpoints IS
    'Per projection: the global position applied up to, its owner, and the event it is stopped at, if any.';

CREATE SCHEMA IF NOT EXISTS shop;

COMMENT ON SCHEMA shop IS
    'Read models of the seed shop, kept current by the shop projection.';

CREATE TABLE shop.users (
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

CREATE TABLE shop.orders (
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

CREATE INDEX orders_username_idx ON shop.orders (username);

COMMENT ON TABLE shop.orders IS
    'One row per order stream (order-<order_id>): placed -> paid -> shipped, or cancelled before shipping.';

-- Events the shop projection did not apply because they make no sense for the state they
-- arrive in (paying a cancelled order, renaming an unknown user): kept for a person to look
-- at, never silently dropped.
CREATE TABLE shop.anomalies (
    position    bigint      PRIMARY KEY,
    stream      text        NOT NULL,
    version     bigint      NOT NULL,
    type        text        NOT NULL,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL
);

COMMENT ON TABLE shop.anomalies IS
    'Shop events that were recorded but not applied, and why (see the README''s business rules).';
