//! Persistent subscription groups: events/s through a group with 1, 2 and 4 workers of the
//! client's `GroupConsumer` and a handler that does nothing (fetch, lease, ack per batch),
//! unordered and ordered by stream, against reading the same events through `read_all` in
//! the same run; and the delivery latency of an idle group beside a subscription's.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use pg_eventstore_client::{
    ConsumerOptions, EventData, EventStore, ExpectedVersion, GroupSettings, SubscriptionOptions,
};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::client_bench::percentile;

const DATABASE: &str = "bench_group";
const BATCH: u32 = 500;

async fn database(admin: &PgPool, options: &PgConnectOptions) -> EventStore {
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(admin)
        .await
        .expect("drop the bench database");
    sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
        .execute(admin)
        .await
        .expect("create the bench database");
    let pool = pg_eventstore_client::pool_options()
        .max_connections(16)
        .connect_with(options.clone().database(DATABASE))
        .await
        .expect("connect");
    sqlx::query("CREATE EXTENSION pg_eventstore")
        .execute(&pool)
        .await
        .expect("create the extension");
    EventStore::from_pool(pool)
}

/// `total` events over 1,000 streams, interleaved in the log, 10,000 per transaction.
async fn fill(pool: &PgPool, total: u64) {
    let mut first = 0;
    while first < total {
        let last = (first + 10_000).min(total);
        sqlx::query(
            "SELECT count(eventstore.append('item-' || i % 1000, jsonb_build_array( \
                 jsonb_build_object('type', 'item-added', 'data', jsonb_build_object('n', i))))) \
             FROM generate_series($1::bigint, $2::bigint - 1) AS i",
        )
        .bind(first as i64)
        .bind(last as i64)
        .execute(pool)
        .await
        .expect("fill");
        first = last;
    }
    sqlx::query("VACUUM ANALYZE eventstore.events")
        .execute(pool)
        .await
        .expect("vacuum");
}

/// Events/s until a new group of `workers` workers acked all `total` events.
async fn through_group(
    store: &EventStore,
    name: &str,
    workers: usize,
    ordered: bool,
    total: u64,
) -> f64 {
    store
        .create_group(name, &GroupSettings::default().ordered_by_stream(ordered))
        .await
        .expect("create group");
    let consumer = store.group_consumer(
        name,
        ConsumerOptions::default()
            .name(name)
            .workers(workers)
            .batch_size(BATCH),
    );
    let stats = consumer.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(consumer.run(
        |event| async move {
            std::hint::black_box(&event);
            Ok(())
        },
        async {
            let _ = stopped.await;
        },
    ));
    while stats.get().acked < total {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the group {name} is stuck at {:?}",
            stats.get()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(());
    running.await.expect("consumer task").expect("consumer");
    store.delete_group(name).await.expect("delete group");
    rate
}

/// Waits until `position` arrives on `arrivals`; returns when it did.
async fn arrival(arrivals: &mut UnboundedReceiver<(u64, Instant)>, position: u64) -> Instant {
    loop {
        let (arrived, at) = tokio::time::timeout(Duration::from_secs(60), arrivals.recv())
            .await
            .expect("the probe is delivered within a minute")
            .expect("the handler is running");
        if arrived == position {
            return at;
        }
    }
}

/// Delivery latency with nothing to catch up on: one event appended at a time while the 4
/// workers of an unordered group and a subscription to all wait for it, from the append's
/// return to each one's handler. The subscription is the baseline measured beside it.
async fn latency(store: &EventStore, probes: usize) {
    let head = store.head_position().await.expect("head");
    let name = "bench-latency";
    store
        .create_group(name, &GroupSettings::default().from_position(head))
        .await
        .expect("create group");
    let (group_tx, mut group_rx) = unbounded_channel::<(u64, Instant)>();
    let consumer = store.group_consumer(
        name,
        ConsumerOptions::default()
            .name(name)
            .workers(4)
            .batch_size(BATCH),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(consumer.run(
        move |event| {
            let group_tx = group_tx.clone();
            async move {
                let _ = group_tx.send((event.event.position, Instant::now()));
                Ok(())
            }
        },
        async {
            let _ = stopped.await;
        },
    ));
    let (subscription_tx, mut subscription_rx) = unbounded_channel::<(u64, Instant)>();
    let mut subscription = store.subscribe_to_all(SubscriptionOptions::default().after(head));
    let subscriber = tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            let event = event.expect("subscription");
            if subscription_tx
                .send((event.position, Instant::now()))
                .is_err()
            {
                break;
            }
        }
    });
    let (mut by_group, mut by_subscription) = (Vec::new(), Vec::new());
    // The first probes only warm both up (connections, listeners).
    for probe in 0..probes + 10 {
        let appended = store
            .append(
                "latency-probe",
                ExpectedVersion::Any,
                [EventData::json("probe", serde_json::json!({ "n": probe }))],
            )
            .await
            .expect("append a probe");
        let returned = Instant::now();
        let position = appended.last_position;
        let to_group = arrival(&mut group_rx, position).await - returned;
        let to_subscription = arrival(&mut subscription_rx, position).await - returned;
        if probe >= 10 {
            by_group.push(to_group);
            by_subscription.push(to_subscription);
        }
    }
    let _ = stop.send(());
    running.await.expect("consumer task").expect("consumer");
    subscriber.abort();
    store.delete_group(name).await.expect("delete group");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for (label, mut latencies) in [
        ("group, 4 idle workers", by_group),
        ("subscription to all (baseline)", by_subscription),
    ] {
        latencies.sort_unstable();
        println!(
            "  delivery latency, {label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({probes} probes)",
            ms(percentile(&latencies, 0.5)),
            ms(percentile(&latencies, 0.99)),
            ms(latencies[latencies.len() - 1]),
        );
    }
}

/// Each figure is the median of this many runs (these machines are noisy).
const ROUNDS: usize = 3;

fn median(mut rates: Vec<f64>) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// Issue 12's targets, as ratios to `read_all` of the same events: 4 workers unordered, and
/// 4 workers ordered by stream.
const TARGET_4: f64 = 0.5;
const TARGET_4_ORDERED: f64 = 0.25;

/// The group figures; true when both targets are met.
pub async fn run(admin: &PgPool, options: &PgConnectOptions, total: u64) -> bool {
    println!();
    println!(
        "persistent subscription groups: {total} events, batches of {BATCH}, a handler that \
         does nothing, each figure the median of {ROUNDS} runs"
    );
    let store = database(admin, options).await;
    let started = Instant::now();
    fill(store.pool(), total).await;
    eprintln!(
        "  (appended {total} events in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    let mut reads = Vec::new();
    for _ in 0..ROUNDS {
        let (read, rate) = crate::client_bench::client_catch_up(&store, u64::MAX).await;
        assert_eq!(read, total);
        reads.push(rate);
    }
    let read_rate = median(reads);
    println!("  read_all of the same events (baseline, pages of 5,000): {read_rate:>9.0} events/s");
    println!(
        "  {:<32} {:>12} {:>16}",
        "group", "events/s", "ratio to read_all"
    );
    let mut met = true;
    for (workers, ordered) in [
        (1, false),
        (2, false),
        (4, false),
        (1, true),
        (2, true),
        (4, true),
    ] {
        let label = format!(
            "{workers} worker{}{}",
            if workers == 1 { "" } else { "s" },
            if ordered { ", ordered by stream" } else { "" }
        );
        let mut rates = Vec::new();
        for round in 0..ROUNDS {
            let name = format!(
                "bench-{workers}{}-{round}",
                if ordered { "-ordered" } else { "" }
            );
            rates.push(through_group(&store, &name, workers, ordered, total).await);
        }
        let rate = median(rates);
        let ratio = rate / read_rate;
        let target = match (workers, ordered) {
            (4, false) => Some(TARGET_4),
            (4, true) => Some(TARGET_4_ORDERED),
            _ => None,
        };
        let verdict = match target {
            Some(target) if ratio >= target => format!("  target >= {target}: met"),
            Some(target) => {
                met = false;
                format!("  target >= {target}: MISSED")
            }
            None => String::new(),
        };
        println!("  {label:<32} {rate:>12.0} {ratio:>16.2}{verdict}");
    }
    latency(&store, 200).await;
    met
}
