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
//! Run: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/shop cargo run -p pg_eventstore_client --example shop_pipeline`
//! It checks its own outcome and exits non-zero when a read model or parked message differs.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use pg_eventstore_client::projection::{Daemon, DaemonOptions, ShopProjection};
use pg_eventstore_client::{
    ConsumerOptions, Error, EventData, EventStore, ExpectedVersion, GroupEvent, GroupSettings,
    HandlerError, ReadStreamOptions, RecordedEvent,
};
use serde_json::{json, Value};

const INPUT: &str = "shop-input";
const GROUP: &str = "shop-processing";

/// The gateway: the seed's `requestNotValid` check, then `ShopDataReceived` on the input
/// stream with `applies`, `source` and `profile` moved out of the data.
async fn receive(store: &EventStore, mut body: Value) -> Result<u64, String> {
    let object = body.as_object_mut().filter(|o| !o.is_empty());
    let Some(object) = object else {
        return Err("400 Request body not valid".to_owned());
    };
    let (Some(applies), Some(source), Some(_profile)) = (
        object.remove("applies"),
        object.remove("source"),
        object.remove("profile"),
    ) else {
        return Err("400 Request body not valid".to_owned());
    };
    let message = EventData::json("ShopDataReceived", body)
        .metadata_field("Applies", applies)
        .metadata_field("Source", source);
    store
        .append(INPUT, ExpectedVersion::Any, [message])
        .await
        .map(|appended| appended.last_position)
        .map_err(|error| format!("503 the data has not been stored: {error}"))
}

/// What a message asks of the order or user aggregate.
enum Command {
    RegisterUser {
        username: String,
        full_name: String,
    },
    PlaceOrder {
        order: String,
        data: Value,
    },
    PayOrder {
        order: String,
        amount: f64,
        method: String,
    },
    ShipOrder {
        order: String,
        data: Value,
    },
    CancelOrder {
        order: String,
        reason: String,
    },
}

fn text(data: &Value, field: &str) -> Result<String, HandlerError> {
    data[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| HandlerError::park(format!("{field} is missing")))
}

/// Maps a raw message to a command; a message that can never be one is parked.
fn command(message: &RecordedEvent) -> Result<Command, HandlerError> {
    let metadata: Value = message.decode_metadata()?;
    let data: Value = message.decode()?;
    let applies = metadata["Applies"].as_str().unwrap_or_default();
    Ok(match applies {
        "RegisterUser" => Command::RegisterUser {
            username: text(&data, "username")?,
            full_name: text(&data, "fullName")?,
        },
        "PlaceOrder" => {
            let items = data["items"].as_array().filter(|items| !items.is_empty());
            if items.is_none() {
                return Err(HandlerError::park("an order needs items"));
            }
            Command::PlaceOrder {
                order: text(&data, "orderId")?,
                data: json!({
                    "username": text(&data, "username")?,
                    "items": data["items"],
                    "currency": text(&data, "currency")?,
                }),
            }
        }
        "PayOrder" => Command::PayOrder {
            order: text(&data, "orderId")?,
            amount: data["amount"]
                .as_f64()
                .filter(|amount| *amount > 0.0)
                .ok_or_else(|| HandlerError::park("amount must be a positive number"))?,
            method: text(&data, "method")?,
        },
        "ShipOrder" => Command::ShipOrder {
            order: text(&data, "orderId")?,
            data: json!({
                "carrier": text(&data, "carrier")?,
                "trackingNumber": text(&data, "trackingNumber")?,
            }),
        },
        "CancelOrder" => Command::CancelOrder {
            order: text(&data, "orderId")?,
            reason: text(&data, "reason")?,
        },
        other => return Err(HandlerError::park(format!("unknown command {other:?}"))),
    })
}

/// An order's state, folded from its stream.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Status {
    Placed,
    Paid,
    Shipped,
    Cancelled,
}

async fn load_order(store: &EventStore, order: &str) -> Result<Option<(Status, u64)>, Error> {
    let events: Vec<RecordedEvent> = store
        .read_stream(&format!("order-{order}"), ReadStreamOptions::forwards())
        .try_collect()
        .await?;
    Ok(events.last().map(|last| {
        let status = events.iter().fold(Status::Placed, |status, event| {
            match event.event_type.as_str() {
                "order-paid" => Status::Paid,
                "order-shipped" => Status::Shipped,
                "order-cancelled" => Status::Cancelled,
                _ => status,
            }
        });
        (status, last.version)
    }))
}

/// Decides a command against its aggregate and appends the outcome at the version decided on.
async fn process(store: &EventStore, message: GroupEvent) -> Result<(), HandlerError> {
    let cause = &message.event;
    let (stream, expected, event) = match command(cause)? {
        Command::RegisterUser {
            username,
            full_name,
        } => (
            format!("user-{username}"),
            ExpectedVersion::NoStream,
            EventData::json(
                "user-created",
                json!({"username": username, "fullName": full_name}),
            ),
        ),
        Command::PlaceOrder { order, data } => {
            let user = format!("user-{}", data["username"].as_str().unwrap_or_default());
            if store.stream_version(&user).await?.is_none() {
                // Maybe registered by a message still in flight: retried, parked if not.
                return Err(HandlerError::Retry(format!("{user} does not exist")));
            }
            (
                format!("order-{order}"),
                ExpectedVersion::NoStream,
                EventData::json("order-placed", data),
            )
        }
        Command::PayOrder {
            order,
            amount,
            method,
        } => {
            let version = require(store, &order, Status::Placed).await?;
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                EventData::json("order-paid", json!({"amount": amount, "method": method})),
            )
        }
        Command::ShipOrder { order, data } => {
            let version = require(store, &order, Status::Paid).await?;
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                EventData::json("order-shipped", data),
            )
        }
        Command::CancelOrder { order, reason } => {
            let version = match load_order(store, &order).await? {
                None => return Err(HandlerError::Retry(format!("order {order} does not exist"))),
                Some((Status::Shipped, _)) => {
                    return Err(HandlerError::park(format!("order {order} is shipped")))
                }
                Some((Status::Cancelled, _)) => {
                    return Err(HandlerError::park(format!("order {order} is cancelled")))
                }
                Some((_, version)) => version,
            };
            (
                format!("order-{order}"),
                ExpectedVersion::Exact(version),
                EventData::json("order-cancelled", json!({"reason": reason})),
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

/// The order's version when it is in `status`; a later state parks the message, an earlier
/// one (or no order) retries it, since the message it waits for may still be in flight.
async fn require(store: &EventStore, order: &str, status: Status) -> Result<u64, HandlerError> {
    match load_order(store, order).await? {
        Some((now, version)) if now == status => Ok(version),
        Some((Status::Placed, _)) => Err(HandlerError::Retry(format!("order {order} is not paid"))),
        Some((now, _)) => Err(HandlerError::park(format!(
            "order {order} is {}",
            format!("{now:?}").to_lowercase()
        ))),
        None => Err(HandlerError::Retry(format!("order {order} does not exist"))),
    }
}

fn request(applies: &str, fields: Value) -> Value {
    let mut body = json!({"applies": applies, "source": "web", "profile": {"channel": "example"}});
    body.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    body
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
            started.elapsed() < Duration::from_secs(60),
            "the pipeline is stuck"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the database");
    let store = EventStore::connect(&url).await?;
    store.migrate().await?;
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
    // A customer's steps arrive over time: each phase is handled before the next comes in.
    let mut phases: Vec<Vec<Value>> = vec![Vec::new(); 4];
    for (name, full_name) in users {
        phases[0].push(request(
            "RegisterUser",
            json!({"username": format!("{name}{run}"), "fullName": full_name}),
        ));
    }
    for n in 1..=6 {
        let username = format!("{}{run}", users[n as usize % 2].0);
        phases[0].push(request(
            "PlaceOrder",
            json!({"orderId": order(n), "username": username,
            "items": [{"sku": "espresso", "qty": n, "price": 2.5}], "currency": "EUR"}),
        ));
    }
    for n in 1..=4 {
        phases[1].push(request(
            "PayOrder",
            json!({"orderId": order(n), "amount": 2.5 * f64::from(n), "method": "card"}),
        ));
    }
    for n in 1..=2 {
        phases[2].push(request(
            "ShipOrder",
            json!({"orderId": order(n), "carrier": "DHL",
            "trackingNumber": format!("TRACK{n}")}),
        ));
    }
    phases[2].push(request(
        "CancelOrder",
        json!({"orderId": order(3), "reason": "changed my mind"}),
    ));
    phases[2].push(request(
        "CancelOrder",
        json!({"orderId": order(5), "reason": "too slow"}),
    ));
    // Invalid requests: each is parked with its reason (or refused by the gateway).
    phases[3].extend([
        request(
            "CancelOrder",
            json!({"orderId": order(1), "reason": "late"}),
        ),
        request("RefundOrder", json!({"orderId": order(2)})),
        request(
            "PayOrder",
            json!({"orderId": order(6), "amount": -5, "method": "card"}),
        ),
        request(
            "ShipOrder",
            json!({"orderId": order(6), "carrier": "DHL", "trackingNumber": "X"}),
        ),
        request(
            "PlaceOrder",
            json!({"orderId": order(7), "username": format!("mallory{run}"),
            "items": [{"sku": "tea", "qty": 1, "price": 3}], "currency": "EUR"}),
        ),
        request(
            "PayOrder",
            json!({"orderId": order(5), "amount": 5, "method": "card"}),
        ),
        request(
            "RegisterUser",
            json!({"username": format!("ada{run}"), "fullName": "Ada again"}),
        ),
    ]);
    let refused = receive(&store, json!({"applies": "PayOrder", "orderId": order(4)})).await;
    println!("gateway: a request without source and profile -> {refused:?}");
    assert!(refused.is_err());

    for (phase, requests) in phases.into_iter().enumerate() {
        let count = requests.len();
        let mut last = 0;
        for body in requests {
            last = receive(&store, body)
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
            started.elapsed() < Duration::from_secs(60),
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
    assert_eq!(
        reasons,
        [
            "amount must be a positive number",
            "order …x1 is shipped",
            "order …x5 is cancelled",
            "order …x6 is not paid",
            "unknown command \"RefundOrder\"",
            "user-ada… exists already",
            "user-mallory… does not exist",
        ]
    );

    stop_tx.send_replace(true);
    let stats = processing.await.expect("the consumer task")?;
    daemon.await.expect("the daemon task")?;
    println!(
        "\nworkers: {} handled, {} retried, {} parked at once",
        stats.handled, stats.nacked, stats.parked
    );
    Ok(())
}
