//! The shop's business rules, as plain code over in-memory state: the projection applies
//! them to the rows a batch touches, the pipeline decides commands with the same order
//! state machine, and the tests below need no database.
//!
//! Events are facts: one that makes no sense for the state it meets changes nothing and is
//! reported as an anomaly with its reason (the projection records it in `shop.anomalies`).
//! - A user is identified by the stream `user-<username>`. A second `user-created`, and
//!   `user-renamed` / `user-deactivated` of an unknown user, are anomalies; deactivating an
//!   inactive user too.
//! - An order is identified by the stream `order-<order_id>`. `order-placed` by a user with
//!   no `user-created` before it is rejected (anomaly), and so are the later events of that
//!   order (unknown order). Orders of deactivated users are recorded and counted.
//! - An order goes placed → paid → shipped, and may be cancelled while placed or paid (a
//!   paid order is refunded: its amount leaves the user's total). See [`OrderStatus::after`].
//! - `order_count` is the number of the user's orders that are not cancelled; `total_spent`
//!   the sum of the amounts paid on them.

use foldhash::HashMap;
use std::fmt;

use chrono::{DateTime, Utc};

use crate::events::{Money, ShopEvent};

/// Where an order is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Placed, not paid.
    Placed,
    /// Paid, not shipped.
    Paid,
    /// Shipped: final.
    Shipped,
    /// Cancelled (refunded if it was paid): final.
    Cancelled,
}

/// What can happen to a placed order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OrderChange {
    /// `order-paid`.
    Pay,
    /// `order-shipped`.
    Ship,
    /// `order-cancelled`.
    Cancel,
}

/// A change the order's status does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The order's status.
    pub status: OrderStatus,
    /// The change refused.
    pub change: OrderChange,
}

impl OrderStatus {
    /// The status after `change`: placed → paid → shipped, cancelled from placed or paid.
    pub fn after(self, change: OrderChange) -> Result<OrderStatus, Refusal> {
        use OrderChange::*;
        use OrderStatus::*;
        match (self, change) {
            (Placed, Pay) => Ok(Paid),
            (Paid, Ship) => Ok(Shipped),
            (Placed | Paid, Cancel) => Ok(Cancelled),
            (status, change) => Err(Refusal { status, change }),
        }
    }

    /// The name stored in `shop.orders.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Paid => "paid",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The status named `text` (as stored).
    pub fn parse(text: &str) -> Option<OrderStatus> {
        Some(match text {
            "placed" => OrderStatus::Placed,
            "paid" => OrderStatus::Paid,
            "shipped" => OrderStatus::Shipped,
            "cancelled" => OrderStatus::Cancelled,
            _ => return None,
        })
    }
}

impl Refusal {
    /// Whether the change may only be early: shipping an order whose payment may still be
    /// on its way. Every other refusal is final, whatever comes later.
    pub fn may_be_early(&self) -> bool {
        self.status == OrderStatus::Placed && self.change == OrderChange::Ship
    }

    /// The reason, naming the order.
    pub fn describe(&self, order_id: &str) -> String {
        use OrderChange::*;
        use OrderStatus::*;
        match (self.change, self.status) {
            (Pay, Cancelled) => format!("payment for cancelled order {order_id}; to be refunded"),
            (Pay, _) => format!("order {order_id} is already paid"),
            (Ship, Placed) => format!("order {order_id} shipped before it was paid"),
            (Ship, Shipped) => format!("order {order_id} already shipped"),
            (Ship, _) => format!("order {order_id} shipped after it was cancelled"),
            (Cancel, Shipped) => format!("order {order_id} is shipped and cannot be cancelled"),
            (Cancel, _) => format!("order {order_id} is already cancelled"),
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user, as `shop.users` holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    /// Full name.
    pub full_name: String,
    /// Not deactivated.
    pub active: bool,
    /// When the account was opened.
    pub created_at: DateTime<Utc>,
    /// When an event last changed the row.
    pub updated_at: DateTime<Utc>,
    /// Orders that are not cancelled.
    pub order_count: i32,
    /// Amounts paid on those orders.
    pub total_spent: Money,
}

/// An order, as `shop.orders` holds it (but for its items).
#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    /// Who placed it.
    pub username: String,
    /// Where it is.
    pub status: OrderStatus,
    /// Sum of quantities.
    pub item_count: i32,
    /// Sum of quantity × price.
    pub total: Money,
    /// The prices' currency.
    pub currency: String,
    /// When it was placed.
    pub placed_at: DateTime<Utc>,
    /// When it was paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it was shipped.
    pub shipped_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// The version of its stream last applied.
    pub version: i64,
    /// The amount paid.
    pub amount_paid: Option<Money>,
    /// How it was paid.
    pub payment_method: Option<String>,
    /// Who ships it.
    pub carrier: Option<String>,
    /// The carrier's tracking number.
    pub tracking_number: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
}

/// The entities an event changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// The user whose row changed.
    pub user: Option<String>,
    /// The order whose row changed.
    pub order: Option<String>,
}

/// The users and orders that events are applied to: the rows a batch touches, or the whole
/// shop.
#[derive(Clone, Debug, Default)]
pub struct Shop {
    /// By username.
    pub users: HashMap<String, User>,
    /// By order id.
    pub orders: HashMap<String, Order>,
}

impl Shop {
    /// Applies `event`, recorded at `at` as version `version` of its stream. An event that
    /// makes no sense for the state it meets changes nothing: `Err` gives the reason.
    pub fn apply(
        &mut self,
        event: &ShopEvent,
        at: DateTime<Utc>,
        version: i64,
    ) -> Result<Touched, String> {
        let user = |name: &str| Touched {
            user: Some(name.to_owned()),
            order: None,
        };
        match event {
            ShopEvent::UserCreated(username, created) => {
                if self.users.contains_key(username) {
                    return Err(format!("user {username} already exists"));
                }
                self.users.insert(
                    username.clone(),
                    User {
                        full_name: created.full_name.clone(),
                        active: true,
                        created_at: created.opened_at.unwrap_or(at),
                        updated_at: at,
                        order_count: 0,
                        total_spent: Money::ZERO,
                    },
                );
                Ok(user(username))
            }
            ShopEvent::UserRenamed(username, renamed) => {
                let found = self.users.get_mut(username);
                let found = found.ok_or_else(|| format!("unknown user {username}"))?;
                found.full_name = renamed.full_name.clone();
                found.updated_at = at;
                Ok(user(username))
            }
            ShopEvent::UserDeactivated(username) => {
                let found = self.users.get_mut(username);
                let found = found.ok_or_else(|| format!("unknown user {username}"))?;
                if !found.active {
                    return Err(format!("user {username} is already deactivated"));
                }
                found.active = false;
                found.updated_at = at;
                Ok(user(username))
            }
            ShopEvent::OrderPlaced(order_id, placed) => {
                if self.orders.contains_key(order_id) {
                    return Err(format!("order {order_id} was already placed"));
                }
                let username = &placed.username;
                let Some(owner) = self.users.get_mut(username) else {
                    return Err(format!(
                        "order {order_id} placed by unknown user {username}; rejected"
                    ));
                };
                let item_count = i32::try_from(placed.item_count())
                    .map_err(|_| format!("order {order_id} has too many items"))?;
                owner.order_count += 1;
                owner.updated_at = at;
                self.orders.insert(
                    order_id.clone(),
                    Order {
                        username: username.clone(),
                        status: OrderStatus::Placed,
                        item_count,
                        total: placed.total(),
                        currency: placed.currency.clone(),
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
                    },
                );
                Ok(Touched {
                    user: Some(username.clone()),
                    order: Some(order_id.clone()),
                })
            }
            ShopEvent::OrderPaid(order_id, paid) => {
                let order = self.change(order_id, OrderChange::Pay, version)?;
                order.paid_at = Some(at);
                order.amount_paid = Some(paid.amount);
                order.payment_method = paid.method.clone();
                let username = order.username.clone();
                Ok(self.touch_owner(order_id, username, at, |owner| {
                    owner.total_spent += paid.amount;
                }))
            }
            ShopEvent::OrderShipped(order_id, shipped) => {
                let order = self.change(order_id, OrderChange::Ship, version)?;
                order.shipped_at = Some(at);
                order.carrier = shipped.carrier.clone();
                order.tracking_number = shipped.tracking_number.clone();
                Ok(Touched {
                    user: None,
                    order: Some(order_id.clone()),
                })
            }
            ShopEvent::OrderCancelled(order_id, cancelled) => {
                let refund = self
                    .orders
                    .get(order_id)
                    .filter(|order| order.status == OrderStatus::Paid)
                    .and_then(|order| order.amount_paid)
                    .unwrap_or_default();
                let order = self.change(order_id, OrderChange::Cancel, version)?;
                order.cancelled_at = Some(at);
                order.cancel_reason = cancelled.reason.clone();
                let username = order.username.clone();
                Ok(self.touch_owner(order_id, username, at, |owner| {
                    owner.order_count -= 1;
                    owner.total_spent -= refund;
                }))
            }
        }
    }

    /// Moves an order through `change`, or says why it cannot.
    fn change(
        &mut self,
        order_id: &str,
        change: OrderChange,
        version: i64,
    ) -> Result<&mut Order, String> {
        let order = self.orders.get_mut(order_id);
        let order = order.ok_or_else(|| format!("unknown order {order_id}"))?;
        order.status = order
            .status
            .after(change)
            .map_err(|refusal| refusal.describe(order_id))?;
        order.version = version;
        Ok(order)
    }

    /// Changes the order's owner (loaded with it) and reports both touched.
    fn touch_owner(
        &mut self,
        order_id: &str,
        username: String,
        at: DateTime<Utc>,
        change: impl FnOnce(&mut User),
    ) -> Touched {
        let user = self.users.get_mut(&username).map(|owner| {
            change(owner);
            owner.updated_at = at;
        });
        Touched {
            user: user.map(|()| username),
            order: Some(order_id.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{
        Item, OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, UserCreated, UserRenamed,
    };
    use chrono::TimeZone;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, second).unwrap()
    }

    fn money(text: &str) -> Money {
        text.parse().unwrap()
    }

    fn created(name: &str) -> ShopEvent {
        ShopEvent::UserCreated(
            name.into(),
            UserCreated {
                username: name.into(),
                full_name: name.to_uppercase(),
                opened_at: None,
            },
        )
    }

    fn placed(order: &str, user: &str, price: &str, qty: u32) -> ShopEvent {
        ShopEvent::OrderPlaced(
            order.into(),
            OrderPlaced {
                username: user.into(),
                items: vec![Item {
                    sku: "x".into(),
                    qty,
                    price: money(price),
                }],
                currency: "EUR".into(),
            },
        )
    }

    fn paid(order: &str, amount: &str) -> ShopEvent {
        ShopEvent::OrderPaid(
            order.into(),
            OrderPaid {
                amount: money(amount),
                method: None,
            },
        )
    }

    fn shipped(order: &str) -> ShopEvent {
        ShopEvent::OrderShipped(order.into(), OrderShipped::default())
    }

    fn cancelled(order: &str) -> ShopEvent {
        ShopEvent::OrderCancelled(order.into(), OrderCancelled::default())
    }

    /// Applies `events` in order; returns the anomalies' reasons.
    fn run(shop: &mut Shop, events: &[ShopEvent]) -> Vec<String> {
        let mut anomalies = Vec::new();
        for (second, event) in events.iter().enumerate() {
            if let Err(reason) = shop.apply(event, at(second as u32), 0) {
                anomalies.push(reason);
            }
        }
        anomalies
    }

    #[test]
    fn the_order_state_machine() {
        use OrderChange::*;
        use OrderStatus::*;
        let allowed = [
            (Placed, Pay, Paid),
            (Paid, Ship, Shipped),
            (Placed, Cancel, Cancelled),
            (Paid, Cancel, Cancelled),
        ];
        for status in [Placed, Paid, Shipped, Cancelled] {
            for change in [Pay, Ship, Cancel] {
                let expected = allowed
                    .iter()
                    .find(|(from, by, _)| *from == status && *by == change)
                    .map(|(_, _, to)| *to);
                match (status.after(change), expected) {
                    (Ok(to), Some(expected)) => assert_eq!(to, expected),
                    (Err(refusal), None) => {
                        assert_eq!(refusal, Refusal { status, change });
                        assert_eq!(refusal.may_be_early(), (status, change) == (Placed, Ship));
                    }
                    (got, expected) => {
                        panic!("{status} + {change:?}: {got:?}, expected {expected:?}")
                    }
                }
            }
        }
        for status in [Placed, Paid, Shipped, Cancelled] {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
        }
    }

    #[test]
    fn a_paid_then_cancelled_order_is_refunded_and_uncounted() {
        let mut shop = Shop::default();
        let anomalies = run(
            &mut shop,
            &[
                created("ada"),
                placed("1", "ada", "2.50", 3),
                placed("2", "ada", "0.10", 1),
                paid("1", "7.50"),
                paid("2", "0.10"),
                cancelled("1"),
                shipped("2"),
            ],
        );
        assert!(anomalies.is_empty(), "{anomalies:?}");
        let ada = &shop.users["ada"];
        assert_eq!(ada.order_count, 1);
        assert_eq!(ada.total_spent, money("0.1"));
        assert_eq!(shop.orders["1"].status, OrderStatus::Cancelled);
        assert_eq!(shop.orders["1"].total, money("7.5"));
        assert_eq!(shop.orders["2"].status, OrderStatus::Shipped);
        assert_eq!(ada.updated_at, at(5), "the cancellation touched ada last");
    }

    #[test]
    fn nonsense_changes_nothing_and_says_why() {
        let mut shop = Shop::default();
        let anomalies = run(
            &mut shop,
            &[
                created("ada"),
                created("ada"),
                ShopEvent::UserRenamed(
                    "carol".into(),
                    UserRenamed {
                        full_name: "C".into(),
                    },
                ),
                ShopEvent::UserDeactivated("ada".into()),
                ShopEvent::UserDeactivated("ada".into()),
                placed("9", "ghost", "1", 1),
                paid("9", "1"),
                placed("1", "ada", "5", 1),
                placed("1", "ada", "5", 1),
                shipped("1"),
                cancelled("1"),
                paid("1", "5"),
                cancelled("1"),
            ],
        );
        assert_eq!(
            anomalies,
            [
                "user ada already exists",
                "unknown user carol",
                "user ada is already deactivated",
                "order 9 placed by unknown user ghost; rejected",
                "unknown order 9",
                "order 1 was already placed",
                "order 1 shipped before it was paid",
                "payment for cancelled order 1; to be refunded",
                "order 1 is already cancelled",
            ]
        );
        let ada = &shop.users["ada"];
        assert!(!ada.active, "a deactivated user keeps ordering");
        assert_eq!(ada.order_count, 0);
        assert_eq!(ada.total_spent, Money::ZERO);
        assert_eq!(shop.orders.len(), 1);
    }

    #[test]
    fn a_shipped_order_cannot_be_cancelled_or_paid_again() {
        let mut shop = Shop::default();
        let anomalies = run(
            &mut shop,
            &[
                created("bob"),
                placed("7", "bob", "3", 2),
                paid("7", "6"),
                shipped("7"),
                shipped("7"),
                paid("7", "6"),
                cancelled("7"),
            ],
        );
        assert_eq!(
            anomalies,
            [
                "order 7 already shipped",
                "order 7 is already paid",
                "order 7 is shipped and cannot be cancelled",
            ]
        );
        assert_eq!(shop.users["bob"].total_spent, money("6"));
        assert_eq!(shop.users["bob"].order_count, 1);
    }
}
