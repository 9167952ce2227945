//! A demo workload of the seed shop: users registering, renaming and leaving; orders placed,
//! paid, shipped and cancelled, with a few events that make no sense, as real systems have.

use pg_eventstore_client::{Error, EventData, EventStore, ExpectedVersion, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::events::{
    Item, Money, OrderCancelled, OrderPaid, OrderPlaced, OrderShipped, ShopEventType, UserCreated,
    UserDeactivated, UserRenamed,
};

/// What [`generate`] appends.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Users to register.
    pub users: u32,
    /// Orders to place.
    pub orders: u32,
    /// Concurrent writers.
    pub writers: u32,
    /// Seed of the random choices: the same seed gives the same events.
    pub seed: u64,
    /// Prefix of the generated ids, so that several runs can share a database.
    pub prefix: String,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            users: 200,
            orders: 1000,
            writers: 4,
            seed: 42,
            prefix: String::new(),
        }
    }
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

/// The events of user `index`: created, maybe renamed, maybe deactivated.
fn user_events(rng: &mut StdRng, prefix: &str, index: u32) -> Vec<EventData> {
    let name = username(prefix, index);
    let first = FIRST[index as usize % FIRST.len()];
    let full = |rng: &mut StdRng| {
        let mut first = first.to_owned();
        first[..1].make_ascii_uppercase();
        format!("{first} {}", LAST[rng.gen_range(0..LAST.len())])
    };
    let mut events = vec![UserCreated {
        username: name,
        full_name: full(rng),
        opened_at: None,
    }
    .to_event_data()];
    if rng.gen_bool(0.1) {
        events.push(
            UserRenamed {
                full_name: full(rng),
            }
            .to_event_data(),
        );
    }
    if rng.gen_bool(0.03) {
        events.push(UserDeactivated {}.to_event_data());
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
    let username = if rng.gen_bool(0.005) {
        format!("{prefix}ghost{index}")
    } else {
        username(prefix, rng.gen_range(0..users))
    };
    let items: Vec<Item> = (0..rng.gen_range(1..=3))
        .map(|_| {
            let (sku, price) = MENU[rng.gen_range(0..MENU.len())];
            Item {
                sku: sku.to_owned(),
                qty: rng.gen_range(1..=3),
                price: price
                    .parse::<Money>()
                    .expect("the menu's prices are decimals"),
            }
        })
        .collect();
    let placed = OrderPlaced {
        username,
        items,
        currency: "EUR".to_owned(),
    };
    let amount = placed.total();
    let paid = || {
        OrderPaid {
            amount,
            method: Some("card".to_owned()),
        }
        .to_event_data()
    };
    let cancelled = |reason: &str| {
        OrderCancelled {
            reason: Some(reason.to_owned()),
        }
        .to_event_data()
    };
    let shipped = |carrier: &str, tracking: String| {
        OrderShipped {
            carrier: Some(carrier.to_owned()),
            tracking_number: Some(tracking),
        }
        .to_event_data()
    };
    let fate: f64 = rng.gen();
    let later = if fate < 0.70 {
        let shipped = shipped(
            CARRIERS[index as usize % CARRIERS.len()],
            format!("TN{index:08}"),
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
        vec![shipped("dhl", "TN-X".to_owned())]
    } else {
        Vec::new()
    };
    (placed.to_event_data(), later)
}

/// Appends `workload` to the store: users register first, then orders are placed, then
/// paid, shipped or cancelled, each phase spread over the writers so the global log
/// interleaves the streams. Returns the number of events appended.
pub async fn generate(store: &EventStore, workload: &Workload) -> Result<u64> {
    if workload.users == 0 && workload.orders > 0 {
        return Err(Error::InvalidArgument(
            "orders need at least one user".to_owned(),
        ));
    }
    let writers = workload.writers.max(1);
    let mut appended = 0_u64;
    for phase in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..writers {
            let store = store.clone();
            let workload = workload.clone();
            tasks.spawn(async move { write(&store, &workload, phase, writer, writers).await });
        }
        while let Some(done) = tasks.join_next().await {
            appended += done.map_err(|error| Error::TaskFailed(error.to_string()))??;
        }
    }
    Ok(appended)
}

/// Writer `writer` of `writers`' share of `phase`.
async fn write(
    store: &EventStore,
    workload: &Workload,
    phase: u32,
    writer: u32,
    writers: u32,
) -> Result<u64> {
    let prefix = &workload.prefix;
    let mut count = 0_u64;
    if phase == 0 {
        let mut rng = StdRng::seed_from_u64(workload.seed ^ 0x5553_4552);
        for index in 0..workload.users {
            let events = user_events(&mut rng, prefix, index);
            if index % writers != writer {
                continue;
            }
            count += events.len() as u64;
            let stream = format!("user-{}", username(prefix, index));
            store
                .append(&stream, ExpectedVersion::NoStream, events)
                .await?;
        }
        return Ok(count);
    }
    let mut rng = StdRng::seed_from_u64(workload.seed ^ 0x4f52_4445);
    for index in 0..workload.orders {
        let (placed, later) = order_events(&mut rng, prefix, workload.users, index);
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
    Ok(count)
}
