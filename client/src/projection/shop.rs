//! The seed shop's read models: `shop.users` and `shop.orders`, from the user and order
//! streams, in one projection so both tables move together.
//!
//! A batch is applied in a handful of statements whatever its size: the rows it touches are
//! loaded, the events are applied to them in memory, in global order, and the changed rows
//! are written back with one `INSERT ... SELECT FROM unnest(...)` or `UPDATE ... FROM
//! unnest(...)` per table.
//!
//! Business rules (events are facts; one that makes no sense for the state it meets is not
//! applied, and is recorded in `shop.anomalies` with the reason):
//! - A user is identified by the stream `user-<username>`. A second `user-created`, and
//!   `user-renamed` / `user-deactivated` of an unknown user, are anomalies; deactivating an
//!   inactive user too.
//! - An order is identified by the stream `order-<order_id>`. `order-placed` by a user with
//!   no `user-created` before it is rejected (anomaly), and so are the later events of that
//!   order (unknown order). Orders of deactivated users are recorded and counted.
//! - An order goes placed → paid → shipped, and may be cancelled while placed or paid (a
//!   paid order is refunded: its amount leaves the user's total). Paying an order that is
//!   not placed, shipping one that is not paid, cancelling a shipped or cancelled order are
//!   anomalies.
//! - `users.order_count` is the number of the user's orders that are not cancelled;
//!   `users.total_spent` the sum of the amounts paid on them.
//! - Events whose data does not have the documented shape (a missing field, a negative
//!   quantity or price) are not business anomalies but defects: the projection stops at
//!   them with an error, until the projection is fixed.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Number;
use sqlx::{PgConnection, Row};

use super::{quote_ident, ApplyError, Projection};
use crate::RecordedEvent;

/// The event types of the seed domain.
pub const SHOP_EVENT_TYPES: [&str; 7] = [
    "user-created",
    "user-renamed",
    "user-deactivated",
    "order-placed",
    "order-paid",
    "order-shipped",
    "order-cancelled",
];

/// Keeps `shop.users`, `shop.orders` and `shop.anomalies` current. Its name is `shop`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShopProjection;

impl Projection for ShopProjection {
    fn name(&self) -> &str {
        "shop"
    }

    fn event_types(&self) -> Vec<String> {
        SHOP_EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect()
    }

    fn schema(&self) -> &str {
        "shop"
    }

    fn tables(&self) -> Vec<String> {
        vec!["users".into(), "orders".into(), "anomalies".into()]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(apply(tx, schema, events))
    }
}

#[derive(Deserialize)]
struct UserCreated {
    #[serde(rename = "fullName")]
    full_name: String,
    #[serde(rename = "openedAt", default)]
    opened_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct UserRenamed {
    #[serde(rename = "fullName")]
    full_name: String,
}

#[derive(Deserialize)]
struct OrderPlaced {
    username: String,
    items: Box<RawValue>,
    currency: String,
}

#[derive(Deserialize)]
struct Item {
    #[allow(dead_code)]
    sku: String,
    qty: u32,
    price: Number,
}

#[derive(Deserialize)]
struct OrderPaid {
    amount: Number,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
struct OrderShipped {
    #[serde(default)]
    carrier: Option<String>,
    #[serde(rename = "trackingNumber", default)]
    tracking_number: Option<String>,
}

#[derive(Deserialize)]
struct OrderCancelled {
    #[serde(default)]
    reason: Option<String>,
}

/// An event of the shop, decoded.
enum Change {
    UserCreated {
        username: String,
        full_name: String,
        opened_at: Option<DateTime<Utc>>,
    },
    UserRenamed {
        username: String,
        full_name: String,
    },
    UserDeactivated {
        username: String,
    },
    OrderPlaced {
        order_id: String,
        username: String,
        items: String,
        item_count: i32,
        total: Decimal,
        currency: String,
    },
    OrderPaid {
        order_id: String,
        amount: Decimal,
        method: Option<String>,
    },
    OrderShipped {
        order_id: String,
        carrier: Option<String>,
        tracking_number: Option<String>,
    },
    OrderCancelled {
        order_id: String,
        reason: Option<String>,
    },
}

fn money(what: &str, number: &Number) -> Result<Decimal, ApplyError> {
    let text = number.to_string();
    let value = if text.contains(['e', 'E']) {
        Decimal::from_scientific(&text)
    } else {
        Decimal::from_str(&text)
    }
    .map_err(|error| format!("{what} {text} is not a decimal amount: {error}"))?;
    if value.is_sign_negative() {
        return Err(format!("{what} {text} is negative").into());
    }
    Ok(value)
}

fn data<'a, T: Deserialize<'a>>(event: &'a RecordedEvent) -> Result<T, ApplyError> {
    serde_json::from_str(event.data.get())
        .map_err(|error| format!("{} data does not decode: {error}", event.event_type).into())
}

/// Decodes an event; `Ok(Err(reason))` is an event that belongs to no shop entity.
fn decode(event: &RecordedEvent) -> Result<Result<Change, String>, ApplyError> {
    let user = event.stream.strip_prefix("user-").filter(|u| !u.is_empty());
    let order = event
        .stream
        .strip_prefix("order-")
        .filter(|o| !o.is_empty());
    let outside = |kind: &str| Ok(Err(format!("{kind} event outside a {kind}-<id> stream")));
    let change = match event.event_type.as_str() {
        "user-created" | "user-renamed" | "user-deactivated" => {
            let Some(username) = user.map(str::to_owned) else {
                return outside("user");
            };
            match event.event_type.as_str() {
                "user-created" => {
                    let created: UserCreated = data(event)?;
                    Change::UserCreated {
                        username,
                        full_name: created.full_name,
                        opened_at: created.opened_at,
                    }
                }
                "user-renamed" => Change::UserRenamed {
                    username,
                    full_name: data::<UserRenamed>(event)?.full_name,
                },
                _ => Change::UserDeactivated { username },
            }
        }
        "order-placed" | "order-paid" | "order-shipped" | "order-cancelled" => {
            let Some(order_id) = order.map(str::to_owned) else {
                return outside("order");
            };
            match event.event_type.as_str() {
                "order-placed" => {
                    let placed: OrderPlaced = data(event)?;
                    let items: Vec<Item> = serde_json::from_str(placed.items.get())
                        .map_err(|error| format!("order-placed items do not decode: {error}"))?;
                    let mut item_count: i64 = 0;
                    let mut total = Decimal::ZERO;
                    for item in &items {
                        item_count += i64::from(item.qty);
                        total += money("price", &item.price)? * Decimal::from(item.qty);
                    }
                    Change::OrderPlaced {
                        order_id,
                        username: placed.username,
                        items: placed.items.get().to_owned(),
                        item_count: i32::try_from(item_count)
                            .map_err(|_| format!("order of {item_count} items is too large"))?,
                        total,
                        currency: placed.currency,
                    }
                }
                "order-paid" => {
                    let paid: OrderPaid = data(event)?;
                    Change::OrderPaid {
                        order_id,
                        amount: money("amount", &paid.amount)?,
                        method: paid.method,
                    }
                }
                "order-shipped" => {
                    let shipped: OrderShipped = data(event)?;
                    Change::OrderShipped {
                        order_id,
                        carrier: shipped.carrier,
                        tracking_number: shipped.tracking_number,
                    }
                }
                _ => Change::OrderCancelled {
                    order_id,
                    reason: data::<OrderCancelled>(event)?.reason,
                },
            }
        }
        other => return Ok(Err(format!("not a shop event type: {other}"))),
    };
    Ok(Ok(change))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Status {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Placed => "placed",
            Status::Paid => "paid",
            Status::Shipped => "shipped",
            Status::Cancelled => "cancelled",
        }
    }

    fn parse(text: &str) -> Result<Status, ApplyError> {
        Ok(match text {
            "placed" => Status::Placed,
            "paid" => Status::Paid,
            "shipped" => Status::Shipped,
            "cancelled" => Status::Cancelled,
            other => return Err(format!("shop.orders holds an unknown status {other:?}").into()),
        })
    }
}

struct User {
    full_name: String,
    active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    order_count: i32,
    total_spent: Decimal,
    new: bool,
    dirty: bool,
}

struct Order {
    username: String,
    status: Status,
    /// Only for orders placed in this batch: the others keep theirs.
    items: String,
    item_count: i32,
    total: Decimal,
    currency: String,
    placed_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    version: i64,
    amount_paid: Option<Decimal>,
    payment_method: Option<String>,
    carrier: Option<String>,
    tracking_number: Option<String>,
    cancel_reason: Option<String>,
    new: bool,
    dirty: bool,
}

struct Anomaly<'e> {
    event: &'e RecordedEvent,
    reason: String,
}

/// The rows a batch touches, changed in memory.
#[derive(Default)]
struct State<'e> {
    users: HashMap<String, User>,
    orders: HashMap<String, Order>,
    anomalies: Vec<Anomaly<'e>>,
}

impl<'e> State<'e> {
    fn anomaly(&mut self, event: &'e RecordedEvent, reason: String) {
        self.anomalies.push(Anomaly { event, reason });
    }

    fn touch_user(&mut self, username: &str, at: DateTime<Utc>, change: impl FnOnce(&mut User)) {
        if let Some(user) = self.users.get_mut(username) {
            change(user);
            user.updated_at = at;
            user.dirty = true;
        }
    }

    fn apply(&mut self, event: &'e RecordedEvent, change: Change) {
        let at = event.recorded_at;
        let version = i64::try_from(event.version).unwrap_or(i64::MAX);
        match change {
            Change::UserCreated {
                username,
                full_name,
                opened_at,
            } => {
                if self.users.contains_key(&username) {
                    return self.anomaly(event, format!("user {username} already exists"));
                }
                self.users.insert(
                    username,
                    User {
                        full_name,
                        active: true,
                        created_at: opened_at.unwrap_or(at),
                        updated_at: at,
                        order_count: 0,
                        total_spent: Decimal::ZERO,
                        new: true,
                        dirty: true,
                    },
                );
            }
            Change::UserRenamed {
                username,
                full_name,
            } => {
                if !self.users.contains_key(&username) {
                    return self.anomaly(event, format!("unknown user {username}"));
                }
                self.touch_user(&username, at, |user| user.full_name = full_name);
            }
            Change::UserDeactivated { username } => match self.users.get(&username) {
                None => self.anomaly(event, format!("unknown user {username}")),
                Some(user) if !user.active => {
                    self.anomaly(event, format!("user {username} is already deactivated"));
                }
                Some(_) => self.touch_user(&username, at, |user| user.active = false),
            },
            Change::OrderPlaced {
                order_id,
                username,
                items,
                item_count,
                total,
                currency,
            } => {
                if self.orders.contains_key(&order_id) {
                    return self.anomaly(event, format!("order {order_id} was already placed"));
                }
                if !self.users.contains_key(&username) {
                    return self.anomaly(
                        event,
                        format!("order {order_id} placed by unknown user {username}; rejected"),
                    );
                }
                self.touch_user(&username, at, |user| user.order_count += 1);
                self.orders.insert(
                    order_id,
                    Order {
                        username,
                        status: Status::Placed,
                        items,
                        item_count,
                        total,
                        currency,
                        placed_at: at,
                        paid_at: None,
                        shipped_at: None,
                        cancelled_at: None,
                        version,
                        amount_paid: None,
                        payment_method: None,
                        carrier: None,
                        tracking_number: None,
                        cancel_reason: None,
                        new: true,
                        dirty: true,
                    },
                );
            }
            Change::OrderPaid {
                order_id,
                amount,
                method,
            } => {
                let Some(order) = self.orders.get_mut(&order_id) else {
                    return self.anomaly(event, format!("unknown order {order_id}"));
                };
                match order.status {
                    Status::Placed => {
                        order.status = Status::Paid;
                        order.paid_at = Some(at);
                        order.amount_paid = Some(amount);
                        order.payment_method = method;
                        order.version = version;
                        order.dirty = true;
                        let username = order.username.clone();
                        self.touch_user(&username, at, |user| user.total_spent += amount);
                    }
                    Status::Paid | Status::Shipped => {
                        self.anomaly(event, format!("order {order_id} is already paid"));
                    }
                    Status::Cancelled => self.anomaly(
                        event,
                        format!("payment for cancelled order {order_id}; to be refunded"),
                    ),
                }
            }
            Change::OrderShipped {
                order_id,
                carrier,
                tracking_number,
            } => {
                let Some(order) = self.orders.get_mut(&order_id) else {
                    return self.anomaly(event, format!("unknown order {order_id}"));
                };
                let reason = match order.status {
                    Status::Paid => {
                        order.status = Status::Shipped;
                        order.shipped_at = Some(at);
                        order.carrier = carrier;
                        order.tracking_number = tracking_number;
                        order.version = version;
                        order.dirty = true;
                        return;
                    }
                    Status::Placed => "shipped before it was paid",
                    Status::Shipped => "already shipped",
                    Status::Cancelled => "shipped after it was cancelled",
                };
                self.anomaly(event, format!("order {order_id} {reason}"));
            }
            Change::OrderCancelled { order_id, reason } => {
                let Some(order) = self.orders.get_mut(&order_id) else {
                    return self.anomaly(event, format!("unknown order {order_id}"));
                };
                match order.status {
                    Status::Placed | Status::Paid => {
                        let refund = if order.status == Status::Paid {
                            order.amount_paid.unwrap_or_default()
                        } else {
                            Decimal::ZERO
                        };
                        order.status = Status::Cancelled;
                        order.cancelled_at = Some(at);
                        order.cancel_reason = reason;
                        order.version = version;
                        order.dirty = true;
                        let username = order.username.clone();
                        self.touch_user(&username, at, |user| {
                            user.order_count -= 1;
                            user.total_spent -= refund;
                        });
                    }
                    Status::Shipped => self.anomaly(
                        event,
                        format!("order {order_id} is shipped and cannot be cancelled"),
                    ),
                    Status::Cancelled => {
                        self.anomaly(event, format!("order {order_id} is already cancelled"));
                    }
                }
            }
        }
    }
}

async fn apply(
    tx: &mut PgConnection,
    schema: &str,
    events: &[RecordedEvent],
) -> Result<(), ApplyError> {
    let schema = quote_ident(schema);
    let mut state = State::default();
    let mut changes = Vec::with_capacity(events.len());
    let mut order_ids = HashSet::new();
    let mut usernames = HashSet::new();
    for event in events {
        match decode(event)? {
            Ok(change) => {
                match &change {
                    Change::UserCreated { username, .. }
                    | Change::UserRenamed { username, .. }
                    | Change::UserDeactivated { username } => {
                        usernames.insert(username.clone());
                    }
                    Change::OrderPlaced {
                        order_id, username, ..
                    } => {
                        order_ids.insert(order_id.clone());
                        usernames.insert(username.clone());
                    }
                    Change::OrderPaid { order_id, .. }
                    | Change::OrderShipped { order_id, .. }
                    | Change::OrderCancelled { order_id, .. } => {
                        order_ids.insert(order_id.clone());
                    }
                }
                changes.push((event, change));
            }
            Err(reason) => state.anomaly(event, reason),
        }
    }
    load_orders(tx, &schema, order_ids, &mut state).await?;
    usernames.extend(state.orders.values().map(|order| order.username.clone()));
    load_users(tx, &schema, usernames, &mut state).await?;
    for (event, change) in changes {
        state.apply(event, change);
    }
    write_users(tx, &schema, &state).await?;
    write_orders(tx, &schema, &state).await?;
    write_anomalies(tx, &schema, &state).await?;
    Ok(())
}

async fn load_orders(
    tx: &mut PgConnection,
    schema: &str,
    ids: HashSet<String>,
    state: &mut State<'_>,
) -> Result<(), ApplyError> {
    if ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = ids.into_iter().collect();
    let rows = sqlx::query(&format!(
        "SELECT order_id, username, status, item_count, total, currency, placed_at, paid_at, \
                shipped_at, cancelled_at, version, amount_paid, payment_method, carrier, \
                tracking_number, cancel_reason \
         FROM {schema}.orders WHERE order_id = ANY($1)"
    ))
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        let status: String = row.try_get("status")?;
        state.orders.insert(
            row.try_get("order_id")?,
            Order {
                username: row.try_get("username")?,
                status: Status::parse(&status)?,
                items: String::new(),
                item_count: row.try_get("item_count")?,
                total: row.try_get("total")?,
                currency: row.try_get("currency")?,
                placed_at: row.try_get("placed_at")?,
                paid_at: row.try_get("paid_at")?,
                shipped_at: row.try_get("shipped_at")?,
                cancelled_at: row.try_get("cancelled_at")?,
                version: row.try_get("version")?,
                amount_paid: row.try_get("amount_paid")?,
                payment_method: row.try_get("payment_method")?,
                carrier: row.try_get("carrier")?,
                tracking_number: row.try_get("tracking_number")?,
                cancel_reason: row.try_get("cancel_reason")?,
                new: false,
                dirty: false,
            },
        );
    }
    Ok(())
}

async fn load_users(
    tx: &mut PgConnection,
    schema: &str,
    usernames: HashSet<String>,
    state: &mut State<'_>,
) -> Result<(), ApplyError> {
    if usernames.is_empty() {
        return Ok(());
    }
    let usernames: Vec<String> = usernames.into_iter().collect();
    let rows = sqlx::query(&format!(
        "SELECT username, full_name, active, created_at, updated_at, order_count, total_spent \
         FROM {schema}.users WHERE username = ANY($1)"
    ))
    .bind(&usernames)
    .fetch_all(&mut *tx)
    .await?;
    for row in rows {
        state.users.insert(
            row.try_get("username")?,
            User {
                full_name: row.try_get("full_name")?,
                active: row.try_get("active")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                order_count: row.try_get("order_count")?,
                total_spent: row.try_get("total_spent")?,
                new: false,
                dirty: false,
            },
        );
    }
    Ok(())
}

/// The changed users as columns, for `unnest`.
#[derive(Default)]
struct UserColumns {
    username: Vec<String>,
    full_name: Vec<String>,
    active: Vec<bool>,
    created_at: Vec<DateTime<Utc>>,
    updated_at: Vec<DateTime<Utc>>,
    order_count: Vec<i32>,
    total_spent: Vec<Decimal>,
}

impl UserColumns {
    fn push(&mut self, username: &str, user: &User) {
        self.username.push(username.to_owned());
        self.full_name.push(user.full_name.clone());
        self.active.push(user.active);
        self.created_at.push(user.created_at);
        self.updated_at.push(user.updated_at);
        self.order_count.push(user.order_count);
        self.total_spent.push(user.total_spent);
    }
}

async fn write_users(
    tx: &mut PgConnection,
    schema: &str,
    state: &State<'_>,
) -> Result<(), ApplyError> {
    let mut new = UserColumns::default();
    let mut changed = UserColumns::default();
    for (username, user) in state.users.iter().filter(|(_, user)| user.dirty) {
        if user.new {
            new.push(username, user);
        } else {
            changed.push(username, user);
        }
    }
    if !new.username.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO {schema}.users \
                 (username, full_name, active, created_at, updated_at, order_count, total_spent) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[], \
                                  $5::timestamptz[], $6::int4[], $7::numeric[])"
        ))
        .bind(&new.username)
        .bind(&new.full_name)
        .bind(&new.active)
        .bind(&new.created_at)
        .bind(&new.updated_at)
        .bind(&new.order_count)
        .bind(&new.total_spent)
        .execute(&mut *tx)
        .await?;
    }
    if !changed.username.is_empty() {
        sqlx::query(&format!(
            "UPDATE {schema}.users AS u \
             SET full_name = v.full_name, active = v.active, updated_at = v.updated_at, \
                 order_count = v.order_count, total_spent = v.total_spent \
             FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[], $5::int4[], \
                         $6::numeric[]) \
                  AS v(username, full_name, active, updated_at, order_count, total_spent) \
             WHERE u.username = v.username"
        ))
        .bind(&changed.username)
        .bind(&changed.full_name)
        .bind(&changed.active)
        .bind(&changed.updated_at)
        .bind(&changed.order_count)
        .bind(&changed.total_spent)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The changed orders as columns, for `unnest`.
#[derive(Default)]
struct OrderColumns {
    order_id: Vec<String>,
    username: Vec<String>,
    status: Vec<&'static str>,
    items: Vec<String>,
    item_count: Vec<i32>,
    total: Vec<Decimal>,
    currency: Vec<String>,
    placed_at: Vec<DateTime<Utc>>,
    paid_at: Vec<Option<DateTime<Utc>>>,
    shipped_at: Vec<Option<DateTime<Utc>>>,
    cancelled_at: Vec<Option<DateTime<Utc>>>,
    version: Vec<i64>,
    amount_paid: Vec<Option<Decimal>>,
    payment_method: Vec<Option<String>>,
    carrier: Vec<Option<String>>,
    tracking_number: Vec<Option<String>>,
    cancel_reason: Vec<Option<String>>,
}

impl OrderColumns {
    fn push(&mut self, order_id: &str, order: &Order) {
        self.order_id.push(order_id.to_owned());
        self.username.push(order.username.clone());
        self.status.push(order.status.as_str());
        self.items.push(order.items.clone());
        self.item_count.push(order.item_count);
        self.total.push(order.total);
        self.currency.push(order.currency.clone());
        self.placed_at.push(order.placed_at);
        self.paid_at.push(order.paid_at);
        self.shipped_at.push(order.shipped_at);
        self.cancelled_at.push(order.cancelled_at);
        self.version.push(order.version);
        self.amount_paid.push(order.amount_paid);
        self.payment_method.push(order.payment_method.clone());
        self.carrier.push(order.carrier.clone());
        self.tracking_number.push(order.tracking_number.clone());
        self.cancel_reason.push(order.cancel_reason.clone());
    }
}

async fn write_orders(
    tx: &mut PgConnection,
    schema: &str,
    state: &State<'_>,
) -> Result<(), ApplyError> {
    let mut new = OrderColumns::default();
    let mut changed = OrderColumns::default();
    for (order_id, order) in state.orders.iter().filter(|(_, order)| order.dirty) {
        if order.new {
            new.push(order_id, order);
        } else {
            changed.push(order_id, order);
        }
    }
    if !new.order_id.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO {schema}.orders \
                 (order_id, username, status, items, item_count, total, currency, placed_at, \
                  paid_at, shipped_at, cancelled_at, version, amount_paid, payment_method, \
                  carrier, tracking_number, cancel_reason) \
             SELECT order_id, username, status, items::jsonb, item_count, total, currency, \
                    placed_at, paid_at, shipped_at, cancelled_at, version, amount_paid, \
                    payment_method, carrier, tracking_number, cancel_reason \
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], \
                         $6::numeric[], $7::text[], $8::timestamptz[], $9::timestamptz[], \
                         $10::timestamptz[], $11::timestamptz[], $12::int8[], $13::numeric[], \
                         $14::text[], $15::text[], $16::text[], $17::text[]) \
                  AS v(order_id, username, status, items, item_count, total, currency, \
                       placed_at, paid_at, shipped_at, cancelled_at, version, amount_paid, \
                       payment_method, carrier, tracking_number, cancel_reason)"
        ))
        .bind(&new.order_id)
        .bind(&new.username)
        .bind(&new.status)
        .bind(&new.items)
        .bind(&new.item_count)
        .bind(&new.total)
        .bind(&new.currency)
        .bind(&new.placed_at)
        .bind(&new.paid_at)
        .bind(&new.shipped_at)
        .bind(&new.cancelled_at)
        .bind(&new.version)
        .bind(&new.amount_paid)
        .bind(&new.payment_method)
        .bind(&new.carrier)
        .bind(&new.tracking_number)
        .bind(&new.cancel_reason)
        .execute(&mut *tx)
        .await?;
    }
    if !changed.order_id.is_empty() {
        sqlx::query(&format!(
            "UPDATE {schema}.orders AS o \
             SET status = v.status, paid_at = v.paid_at, shipped_at = v.shipped_at, \
                 cancelled_at = v.cancelled_at, version = v.version, \
                 amount_paid = v.amount_paid, payment_method = v.payment_method, \
                 carrier = v.carrier, tracking_number = v.tracking_number, \
                 cancel_reason = v.cancel_reason \
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], \
                         $5::timestamptz[], $6::int8[], $7::numeric[], $8::text[], \
                         $9::text[], $10::text[], $11::text[]) \
                  AS v(order_id, status, paid_at, shipped_at, cancelled_at, version, \
                       amount_paid, payment_method, carrier, tracking_number, cancel_reason) \
             WHERE o.order_id = v.order_id"
        ))
        .bind(&changed.order_id)
        .bind(&changed.status)
        .bind(&changed.paid_at)
        .bind(&changed.shipped_at)
        .bind(&changed.cancelled_at)
        .bind(&changed.version)
        .bind(&changed.amount_paid)
        .bind(&changed.payment_method)
        .bind(&changed.carrier)
        .bind(&changed.tracking_number)
        .bind(&changed.cancel_reason)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

async fn write_anomalies(
    tx: &mut PgConnection,
    schema: &str,
    state: &State<'_>,
) -> Result<(), ApplyError> {
    if state.anomalies.is_empty() {
        return Ok(());
    }
    let mut position = Vec::new();
    let mut stream = Vec::new();
    let mut version = Vec::new();
    let mut event_type = Vec::new();
    let mut reason = Vec::new();
    let mut recorded_at = Vec::new();
    for anomaly in &state.anomalies {
        position.push(i64::try_from(anomaly.event.position).unwrap_or(i64::MAX));
        stream.push(anomaly.event.stream.as_str());
        version.push(i64::try_from(anomaly.event.version).unwrap_or(i64::MAX));
        event_type.push(anomaly.event.event_type.as_str());
        reason.push(anomaly.reason.as_str());
        recorded_at.push(anomaly.event.recorded_at);
    }
    sqlx::query(&format!(
        "INSERT INTO {schema}.anomalies (position, stream, version, type, reason, recorded_at) \
         SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::text[], $5::text[], \
                              $6::timestamptz[]) \
         ON CONFLICT (position) DO NOTHING"
    ))
    .bind(&position)
    .bind(&stream)
    .bind(&version)
    .bind(&event_type)
    .bind(&reason)
    .bind(&recorded_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
