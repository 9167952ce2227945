//! The shop's domain events, as they are stored: one type per event, read and written with
//! serde, so the generator, the pipeline and the projection agree on one shape.
//!
//! Money is a [`Money`] (a decimal) from end to end: it is written into the event's JSON
//! as the number's exact digits and read back from them, never through a float.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use pg_eventstore_client::{EventData, RecordedEvent};
use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The event types of the shop, in the order the README lists them.
pub const EVENT_TYPES: [&str; 7] = [
    UserCreated::TYPE,
    UserRenamed::TYPE,
    UserDeactivated::TYPE,
    OrderPlaced::TYPE,
    OrderPaid::TYPE,
    OrderShipped::TYPE,
    OrderCancelled::TYPE,
];

/// An amount of money, exact: a JSON number in events, `numeric` in the read models.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Money(pub Decimal);

impl Money {
    /// No money.
    pub const ZERO: Money = Money(Decimal::ZERO);

    /// `qty` times this amount.
    pub fn times(self, qty: u32) -> Money {
        Money(self.0 * Decimal::from(qty))
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for Money {
    type Err = rust_decimal::Error;

    /// Decimal digits, optionally with an exponent (`2.40`, `1e2`), as JSON writes numbers.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let value = if text.contains(['e', 'E']) {
            Decimal::from_scientific(text)?
        } else {
            Decimal::from_str(text)?
        };
        Ok(Money(value))
    }
}

impl std::ops::Add for Money {
    type Output = Money;
    fn add(self, other: Money) -> Money {
        Money(self.0 + other.0)
    }
}

impl std::ops::AddAssign for Money {
    fn add_assign(&mut self, other: Money) {
        self.0 += other.0;
    }
}

impl std::ops::SubAssign for Money {
    fn sub_assign(&mut self, other: Money) {
        self.0 -= other.0;
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The digits as a raw JSON number: serde_json writes them as they are.
        let raw = RawValue::from_string(self.0.normalize().to_string()).map_err(|error| {
            serde::ser::Error::custom(format!("{} is not a JSON number: {error}", self.0))
        })?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get().trim();
        if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Err(D::Error::custom(format!("{text} is not a number")));
        }
        text.parse()
            .map_err(|error| D::Error::custom(format!("{text} is not a decimal amount: {error}")))
    }
}

/// `user-created` on `user-<username>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserCreated {
    /// The user's name (also the stream's id).
    pub username: String,
    /// Full name.
    #[serde(rename = "fullName")]
    pub full_name: String,
    /// When the account was opened elsewhere, for imported users.
    #[serde(rename = "openedAt", default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<DateTime<Utc>>,
}

/// `user-renamed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserRenamed {
    /// The new full name.
    #[serde(rename = "fullName")]
    pub full_name: String,
}

/// `user-deactivated`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserDeactivated {}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// The product.
    pub sku: String,
    /// How many.
    pub qty: u32,
    /// The price of one.
    pub price: Money,
}

/// `order-placed` on `order-<order_id>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// Who placed it.
    pub username: String,
    /// What was ordered.
    pub items: Vec<Item>,
    /// The currency of the prices.
    pub currency: String,
}

impl OrderPlaced {
    /// The sum of quantities.
    pub fn item_count(&self) -> u64 {
        self.items.iter().map(|item| u64::from(item.qty)).sum()
    }

    /// The sum of quantity × price.
    pub fn total(&self) -> Money {
        self.items.iter().fold(Money::ZERO, |total, item| {
            total + item.price.times(item.qty)
        })
    }
}

/// `order-paid`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderPaid {
    /// The amount paid.
    pub amount: Money,
    /// How (card, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `order-shipped`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderShipped {
    /// The carrier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<String>,
    /// The carrier's tracking number.
    #[serde(
        rename = "trackingNumber",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tracking_number: Option<String>,
}

/// `order-cancelled`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OrderCancelled {
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A shop event type: its name in the log.
pub trait ShopEventType: Serialize {
    /// The `type` the event is stored with.
    const TYPE: &'static str;

    /// The event, ready to append.
    fn to_event_data(&self) -> EventData {
        EventData::new(Self::TYPE, self).expect("shop events serialize to JSON")
    }
}

macro_rules! event_type {
    ($($event:ident = $name:literal),* $(,)?) => {
        $(impl ShopEventType for $event {
            const TYPE: &'static str = $name;
        })*
    };
}

event_type! {
    UserCreated = "user-created",
    UserRenamed = "user-renamed",
    UserDeactivated = "user-deactivated",
    OrderPlaced = "order-placed",
    OrderPaid = "order-paid",
    OrderShipped = "order-shipped",
    OrderCancelled = "order-cancelled",
}

/// A shop event with the entity its stream names.
#[derive(Clone, Debug, PartialEq)]
pub enum ShopEvent {
    /// On `user-<username>`.
    UserCreated(String, UserCreated),
    /// On `user-<username>`.
    UserRenamed(String, UserRenamed),
    /// On `user-<username>`.
    UserDeactivated(String),
    /// On `order-<order_id>`.
    OrderPlaced(String, OrderPlaced),
    /// On `order-<order_id>`.
    OrderPaid(String, OrderPaid),
    /// On `order-<order_id>`.
    OrderShipped(String, OrderShipped),
    /// On `order-<order_id>`.
    OrderCancelled(String, OrderCancelled),
}

/// Why a recorded event is not a shop event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotShopEvent {
    /// It belongs to no shop entity (a user event outside `user-<id>`, another type): a
    /// business anomaly, recorded with this reason.
    Outside(String),
    /// Its data does not have the documented shape: a defect, on which the projection
    /// stops until it is fixed.
    Malformed(String),
}

impl fmt::Display for NotShopEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotShopEvent::Outside(reason) | NotShopEvent::Malformed(reason) => f.write_str(reason),
        }
    }
}

fn data<T: for<'de> Deserialize<'de>>(event: &RecordedEvent) -> Result<T, NotShopEvent> {
    serde_json::from_str(event.data.get()).map_err(|error| {
        NotShopEvent::Malformed(format!(
            "{} data does not decode: {error}",
            event.event_type
        ))
    })
}

impl ShopEvent {
    /// Decodes a recorded event of the shop.
    pub fn decode(event: &RecordedEvent) -> Result<ShopEvent, NotShopEvent> {
        let id = |prefix: &str| {
            event
                .stream
                .strip_prefix(prefix)
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
        };
        let outside = |kind: &str| {
            NotShopEvent::Outside(format!("{kind} event outside a {kind}-<id> stream"))
        };
        let user = || id("user-").ok_or_else(|| outside("user"));
        let order = || id("order-").ok_or_else(|| outside("order"));
        Ok(match event.event_type.as_str() {
            UserCreated::TYPE => ShopEvent::UserCreated(user()?, data(event)?),
            UserRenamed::TYPE => ShopEvent::UserRenamed(user()?, data(event)?),
            UserDeactivated::TYPE => ShopEvent::UserDeactivated(user()?),
            OrderPlaced::TYPE => {
                let placed: OrderPlaced = data(event)?;
                if let Some(item) = placed.items.iter().find(|item| item.price < Money::ZERO) {
                    return Err(NotShopEvent::Malformed(format!(
                        "order-placed price {} is negative",
                        item.price
                    )));
                }
                ShopEvent::OrderPlaced(order()?, placed)
            }
            OrderPaid::TYPE => {
                let paid: OrderPaid = data(event)?;
                if paid.amount < Money::ZERO {
                    return Err(NotShopEvent::Malformed(format!(
                        "order-paid amount {} is negative",
                        paid.amount
                    )));
                }
                ShopEvent::OrderPaid(order()?, paid)
            }
            OrderShipped::TYPE => ShopEvent::OrderShipped(order()?, data(event)?),
            OrderCancelled::TYPE => ShopEvent::OrderCancelled(order()?, data(event)?),
            other => {
                return Err(NotShopEvent::Outside(format!(
                    "not a shop event type: {other}"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_written_and_read_as_its_digits() {
        let paid = OrderPaid {
            amount: "19.90".parse().unwrap(),
            method: Some("card".into()),
        };
        let json = serde_json::to_string(&paid).unwrap();
        assert_eq!(json, r#"{"amount":19.9,"method":"card"}"#);
        let back: OrderPaid = serde_json::from_str(r#"{"amount": 0.1}"#).unwrap();
        assert_eq!(back.amount.0, Decimal::new(1, 1));
        let many: OrderPaid =
            serde_json::from_str(r#"{"amount": 1234567890123456789.01}"#).unwrap();
        assert_eq!(many.amount.to_string(), "1234567890123456789.01");
        let scientific: OrderPaid = serde_json::from_str(r#"{"amount": 1.5e2}"#).unwrap();
        assert_eq!(scientific.amount.to_string(), "150");
        assert!(serde_json::from_str::<OrderPaid>(r#"{"amount": "12"}"#).is_err());
    }

    #[test]
    fn an_order_totals_its_items_exactly() {
        let placed: OrderPlaced = serde_json::from_str(
            r#"{"username": "ada", "currency": "EUR",
                "items": [{"sku": "a", "qty": 3, "price": 0.1}, {"sku": "b", "qty": 1, "price": 0.2}]}"#,
        )
        .unwrap();
        assert_eq!(placed.item_count(), 4);
        assert_eq!(placed.total().to_string(), "0.5");
    }
}
