//! `eventstore generate`: a demo workload of the seed shop.

use std::time::Instant;

use clap::Args;
use pg_eventstore_client::{Error, EventData, EventStore, ExpectedVersion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Args)]
pub struct GenerateArgs {
    /// Users to register.
    #[arg(long, default_value_t = 200)]
    users: u32,
    /// Orders to place.
    #[arg(long, default_value_t = 1000)]
    orders: u32,
    /// Concurrent writers.
    #[arg(long, default_value_t = 4)]
    writers: u32,
    /// Seed of the random choices (same seed, same events).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Prefix of the generated ids, so that several runs can share a database.
    #[arg(long, default_value = "")]
    prefix: String,
}

const FIRST: [&str; 12] = [
    "ada", "alan", "grace", "edsger", "barbara", "donald", "frances", "john", "margaret",
    "niklaus", "radia", "tony",
];
const LAST: [&str; 8] = [
    "Lovelace", "Turing", "Hopper", "Dijkstra", "Liskov", "Knuth", "Allen", "Hamilton",
];
const MENU: [(&str, &str); 6] = [
    ("espresso", "2.40"),
    ("flat-white", "3.20"),
    ("croissant", "2.10"),
    ("beans-1kg", "24.90"),
    ("grinder", "89.00"),
    ("mug", "9.50"),
];
const CARRIERS: [&str; 3] = ["dhl", "ups", "postnl"];

fn username(prefix: &str, index: u32) -> String {
    format!("{prefix}{}{index}", FIRST[index as usize % FIRST.len()])
}

fn event(event_type: &str, data: serde_json::Value) -> EventData {
    EventData::json(event_type, data)
}

/// The events of user `index`: created, maybe renamed, maybe deactivated.
fn user_events(rng: &mut StdRng, prefix: &str, index: u32) -> Vec<EventData> {
    let name = username(prefix, index);
    let first = FIRST[index as usize % FIRST.len()];
    let full = |rng: &mut StdRng| {
        let mut first = first.to_owned();
        first[..1].make_ascii_uppercase();
        format!("{first} {}", LAST[rng.gen_range(0..LAST.len())])
    };
    let mut events = vec![event(
        "user-created",
        json!({"username": name, "fullName": full(rng)}),
    )];
    if rng.gen_bool(0.1) {
        events.push(event("user-renamed", json!({"fullName": full(rng)})));
    }
    if rng.gen_bool(0.03) {
        events.push(event("user-deactivated", json!({})));
    }
    events
}

/// Order `index`'s placement, and what happens to it later.
fn order_events(
    rng: &mut StdRng,
    prefix: &str,
    users: u32,
    index: u32,
) -> (EventData, Vec<EventData>) {
    // One order in 200 comes from someone who never registered.
    let user = if rng.gen_bool(0.005) {
        format!("{prefix}ghost{index}")
    } else {
        username(prefix, rng.gen_range(0..users))
    };
    let mut items = Vec::new();
    let mut total = 0.0;
    for _ in 0..rng.gen_range(1..=3) {
        let (sku, price) = MENU[rng.gen_range(0..MENU.len())];
        let qty = rng.gen_range(1..=3);
        total += qty as f64 * price.parse::<f64>().expect("a price");
        items
            .push(json!({"sku": sku, "qty": qty, "price": price.parse::<f64>().expect("a price")}));
    }
    let placed = event(
        "order-placed",
        json!({"username": user, "items": items, "currency": "EUR"}),
    );
    let amount = (total * 100.0).round() / 100.0;
    let paid = || event("order-paid", json!({"amount": amount, "method": "card"}));
    let cancelled = |reason: &str| event("order-cancelled", json!({"reason": reason}));
    let fate: f64 = rng.gen();
    let later = if fate < 0.70 {
        let shipped = event(
            "order-shipped",
            json!({"carrier": CARRIERS[index as usize % CARRIERS.len()],
                   "trackingNumber": format!("TN{index:08}")}),
        );
        if rng.gen_bool(0.9) {
            vec![paid(), shipped]
        } else {
            vec![paid(), cancelled("changed their mind; refunded")]
        }
    } else if fate < 0.85 {
        vec![cancelled("out of stock")]
    } else if fate < 0.86 {
        // Nonsense that real systems see: a payment arriving after the cancellation.
        vec![cancelled("customer request"), paid()]
    } else if fate < 0.87 {
        // Shipped without a payment.
        vec![event(
            "order-shipped",
            json!({"carrier": "dhl", "trackingNumber": "TN-X"}),
        )]
    } else {
        Vec::new()
    };
    (placed, later)
}

pub async fn run(store: &EventStore, args: GenerateArgs) -> Result<(), Error> {
    if args.users == 0 && args.orders > 0 {
        return Err(Error::InvalidArgument(
            "orders need at least one user".to_owned(),
        ));
    }
    let writers = args.writers.max(1);
    let started = Instant::now();
    let mut appended = 0_u64;
    // Users register first, then orders are placed, then paid, shipped or cancelled, each
    // phase spread over the writers, so the global log interleaves the streams.
    for phase in 0..3 {
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let store = store.clone();
            let prefix = args.prefix.clone();
            let (users, orders, seed) = (args.users, args.orders, args.seed);
            tasks.push(tokio::spawn(async move {
                let mut count = 0_u64;
                if phase == 0 {
                    let mut rng = StdRng::seed_from_u64(seed ^ 0x5553_4552);
                    for index in 0..users {
                        let events = user_events(&mut rng, &prefix, index);
                        if index % writers != writer {
                            continue;
                        }
                        count += events.len() as u64;
                        store
                            .append(
                                &format!("user-{}", username(&prefix, index)),
                                ExpectedVersion::NoStream,
                                events,
                            )
                            .await?;
                    }
                } else {
                    let mut rng = StdRng::seed_from_u64(seed ^ 0x4f52_4445);
                    for index in 0..orders {
                        let (placed, later) = order_events(&mut rng, &prefix, users, index);
                        if index % writers != writer {
                            continue;
                        }
                        let stream = format!("order-{prefix}{index:05}");
                        if phase == 1 {
                            store
                                .append(&stream, ExpectedVersion::NoStream, [placed])
                                .await?;
                            count += 1;
                        } else if !later.is_empty() {
                            count += later.len() as u64;
                            store
                                .append(&stream, ExpectedVersion::Exact(0), later)
                                .await?;
                        }
                    }
                }
                Ok::<u64, Error>(count)
            }));
        }
        for task in tasks {
            appended += task.await.map_err(|error| {
                Error::InvalidArgument(format!("a generator task failed: {error}"))
            })??;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "generated {} users and {} orders: {appended} events in {seconds:.1} s ({:.0} events/s)",
        args.users,
        args.orders,
        appended as f64 / seconds.max(1e-9)
    );
    Ok(())
}
