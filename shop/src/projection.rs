//! [`ShopProjection`]: `shop.users`, `shop.orders` and `shop.anomalies`, in one projection
//! so both tables move together.
//!
//! Events are folded into a [`ShopState`]: the rows they touch are loaded (unless held
//! already), the events are applied to them in memory with the business rules (in global
//! order), and the changed rows are written back with one `INSERT ... SELECT FROM
//! unnest(...)` or `UPDATE ... FROM unnest(...)` per table. A batch is one fold and one
//! write; a daemon that is catching up folds many pages into one state and writes it once
//! in a while, so a row that many events change is written once per write.

use foldhash::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use pg_eventstore_client::projection::{
    quote_ident, ApplyError, Projection, ProjectionState, StateChanges, Stored,
};
use pg_eventstore_client::RecordedEvent;
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use crate::events::{Money, NotShopEvent, ShopEvent, EVENT_TYPES};
use crate::rules::{Order, OrderStatus, Shop, User};

/// Keeps `shop.users`, `shop.orders` and `shop.anomalies` current. Its name is `shop`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShopProjection;

impl Projection for ShopProjection {
    fn name(&self) -> &str {
        "shop"
    }

    fn event_types(&self) -> Vec<String> {
        EVENT_TYPES.iter().map(|t| (*t).to_owned()).collect()
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
        Box::pin(async move {
            let mut state = ShopState::default();
            state
                .fold_events(Stored::In(&mut *tx), schema, events)
                .await?;
            state.write_rows(tx, schema).await
        })
    }

    fn state(&self) -> Option<Box<dyn ProjectionState>> {
        Some(Box::<ShopState>::default())
    }
}

/// An event the rules did not apply, and why.
struct Anomaly {
    position: i64,
    stream: String,
    version: i64,
    event_type: String,
    reason: String,
    recorded_at: DateTime<Utc>,
}

impl Anomaly {
    fn of(event: &RecordedEvent, reason: String) -> Result<Anomaly, ApplyError> {
        Ok(Anomaly {
            position: i64::try_from(event.position)?,
            stream: event.stream.clone(),
            version: i64::try_from(event.version)?,
            event_type: event.event_type.clone(),
            reason,
            recorded_at: event.recorded_at,
        })
    }
}

/// Rows in memory: those events touched, which of them are stored, and what changed since
/// the last write.
#[derive(Default)]
pub struct ShopState {
    shop: Shop,
    stored_users: HashSet<String>,
    stored_orders: HashSet<String>,
    dirty_users: HashSet<String>,
    dirty_orders: HashSet<String>,
    /// The items of the orders placed since the last write, as JSON (the others keep theirs).
    items: HashMap<String, String>,
    anomalies: Vec<Anomaly>,
}

impl ProjectionState for ShopState {
    fn fold<'a>(
        &'a mut self,
        stored: Stored<'a>,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(self.fold_events(stored, schema, events))
    }

    fn rows(&self) -> usize {
        self.shop.users.len() + self.shop.orders.len()
    }

    fn changed(&self) -> usize {
        self.dirty_users.len() + self.dirty_orders.len() + self.anomalies.len()
    }

    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(self.write_rows(tx, schema))
    }

    fn take_changes(&mut self) -> Option<Box<dyn StateChanges>> {
        Some(Box::new(self.changes()))
    }
}

impl StateChanges for ShopChanges {
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin((*self).write(tx, schema))
    }
}

impl ShopState {
    async fn fold_events(
        &mut self,
        stored: Stored<'_>,
        schema: &str,
        events: &[RecordedEvent],
    ) -> Result<(), ApplyError> {
        // Rows to read from the tables: none when they hold nothing this state does not.
        let loading = matches!(stored, Stored::In(_));
        let mut changes = Vec::with_capacity(events.len());
        let mut order_ids = HashSet::default();
        let mut usernames = HashSet::default();
        for event in events {
            match ShopEvent::decode(event) {
                Ok(change) => {
                    let (user, order) = match &change {
                        ShopEvent::UserCreated(username, _)
                        | ShopEvent::UserRenamed(username, _)
                        | ShopEvent::UserDeactivated(username) => (Some(username), None),
                        ShopEvent::OrderPlaced(order_id, placed) => {
                            (Some(&placed.username), Some(order_id))
                        }
                        ShopEvent::OrderPaid(order_id, _)
                        | ShopEvent::OrderShipped(order_id, _)
                        | ShopEvent::OrderCancelled(order_id, _) => (None, Some(order_id)),
                    };
                    if loading {
                        if let Some(order_id) = order {
                            match self.shop.orders.get(order_id) {
                                // The owner of an order held is needed too (held since, or
                                // missing from the tables).
                                Some(held) if !self.shop.users.contains_key(&held.username) => {
                                    usernames.insert(held.username.clone());
                                }
                                Some(_) => {}
                                None => {
                                    order_ids.insert(order_id.clone());
                                }
                            }
                        }
                        if let Some(username) = user.filter(|u| !self.shop.users.contains_key(*u)) {
                            usernames.insert(username.clone());
                        }
                    }
                    changes.push((event, change));
                }
                Err(NotShopEvent::Outside(reason)) => {
                    self.anomalies.push(Anomaly::of(event, reason)?);
                }
                Err(NotShopEvent::Malformed(reason)) => return Err(reason.into()),
            }
        }
        if let Stored::In(connection) = stored {
            let owners = self.load_orders(connection, schema, order_ids).await?;
            usernames.extend(
                owners
                    .into_iter()
                    .filter(|owner| !self.shop.users.contains_key(owner)),
            );
            self.load_users(connection, schema, usernames).await?;
        }
        for (event, change) in changes {
            let version = i64::try_from(event.version)?;
            match self.shop.apply(&change, event.recorded_at, version) {
                Ok(touched) => {
                    if let ShopEvent::OrderPlaced(order_id, placed) = &change {
                        self.items
                            .insert(order_id.clone(), serde_json::to_string(&placed.items)?);
                    }
                    self.dirty_users.extend(touched.user);
                    self.dirty_orders.extend(touched.order);
                }
                Err(reason) => self.anomalies.push(Anomaly::of(event, reason)?),
            }
        }
        Ok(())
    }

    async fn write_rows(&mut self, tx: &mut PgConnection, schema: &str) -> Result<(), ApplyError> {
        self.changes().write(tx, schema).await
    }

    /// Takes the changed rows out, as columns to write; from here on they count as stored
    /// (a failed write discards the whole state).
    fn changes(&mut self) -> ShopChanges {
        let mut changes = ShopChanges::default();
        for username in self.dirty_users.drain() {
            let user = &self.shop.users[&username];
            if self.stored_users.contains(&username) {
                changes.changed_users.push(&username, user);
            } else {
                changes.new_users.push(&username, user);
                self.stored_users.insert(username);
            }
        }
        for order_id in self.dirty_orders.drain() {
            let order = &self.shop.orders[&order_id];
            if self.stored_orders.contains(&order_id) {
                changes.changed_orders.push(&order_id, order, String::new());
            } else {
                let items = self.items.remove(&order_id).unwrap_or_default();
                changes.new_orders.push(&order_id, order, items);
                self.stored_orders.insert(order_id);
            }
        }
        self.items.clear();
        changes.anomalies = std::mem::take(&mut self.anomalies);
        changes
    }

    /// Loads the orders of `ids` that exist; returns their owners.
    async fn load_orders(
        &mut self,
        tx: &mut PgConnection,
        schema: &str,
        ids: HashSet<String>,
    ) -> Result<Vec<String>, ApplyError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let schema = quote_ident(schema);
        let ids: Vec<String> = ids.into_iter().collect();
        let rows = sqlx::query(&format!(
            "SELECT order_id, username, status, item_count, total, currency, placed_at, paid_at, \
                shipped_at, cancelled_at, version, amount_paid, payment_method, carrier, \
                tracking_number, cancel_reason \
         FROM {schema}.orders WHERE order_id = ANY($1)"
        ))
        .persistent(false)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        let mut owners = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get("status")?;
            let order_id: String = row.try_get("order_id")?;
            let order = Order {
                username: row.try_get("username")?,
                status: OrderStatus::parse(&status)
                    .ok_or_else(|| format!("shop.orders holds an unknown status {status:?}"))?,
                item_count: row.try_get("item_count")?,
                total: Money(row.try_get("total")?),
                currency: row.try_get("currency")?,
                placed_at: row.try_get("placed_at")?,
                paid_at: row.try_get("paid_at")?,
                shipped_at: row.try_get("shipped_at")?,
                cancelled_at: row.try_get("cancelled_at")?,
                version: row.try_get("version")?,
                amount_paid: money(row.try_get("amount_paid")?),
                payment_method: row.try_get("payment_method")?,
                carrier: row.try_get("carrier")?,
                tracking_number: row.try_get("tracking_number")?,
                cancel_reason: row.try_get("cancel_reason")?,
            };
            owners.push(order.username.clone());
            self.stored_orders.insert(order_id.clone());
            self.shop.orders.insert(order_id, order);
        }
        Ok(owners)
    }

    async fn load_users(
        &mut self,
        tx: &mut PgConnection,
        schema: &str,
        usernames: HashSet<String>,
    ) -> Result<(), ApplyError> {
        if usernames.is_empty() {
            return Ok(());
        }
        let schema = quote_ident(schema);
        let usernames: Vec<String> = usernames.into_iter().collect();
        let rows = sqlx::query(&format!(
            "SELECT username, full_name, active, created_at, updated_at, order_count, total_spent \
         FROM {schema}.users WHERE username = ANY($1)"
        ))
        .persistent(false)
        .bind(&usernames)
        .fetch_all(&mut *tx)
        .await?;
        for row in rows {
            let username: String = row.try_get("username")?;
            let user = User {
                full_name: row.try_get("full_name")?,
                active: row.try_get("active")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
                order_count: row.try_get("order_count")?,
                total_spent: Money(row.try_get("total_spent")?),
            };
            self.stored_users.insert(username.clone());
            self.shop.users.insert(username, user);
        }
        Ok(())
    }
}

fn money(value: Option<Decimal>) -> Option<Money> {
    value.map(Money)
}

// The loads and updates are planned for each call (`persistent(false)`): a plan kept from
// when the tables were empty (after a rebuild, or on a first start) scans them whole: with
// thousands of keys per call, a load took 441 ms instead of 1.2 ms once the orders were in,
// and a catch-up from zero of 270,000 events 31 s instead of 9.

/// The rows changed since a state's last write, as columns for `unnest`: owned, so they
/// can be written while the state folds on.
#[derive(Default)]
struct ShopChanges {
    new_users: UserColumns,
    changed_users: UserColumns,
    new_orders: OrderColumns,
    changed_orders: OrderColumns,
    anomalies: Vec<Anomaly>,
}

impl ShopChanges {
    async fn write(self, tx: &mut PgConnection, schema: &str) -> Result<(), ApplyError> {
        let schema = quote_ident(schema);
        write_users(tx, &schema, &self.new_users, &self.changed_users).await?;
        write_orders(tx, &schema, &self.new_orders, &self.changed_orders).await?;
        write_anomalies(tx, &schema, &self.anomalies).await
    }
}

/// Users as columns, for `unnest`.
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
        self.total_spent.push(user.total_spent.0);
    }
}

async fn write_users(
    tx: &mut PgConnection,
    schema: &str,
    new: &UserColumns,
    changed: &UserColumns,
) -> Result<(), ApplyError> {
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
        .persistent(false)
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

/// Orders as columns, for `unnest`.
#[derive(Default)]
struct OrderColumns {
    order_id: Vec<String>,
    username: Vec<String>,
    status: Vec<&'static str>,
    /// As JSON, of new orders only (the others keep theirs).
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
    fn push(&mut self, order_id: &str, order: &Order, items: String) {
        self.order_id.push(order_id.to_owned());
        self.username.push(order.username.clone());
        self.status.push(order.status.as_str());
        self.items.push(items);
        self.item_count.push(order.item_count);
        self.total.push(order.total.0);
        self.currency.push(order.currency.clone());
        self.placed_at.push(order.placed_at);
        self.paid_at.push(order.paid_at);
        self.shipped_at.push(order.shipped_at);
        self.cancelled_at.push(order.cancelled_at);
        self.version.push(order.version);
        self.amount_paid.push(order.amount_paid.map(|m| m.0));
        self.payment_method.push(order.payment_method.clone());
        self.carrier.push(order.carrier.clone());
        self.tracking_number.push(order.tracking_number.clone());
        self.cancel_reason.push(order.cancel_reason.clone());
    }
}

async fn write_orders(
    tx: &mut PgConnection,
    schema: &str,
    new: &OrderColumns,
    changed: &OrderColumns,
) -> Result<(), ApplyError> {
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
        .persistent(false)
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
    anomalies: &[Anomaly],
) -> Result<(), ApplyError> {
    if anomalies.is_empty() {
        return Ok(());
    }
    let mut position = Vec::new();
    let mut stream = Vec::new();
    let mut version = Vec::new();
    let mut event_type = Vec::new();
    let mut reason = Vec::new();
    let mut recorded_at = Vec::new();
    for anomaly in anomalies {
        position.push(anomaly.position);
        stream.push(anomaly.stream.as_str());
        version.push(anomaly.version);
        event_type.push(anomaly.event_type.as_str());
        reason.push(anomaly.reason.as_str());
        recorded_at.push(anomaly.recorded_at);
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
