//! Client-side figures: `read_all` catch-up through the Rust client against a plain indexed
//! `SELECT` of the same rows, and subscription delivery latency under 8 writers, with the
//! writers' rate against the same load without subscribers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use pg_eventstore_client::{
    EventData, EventStore, ExpectedVersion, ReadAllOptions, SubscriptionOptions,
};
use serde_json::value::RawValue;
use sqlx::types::Json;
use sqlx::{PgPool, Row};

/// Rows per round trip for both catch-up readers.
const PAGE: u32 = 5_000;

/// Appends events in batches of 1,000 until the log holds `total` events.
pub async fn fill(store: &EventStore, total: u64) {
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(store.pool())
        .await
        .expect("count");
    let mut missing = total.saturating_sub(u64::try_from(stored).unwrap_or_default());
    let started = Instant::now();
    while missing > 0 {
        let batch = missing.min(1_000);
        let events: Vec<EventData> = {
            let mut rng = rand::thread_rng();
            (0..batch)
                .map(|_| EventData::json("order-noted", super::event_data(&mut rng)))
                .collect()
        };
        let stream = super::random_stream(&mut rand::thread_rng());
        store
            .append(&stream, ExpectedVersion::Any, events)
            .await
            .expect("fill append");
        missing -= batch;
    }
    if total > 0 {
        eprintln!(
            "  (log filled to {total} events in {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// Events/s of reading the first `size` events of the log through `EventStore::read_all`.
pub(crate) async fn client_catch_up(store: &EventStore, size: u64) -> (u64, f64) {
    let started = Instant::now();
    let count = store
        .read_all(ReadAllOptions::default().page_size(PAGE).limit(size))
        .try_fold(0_u64, |n, event| async move {
            std::hint::black_box(&event);
            Ok(n + 1)
        })
        .await
        .expect("read_all");
    (count, count as f64 / started.elapsed().as_secs_f64())
}

/// Events/s of a plain keyset-paged `SELECT` of the same rows and columns, decoded into the
/// same Rust types.
async fn plain_catch_up(pool: &PgPool, size: u64) -> (u64, f64) {
    let started = Instant::now();
    let mut after = 0_i64;
    let mut count = 0_u64;
    while count < size {
        let page = (size - count).min(u64::from(PAGE));
        let rows = sqlx::query(
            "SELECT position, stream, version, type, data, metadata, id, recorded_at \
             FROM eventstore.events WHERE position > $1 ORDER BY position LIMIT $2",
        )
        .bind(after)
        .bind(i64::try_from(page).expect("page fits"))
        .fetch_all(pool)
        .await
        .expect("plain select");
        let Some(last) = rows.last() else { break };
        after = last.get("position");
        for row in &rows {
            let decoded = (
                row.get::<i64, _>("position"),
                row.get::<String, _>("stream"),
                row.get::<i64, _>("version"),
                row.get::<String, _>("type"),
                row.get::<Json<Box<RawValue>>, _>("data"),
                row.get::<Option<Json<Box<RawValue>>>, _>("metadata"),
                row.get::<uuid::Uuid, _>("id"),
                row.get::<chrono::DateTime<chrono::Utc>, _>("recorded_at"),
            );
            std::hint::black_box(&decoded);
            count += 1;
        }
    }
    (count, count as f64 / started.elapsed().as_secs_f64())
}

/// Catch-up ratio at each log size, alternating the two readers over `rounds`.
pub async fn catch_up(store: &EventStore, sizes: &[u64], rounds: u64) -> bool {
    println!();
    println!(
        "{:<32} {:>14} {:>14} {:>7} {:>8}",
        "read_all catch-up", "SELECT ev/s", "client ev/s", "ratio", "target"
    );
    let mut all_met = true;
    for &size in sizes {
        fill(store, size).await;
        // Warm the cache so neither reader pays for the first read from disk.
        plain_catch_up(store.pool(), size).await;
        let (mut plain, mut client) = (0.0, 0.0);
        for round in 0..rounds {
            let (a, b) = if round % 2 == 0 {
                let a = plain_catch_up(store.pool(), size).await;
                (a, client_catch_up(store, size).await)
            } else {
                let b = client_catch_up(store, size).await;
                (plain_catch_up(store.pool(), size).await, b)
            };
            assert_eq!((a.0, b.0), (size, size), "both readers read every event");
            plain += a.1;
            client += b.1;
        }
        let (plain, client) = (plain / rounds as f64, client / rounds as f64);
        let ratio = client / plain;
        let met = ratio >= 0.8;
        all_met &= met;
        println!(
            "{:<32} {:>14.0} {:>14.0} {:>7.2} {:>8} {}",
            format!("first {size} events"),
            plain,
            client,
            ratio,
            ">=0.8",
            if met { "met" } else { "MISSED" }
        );
    }
    all_met
}

/// 8 writers appending one event per call to random streams for `duration`; returns their
/// events/s and, per appended position, when its append returned.
async fn writers(store: &EventStore, duration: Duration) -> (f64, HashMap<u64, Instant>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let (stream, data) = {
                    let mut rng = rand::thread_rng();
                    (super::random_stream(&mut rng), super::event_data(&mut rng))
                };
                let appended = store
                    .append(
                        &stream,
                        ExpectedVersion::Any,
                        [EventData::json("order-noted", data)],
                    )
                    .await
                    .expect("append");
                committed.push((appended.last_position, Instant::now()));
            }
            committed
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = HashMap::new();
    for task in tasks {
        committed.extend(task.await.expect("writer"));
    }
    let rate = committed.len() as f64 / started.elapsed().as_secs_f64();
    (rate, committed)
}

/// The `p` quantile of sorted durations (nearest rank).
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Delivery latency from an append's return to the subscribers' handlers, with 8 writers
/// at full speed, and the writers' rate with and without 1, 10 and 50 subscribers (each
/// following the whole log), alternating.
pub async fn subscriptions(store: &EventStore, seconds: u64, rounds: u64) -> bool {
    println!();
    // Unmeasured: on a fresh cluster the first seconds of writing run slower (new streams,
    // cold caches), which would flatter whichever phase comes second.
    writers(store, Duration::from_secs(seconds)).await;
    let mut met = true;
    for subscribers in [1, 10, 50] {
        met &= subscribed_writers(store, seconds, rounds, subscribers).await;
    }
    println!(
        "subscription targets {}",
        if met { "met" } else { "MISSED" }
    );
    met
}

/// One line of [`subscriptions`]; true when its targets are met (latency for all,
/// the writers' ratio of 0.9 with one subscriber).
async fn subscribed_writers(
    store: &EventStore,
    seconds: u64,
    rounds: u64,
    subscribers: usize,
) -> bool {
    let duration = Duration::from_secs(seconds);
    let (mut without, mut with) = (0.0, 0.0);
    let mut latencies = Vec::new();
    for round in 0..rounds * 2 {
        let subscribed = (round % 2 == 1) == (round / 2 % 2 == 0);
        if !subscribed {
            without += writers(store, duration).await.0;
            continue;
        }
        let head = store.head_position().await.expect("head");
        let mut sinks = Vec::new();
        let mut handlers = Vec::new();
        for _ in 0..subscribers {
            let received = Arc::new(Mutex::new(Vec::<(u64, Instant)>::new()));
            let sink = received.clone();
            let mut subscription =
                store.subscribe_to_all(SubscriptionOptions::default().after(head));
            handlers.push(tokio::spawn(async move {
                while let Some(event) = subscription.next().await {
                    let event = event.expect("subscription");
                    sink.lock()
                        .expect("sink")
                        .push((event.position, Instant::now()));
                }
            }));
            sinks.push(received);
        }
        // Let the subscriptions catch up and start listening before the load.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (rate, committed) = writers(store, duration).await;
        with += rate;
        let deadline = Instant::now() + Duration::from_secs(60);
        while sinks
            .iter()
            .any(|sink| sink.lock().expect("sink").len() < committed.len())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for handler in handlers {
            handler.abort();
        }
        for sink in sinks {
            let received = sink.lock().expect("received");
            let mut delivered = 0;
            for (position, at) in received.iter() {
                if let Some(committed_at) = committed.get(position) {
                    latencies.push(at.saturating_duration_since(*committed_at));
                    delivered += 1;
                }
            }
            assert_eq!(
                delivered,
                committed.len(),
                "every appended event is delivered to every subscriber"
            );
        }
    }
    latencies.sort_unstable();
    let (without, with) = (without / rounds as f64, with / rounds as f64);
    let p50 = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ratio = with / without;
    println!(
        "{subscribers:>2} subscriber(s) following 8 writers at full speed: writers {with:.0} ev/s \
         against {without:.0} without, ratio {ratio:.2}{}; delivery p50 {:.2} ms (target <5), \
         p99 {:.2} ms (target <25), max {:.2} ms ({} deliveries)",
        if subscribers == 1 {
            " (target >= 0.9)"
        } else {
            ""
        },
        ms(p50),
        ms(p99),
        ms(*latencies.last().expect("latencies")),
        latencies.len(),
    );
    ms(p50) < 5.0 && ms(p99) < 25.0 && (subscribers > 1 || ratio >= 0.9)
}
