//! Persistent subscription groups: events/s through a group with 1, 2 and 4 workers of the
//! client's `GroupConsumer` and a handler that does nothing (fetch, lease, ack per batch),
//! unordered and ordered by stream, against reading the same events through `read_all` in
//! the same run.

use std::time::{Duration, Instant};

use pg_eventstore_client::{ConsumerOptions, EventStore, GroupSettings};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

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
    let pool = PgPoolOptions::new()
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
    met
}
