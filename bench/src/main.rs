//! `eventstore-bench`: events/s of `eventstore.append` against a plain `INSERT` of the same
//! rows into a table with the same indexes, on one server, in one run.
//!
//! Each scenario alternates baseline and append phases over several rounds (so drift in the
//! machine's speed hits both alike) and prints the ratio with its DESIGN.md target.
//!
//! Then the client's figures (`client_bench.rs`): `read_all` catch-up against a plain indexed
//! `SELECT`, and subscription latency under 8 writers.
//!
//! Usage: `eventstore-bench [--seconds N] [--rounds N]
//! [--only append|catchup|subscriptions|projection|groups] [--projection-events N] [--group-events N]
//! [--catchup-sizes 100000,1000000]` with `DATABASE_URL` naming a database in which the bench
//! may create the extension and a `bench` schema. `scripts/bench.sh` starts a private cluster
//! and runs it.

mod client_bench;
mod group_bench;
mod projection_bench;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgConnection, PgPool};

/// Streams the random writers pick from, all in category `bench`.
const STREAMS: u32 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Baseline,
    Append,
}

struct Scenario {
    name: &'static str,
    clients: usize,
    events_per_call: usize,
    target: f64,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "1 client, 1 event per call",
        clients: 1,
        events_per_call: 1,
        target: 0.9,
    },
    Scenario {
        name: "8 clients, 1 event per call",
        clients: 8,
        events_per_call: 1,
        target: 0.9,
    },
    Scenario {
        name: "1 client, 100 events per call",
        clients: 1,
        events_per_call: 100,
        target: 0.85,
    },
];

fn event_data(rng: &mut impl Rng) -> serde_json::Value {
    serde_json::json!({
        "sku": format!("sku-{}", rng.gen_range(0..1000)),
        "qty": rng.gen_range(1..5),
        "price": 9.99,
    })
}

fn random_stream(rng: &mut impl Rng) -> String {
    format!("bench-{}", rng.gen_range(0..STREAMS))
}

/// The baseline: one plain multi-row INSERT of `count` rows with the columns `append` stores.
fn baseline_sql(count: usize) -> String {
    let rows: Vec<String> = (0..count)
        .map(|i| {
            let p = 2 + 3 * i;
            format!(
                "(nextval('bench.position'), $1, nextval('bench.version'), ${}, ${}, '{{}}', ${})",
                p,
                p + 1,
                p + 2
            )
        })
        .collect();
    format!(
        "INSERT INTO bench.baseline (position, stream, version, type, data, metadata, id) VALUES {}",
        rows.join(", ")
    )
}

async fn one_call(conn: &mut PgConnection, variant: Variant, count: usize, baseline: &str) {
    // The random payload is drawn before the first await: the thread's RNG stays on its thread.
    let (stream, data) = {
        let mut rng = rand::thread_rng();
        let data: Vec<serde_json::Value> = (0..count).map(|_| event_data(&mut rng)).collect();
        (random_stream(&mut rng), data)
    };
    match variant {
        Variant::Append => {
            let events: Vec<serde_json::Value> = data
                .into_iter()
                .map(|data| serde_json::json!({"type": "item-added", "data": data}))
                .collect();
            sqlx::query("SELECT eventstore.append($1, $2)")
                .bind(stream)
                .bind(serde_json::Value::Array(events))
                .execute(conn)
                .await
                .expect("append");
        }
        Variant::Baseline => {
            let mut query = sqlx::query(baseline).bind(stream);
            for data in data {
                query = query
                    .bind("item-added")
                    .bind(data)
                    .bind(uuid::Uuid::now_v7());
            }
            query.execute(conn).await.expect("baseline insert");
        }
    }
}

/// Runs `clients` connections flat out for `duration`; returns calls per second.
async fn phase(pool: &PgPool, scenario: &Scenario, variant: Variant, duration: Duration) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let baseline = Arc::new(baseline_sql(scenario.events_per_call));
    let mut tasks = Vec::new();
    for _ in 0..scenario.clients {
        let mut conn = pool.acquire().await.expect("connection").detach();
        let (stop, calls, baseline) = (stop.clone(), calls.clone(), baseline.clone());
        let count = scenario.events_per_call;
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                one_call(&mut conn, variant, count, &baseline).await;
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("client task");
    }
    calls.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

async fn prepare(pool: &PgPool) {
    pool.execute(
        "CREATE EXTENSION IF NOT EXISTS pg_eventstore;
         DROP SCHEMA IF EXISTS bench CASCADE;
         CREATE SCHEMA bench;
         CREATE TABLE bench.baseline (LIKE eventstore.events INCLUDING ALL);
         CREATE SEQUENCE bench.position;
         CREATE SEQUENCE bench.version;",
    )
    .await
    .expect("prepare the bench schema");
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let seconds = arg("--seconds", 5);
    let rounds = arg("--rounds", 3);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the bench database");
    let options = PgConnectOptions::from_str(&url).expect("a valid DATABASE_URL");
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(options.clone())
        .await
        .expect("connect");
    prepare(&pool).await;
    let only = std::env::args()
        .skip_while(|a| a != "--only")
        .nth(1)
        .unwrap_or_default();
    let sizes: Vec<u64> = std::env::args()
        .skip_while(|a| a != "--catchup-sizes")
        .nth(1)
        .unwrap_or_else(|| "100000,1000000".to_owned())
        .split(',')
        .map(|s| s.parse().expect("--catchup-sizes takes numbers"))
        .collect();
    let mut all_met = true;
    if only.is_empty() || only == "append" {
        all_met &= append_ratios(&pool, seconds, rounds).await;
    }
    let store = pg_eventstore_client::EventStore::from_pool(pool.clone());
    if only.is_empty() || only == "subscriptions" {
        all_met &= client_bench::subscriptions(&store, seconds, rounds).await;
    }
    if only.is_empty() || only == "catchup" {
        all_met &= client_bench::catch_up(&store, &sizes, rounds).await;
    }
    if only.is_empty() || only == "projection" {
        let events = arg("--projection-events", 1_000_000);
        all_met &= projection_bench::run(&pool, &options, events, seconds).await;
    }
    if only.is_empty() || only == "groups" {
        all_met &= group_bench::run(&pool, &options, arg("--group-events", 200_000)).await;
    }
    println!(
        "{}",
        if all_met {
            "all targets met"
        } else {
            "some targets missed"
        }
    );
}

/// The append scenarios; true when every target is met.
async fn append_ratios(pool: &PgPool, seconds: u64, rounds: u64) -> bool {
    let pool = pool.clone();

    println!(
        "pg_eventstore append benchmark: {rounds} rounds of {seconds} s per variant, alternating"
    );
    println!(
        "{:<32} {:>14} {:>14} {:>7} {:>8}",
        "scenario", "INSERT ev/s", "append ev/s", "ratio", "target"
    );
    let duration = Duration::from_secs(seconds);
    let mut all_met = true;
    for scenario in &SCENARIOS {
        // Warm both paths (plan caches, first pages) before measuring.
        phase(
            &pool,
            scenario,
            Variant::Baseline,
            Duration::from_millis(500),
        )
        .await;
        phase(&pool, scenario, Variant::Append, Duration::from_millis(500)).await;
        let (mut baseline, mut append) = (0.0, 0.0);
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Variant::Baseline, Variant::Append]
            } else {
                [Variant::Append, Variant::Baseline]
            };
            for variant in order {
                let rate = phase(&pool, scenario, variant, duration).await;
                match variant {
                    Variant::Baseline => baseline += rate,
                    Variant::Append => append += rate,
                }
            }
        }
        let per_call = scenario.events_per_call as f64;
        let (baseline, append) = (
            baseline / rounds as f64 * per_call,
            append / rounds as f64 * per_call,
        );
        let ratio = append / baseline;
        let met = ratio >= scenario.target;
        all_met &= met;
        println!(
            "{:<32} {:>14.0} {:>14.0} {:>7.2} {:>5} {}",
            scenario.name,
            baseline,
            append,
            ratio,
            format!(">={}", scenario.target),
            if met { "met" } else { "MISSED" }
        );
    }
    all_met
}
