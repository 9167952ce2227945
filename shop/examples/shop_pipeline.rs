//! The seeds' shop pipeline, end to end on one database:
//!
//! 1. an input gateway (the seed's `shop-api`) validates each request like the seed does
//!    (`applies`, `source` and `profile` required) and appends it as a raw `ShopDataReceived`
//!    message to the input stream `shop-input`, with `Applies` and `Source` in the metadata;
//! 2. a processing component runs competing workers on the persistent subscription group
//!    `shop-processing`: each message becomes a command on the user or order aggregate,
//!    which is decided against the aggregate's events and appended with the version it was
//!    decided on. Invalid messages are parked at once with the reason; messages that may only
//!    be early (paying an order whose placement is still being processed) are retried with
//!    backoff and parked with the reason when they stay invalid;
//! 3. the projection daemon keeps `shop.users` and `shop.orders` current.
//!
//! Commands are decided with the shop's own order state machine
//! ([`pg_eventstore_shop::rules::OrderStatus`]), the one the projection applies, and money is a
//! decimal throughout.
//!
//! Run: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/shop cargo run -p pg_eventstore_shop --example shop_pipeline`
//! It checks its own outcome and exits non-zero when a read model or parked message differs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use pg_eventstore_client::projection::{Daemon, DaemonOptions};
use pg_eventstore_client::{
    ConsumerOptions, Error, EventData, EventStore, ExpectedVersion, GroupEvent, GroupSettings,
    HandlerError, ReadStreamOptions, RecordedEvent,
};
use pg_eventstore_shop::events::{
    Money, OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, ShopEvent, ShopEventType,
    UserCreated,
};
use pg_eventstore_shop::rules::{OrderChange, OrderStatus};
use pg_eventstore_shop::ShopProjection;
use serde_json::value::RawValue;
use serde_json::Value;

const INPUT: &str = "shop-input";
const GROUP: &str = "shop-processing";

/// A request body as the gateway receives it: JSON text, kept field by field as written, so
/// amounts reach the event as their digits.
type Body = BTreeMap<String, Box<RawValue>>;

/// The gateway: the seed's `requestNotValid` check, then `ShopDataReceived` on the input
/// stream with `applies`, `source` and `profile` moved out of the data.
async fn receive(store: &EventStore, body: &str) -> Result<u64, String> {
    let invalid = || "400 Request body not valid".to_owned();
    let mut body: Body = serde_json::from_str(body).map_err(|_| invalid())?;
    let (Some(applies), Some(source), Some(_profile)) = (
        body.remove("applies"),
        body.remove("source"),
        body.remove("profile"),
    ) else {
        return Err(invalid());
    };
    let field = |raw: Box<RawValue>| -> Result<Value, String> {
        serde_json::from_str(raw.get()).map_err(|_| invalid())
    };
    let message = EventData::new("ShopDataReceived", &body)
        .map_err(|error| format!("400 {error}"))?
        .metadata_field("Applies", field(applies)?)
        .metadata_field("Source", field(source)?);
    store
        .append(INPUT, ExpectedVersion::Any, [message])
        .await
        .map(|appended| appended.last_position)
        .map_err(|error| format!("503 the data has not been stored: {error}"))
}

/// What a message asks of the order or user aggregate.
enum Command {
    RegisterUser(UserCreated),
    PlaceOrder {
        order: String,
        placed: OrderPlaced,
    },
    PayOrder {
        order: String,
        paid: OrderPaid,
    },
    ShipOrder {
        order: String,
        shipped: OrderShipped,
    },
    CancelOrder {
        order: String,
        cancelled: OrderCancelled,
    },
}

fn text(data: &Value, field: &str) -> Result<String, HandlerError> {
    data[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| HandlerError::park(format!("{field} is missing")))
}

/// The message's data as the shop event `T`, decoded from the stored JSON itself (amounts
/// keep their digits); a message that does not decode is parked.
fn shaped<T: serde::de::DeserializeOwned>(
    message: &RecordedEvent,
    what: &str,
) -> Result<T, HandlerError> {
    serde_json::from_str(message.data.get())
        .map_err(|error| HandlerError::park(format!("{what}: {error}")))
}

/// Maps a raw message to a command; a message that can never be one is parked.
fn command(message: &RecordedEvent) -> Result<Command, HandlerError> {
    let metadata: Value = message.decode_metadata()?;
    let data: Value = message.decode()?;
    let applies = metadata["Applies"].as_str().unwrap_or_default();
    let order = || text(&data, "orderId");
    Ok(match applies {
        "RegisterUser" => Command::RegisterUser(UserCreated {
            username: text(&data, "username")?,
            full_name: text(&data, "fullName")?,
            opened_at: None,
        }),
        "PlaceOrder" => {
            let placed: OrderPlaced = shaped(message, "not an order")?;
            if placed.items.is_empty() {
                return Err(HandlerError::park("an order needs items"));
            }
            Command::PlaceOrder {
                order: order()?,
                placed,
            }
        }
        "PayOrder" => {
            let paid: OrderPaid = shaped(message, "not a payment")?;
            if paid.amount <= Money::ZERO {
                return Err(HandlerError::park("amount must be a positive number"));
            }
            Command::PayOrder {
                order: order()?,
                paid,
            }
        }
        "ShipOrder" => Command::ShipOrder {
            order: order()?,
            shipped: OrderShipped {
                carrier: Some(text(&data, "carrier")?),
                tracking_number: Some(text(&data, "trackingNumber")?),
            },
        },
        "CancelOrder" => Command::CancelOrder {
            order: order()?,
            cancelled: OrderCancelled {
                reason: Some(text(&data, "reason")?),
            },
        },
        other => return Err(HandlerError::park(format!("unknown command {other:?}"))),
    })
}

/// The order's status and version, folded from its stream with the shop's rules.
async fn load_order(store: &EventStore, order: &str) -> Result<Option<(OrderStatus, u64)>, Error> {
    let events: Vec<RecordedEvent> = store
        .read_stream(&format!("order-{order}"), ReadStreamOptions::forwards())
        .try_collect()
        .await?;
    let mut state = None;
    for event in &events {
        let change = match ShopEvent::decode(event) {
            Ok(ShopEvent::OrderPlaced(..)) => {
                state = Some((OrderStatus::Placed, event.version));
                continue;
            }
            Ok(ShopEvent::OrderPaid(..)) => OrderChange::Pay,
            Ok(ShopEvent::OrderShipped(..)) => OrderChange::Ship,
            Ok(ShopEvent::OrderCancelled(..)) => OrderChange::Cancel,
            _ => continue,
        };
        if let Some((status, _)) = state {
            // The stream only holds changes this pipeline decided; a refused one is not there.
            let status = status.after(change).unwrap_or(status);
            state = Some((status, event.version));
        }
    }
    Ok(state)
}

/// The version to append `change` at, when the order's status allows it. A refusal that may
/// only be early (or an order not placed yet) is retried: the message it waits for may still
/// be in flight. Any other refusal parks the message with the rules' reason.
async fn decide(store: &EventStore, order: &str, change: OrderChange) -> Result<u64, HandlerError> {
    let Some((status, version)) = load_order(store, order).await? else {
        return Err(HandlerError::Retry(format!("order {order} does not exist")));
    };
    match status.after(change) {
        Ok(_) => Ok(version),
        Err(refusal) if refusal.may_be_early() => Err(HandlerError::Retry(refusal.describe(order))),
        Err(refusal) => Err(HandlerError::park(refusal.describe(order))),
    }
}

/// Decides a command against its aggregate and appends the outcome at the version decided on.
async fn process(store: &EventStore, message: GroupEvent) -> Result<(), HandlerError> {
    let cause = &message.event;
    let (stream, expected, event): (String, ExpectedVersion, EventData) = match command(cause)? {
        Command::RegisterUser(created) => (
            format!("user-{}", created.username),
            ExpectedVersion::NoStream,
            created.to_event_data(),
        ),
        Command::PlaceOrder { order, placed } => {
            let user = format!("user-{}", placed.username);
            if store.stream_version(&user).await?.is_none() {
                // Maybe registered by a message still in flight: retried, parked if not.
                return Err(HandlerError::Retry(format!("{user} does not exist")));
            }
            (
                format!("order-{order}"),
                ExpectedVersion::NoStream,
                placed.to_event_data(),
            )
        }
        Command::PayOrder { order, paid } => {
            let version = decide(store, &order, OrderChange::Pay).await?;
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                paid.to_event_data(),
            )
        }
        Command::ShipOrder { order, shipped } => {
            let version = decide(store, &order, OrderChange::Ship).await?;
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                shipped.to_event_data(),
            )
        }
        Command::CancelOrder { order, cancelled } => {
            let version = decide(store, &order, OrderChange::Cancel).await?;
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                cancelled.to_event_data(),
            )
        }
    };
    match store
        .append(&stream, expected, [event.caused_by(cause)])
        .await
    {
        Ok(_) => Ok(()),
        // A user or order that exists already: the message is a duplicate request.
        Err(Error::WrongExpectedVersion {
            expected: ExpectedVersion::NoStream,
            ..
        }) => Err(HandlerError::park(format!("{stream} exists already"))),
        // Another worker changed the order since it was read: decide again on the retry.
        Err(error) => Err(HandlerError::Retry(error.to_string())),
    }
}

/// A request body of the seed's API: `fields` (JSON object members) plus `applies`,
/// `source` and `profile`.
fn request(applies: &str, fields: &str) -> String {
    format!(
        r#"{{"applies": "{applies}", "source": "web", "profile": {{"channel": "example"}}, {fields}}}"#
    )
}

/// Waits until every message of the group up to `position` is acked or parked.
async fn drained(store: &EventStore, position: u64) -> Result<(), Error> {
    let started = Instant::now();
    loop {
        let group = store.groups().await?.into_iter().find(|g| g.name == GROUP);
        if group.is_some_and(|g| g.position >= position) {
            return Ok(());
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the pipeline is stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the database");
    let store = EventStore::connect(&url).await?;
    pg_eventstore_shop::migrate(&store).await?;
    // Ids of this run, so the example can run again on the same database.
    let run = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
    match store
        .create_group(
            GROUP,
            &GroupSettings::default()
                .event_types(["ShopDataReceived"])
                .from_position(store.head_position().await?)
                .max_attempts(4),
        )
        .await
    {
        Ok(()) | Err(Error::GroupExists(_)) => {}
        Err(error) => return Err(error),
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let daemon = tokio::spawn(
        Daemon::new(store.clone(), DaemonOptions::default())
            .with(ShopProjection)
            .run(stopped(stop_rx.clone())),
    );
    let processing = {
        let worker_store = store.clone();
        store
            .group_consumer(
                GROUP,
                ConsumerOptions::default()
                    .workers(3)
                    .batch_size(10)
                    .retry_backoff(Duration::from_millis(50), Duration::from_millis(400)),
            )
            .run(
                move |message| {
                    let store = worker_store.clone();
                    async move { process(&store, message).await }
                },
                stopped(stop_rx.clone()),
            )
    };
    let processing = tokio::spawn(processing);

    let order = |n: u32| format!("{run}x{n}");
    let users = [("ada", "Ada Lovelace"), ("grace", "Grace Hopper")];
    let price: Money = "2.5".parse().expect("a decimal");
    // A customer's steps arrive over time: each phase is handled before the next comes in,
    // so no message waits for one still in flight, and what is parked does not depend on
    // how fast the workers are.
    let mut phases: Vec<Vec<String>> = vec![Vec::new(); 5];
    for (name, full_name) in users {
        phases[0].push(request(
            "RegisterUser",
            &format!(r#""username": "{name}{run}", "fullName": "{full_name}""#),
        ));
    }
    for n in 1..=6 {
        let username = format!("{}{run}", users[n as usize % 2].0);
        phases[1].push(request(
            "PlaceOrder",
            &format!(
                r#""orderId": "{}", "username": "{username}", "currency": "EUR",
                   "items": [{{"sku": "espresso", "qty": {n}, "price": {price}}}]"#,
                order(n)
            ),
        ));
    }
    for n in 1..=4 {
        phases[2].push(request(
            "PayOrder",
            &format!(
                r#""orderId": "{}", "amount": {}, "method": "card""#,
                order(n),
                price.times(n)
            ),
        ));
    }
    for n in 1..=2 {
        phases[3].push(request(
            "ShipOrder",
            &format!(
                r#""orderId": "{}", "carrier": "DHL", "trackingNumber": "TRACK{n}""#,
                order(n)
            ),
        ));
    }
    phases[3].push(request(
        "CancelOrder",
        &format!(r#""orderId": "{}", "reason": "changed my mind""#, order(3)),
    ));
    phases[3].push(request(
        "CancelOrder",
        &format!(r#""orderId": "{}", "reason": "too slow""#, order(5)),
    ));
    // Invalid requests: each is parked with its reason (or refused by the gateway).
    phases[4].extend([
        request(
            "CancelOrder",
            &format!(r#""orderId": "{}", "reason": "late""#, order(1)),
        ),
        request("RefundOrder", &format!(r#""orderId": "{}""#, order(2))),
        request(
            "PayOrder",
            &format!(
                r#""orderId": "{}", "amount": -5, "method": "card""#,
                order(6)
            ),
        ),
        request(
            "ShipOrder",
            &format!(
                r#""orderId": "{}", "carrier": "DHL", "trackingNumber": "X""#,
                order(6)
            ),
        ),
        request(
            "PlaceOrder",
            &format!(
                r#""orderId": "{}", "username": "mallory{run}", "currency": "EUR",
                   "items": [{{"sku": "tea", "qty": 1, "price": 3}}]"#,
                order(7)
            ),
        ),
        request(
            "PayOrder",
            &format!(
                r#""orderId": "{}", "amount": 5, "method": "card""#,
                order(5)
            ),
        ),
        request(
            "RegisterUser",
            &format!(r#""username": "ada{run}", "fullName": "Ada again""#),
        ),
    ]);
    let refused = receive(
        &store,
        &format!(r#"{{"applies": "PayOrder", "orderId": "{}"}}"#, order(4)),
    )
    .await;
    println!("gateway: a request without source and profile -> {refused:?}");
    assert!(refused.is_err());

    for (phase, requests) in phases.into_iter().enumerate() {
        let count = requests.len();
        let mut last = 0;
        for body in requests {
            last = receive(&store, &body)
                .await
                .expect("the gateway stores the message");
        }
        drained(&store, last).await?;
        println!("phase {}: {count} messages processed", phase + 1);
    }

    // The read model follows: wait until the daemon applied the last order event.
    let last_order_event: i64 = sqlx::query_scalar(
        "SELECT max(position) FROM eventstore.events WHERE stream LIKE 'order-' || $1 || '%'",
    )
    .bind(&run)
    .fetch_one(store.pool())
    .await?;
    let started = Instant::now();
    while sqlx::query_scalar::<_, i64>(
        "SELECT position FROM projections.checkpoints WHERE name = 'shop'",
    )
    .fetch_optional(store.pool())
    .await?
    .unwrap_or(0)
        < last_order_event
    {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the projection is stuck"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let orders: Vec<(String, String, String, Option<rust_decimal::Decimal>)> = sqlx::query_as(
        "SELECT order_id, username, status, amount_paid FROM shop.orders \
         WHERE order_id LIKE $1 || '%' ORDER BY order_id",
    )
    .bind(&run)
    .fetch_all(store.pool())
    .await?;
    println!("\nshop.orders:");
    for (id, user, status, paid) in &orders {
        println!("  {id:<16} {user:<16} {status:<10} paid {paid:?}");
    }
    let statuses: BTreeMap<String, &str> = orders
        .iter()
        .map(|(id, _, status, _)| (id.clone(), status.as_str()))
        .collect();
    let expected: BTreeMap<String, &str> = [
        (1, "shipped"),
        (2, "shipped"),
        (3, "cancelled"),
        (4, "paid"),
        (5, "cancelled"),
        (6, "placed"),
    ]
    .into_iter()
    .map(|(n, status)| (order(n), status))
    .collect();
    assert_eq!(
        statuses, expected,
        "shop.orders follows the processed commands"
    );

    let parked = store.parked(GROUP).await?;
    let mut reasons: Vec<String> = parked
        .iter()
        .filter(|p| p.event.data.get().contains(&run))
        .map(|p| p.reason.clone().unwrap_or_default().replace(&run, "…"))
        .collect();
    reasons.sort();
    println!("\nparked messages:");
    for reason in &reasons {
        println!("  {reason}");
    }
    let mut expected_reasons = [
        "amount must be a positive number",
        "order …x1 is shipped and cannot be cancelled",
        "payment for cancelled order …x5; to be refunded",
        "order …x6 shipped before it was paid",
        "unknown command \"RefundOrder\"",
        "user-ada… exists already",
        "user-mallory… does not exist",
    ];
    expected_reasons.sort_unstable();
    assert_eq!(reasons, expected_reasons);

    stop_tx.send_replace(true);
    let stats = processing.await.expect("the consumer task")?;
    daemon.await.expect("the daemon task")?;
    println!(
        "\nworkers: {} handled, {} retried, {} parked at once",
        stats.handled, stats.nacked, stats.parked
    );
    Ok(())
}
