//! `eventstore-bench`: events/s of `eventstore.append` against a plain `INSERT` of the same
//! rows into a table with the same indexes, on one server, in one run.
//!
//! Each scenario alternates baseline and append phases over several rounds (so drift in the
//! machine's speed hits both alike) and prints the ratio with its DESIGN.md target.
//!
//! The portable form's append is measured the same way in a database of its own, and
//! against Message DB's `write_message` when `MESSAGE_DB_URL` names a Message DB database.
//!
//! Then the client's figures (`client_bench.rs`): `read_all` catch-up against a plain indexed
//! `SELECT`, and subscription latency under 8 writers.
//!
//! Usage: `eventstore-bench [--seconds N] [--rounds N]
//! [--only append|portable|catchup|subscriptions|projection|serve|groups] [--projection-events N] [--group-events N]
//! [--catchup-sizes 100000,1000000]` with `DATABASE_URL` naming a database in which the bench
//! may create the extension and a `bench` schema. `scripts/bench.sh` starts a private cluster
//! and runs it.

mod client_bench;
mod group_bench;
mod projection_bench;
mod serve_bench;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Executor, PgConnection, PgPool};

/// Streams the random writers pick from, all in category `bench`.
const STREAMS: u32 = 10_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// A plain multi-row INSERT into `bench.baseline`.
    Baseline,
    /// `eventstore.append`, the events without ids (the store makes them).
    Append,
    /// `eventstore.append` of events that carry their ids, as Message DB's writers must.
    AppendWithIds,
    /// Message DB's `write_message`, one message per call.
    MessageDb,
}

/// One line of the append table: `subject` against `baseline`, measured in turns.
struct Scenario {
    name: &'static str,
    clients: usize,
    events_per_call: usize,
    target: f64,
    baseline: Variant,
    subject: Variant,
}

/// The extension's append against INSERT (DESIGN.md's targets).
const SCENARIOS: [Scenario; 3] = ratios_to_insert([0.9, 0.9, 0.85]);

/// The portable form's append against INSERT, in a database where it is installed instead
/// of the extension (issue 14's targets).
const PORTABLE_SCENARIOS: [Scenario; 3] = ratios_to_insert([0.8, 0.8, 0.85]);

const fn ratios_to_insert(targets: [f64; 3]) -> [Scenario; 3] {
    [
        Scenario {
            name: "1 client, 1 event per call",
            clients: 1,
            events_per_call: 1,
            target: targets[0],
            baseline: Variant::Baseline,
            subject: Variant::Append,
        },
        Scenario {
            name: "8 clients, 1 event per call",
            clients: 8,
            events_per_call: 1,
            target: targets[1],
            baseline: Variant::Baseline,
            subject: Variant::Append,
        },
        Scenario {
            name: "1 client, 100 events per call",
            clients: 1,
            events_per_call: 100,
            target: targets[2],
            baseline: Variant::Baseline,
            subject: Variant::Append,
        },
    ]
}

/// The portable append against Message DB's `write_message`, each writing one event with
/// its id per call (issue 14: at least 2.5 times).
const MESSAGE_DB_SCENARIO: Scenario = Scenario {
    name: "8 clients, 1 event with id",
    clients: 8,
    events_per_call: 1,
    target: 2.5,
    baseline: Variant::MessageDb,
    subject: Variant::AppendWithIds,
};

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
        Variant::Append | Variant::AppendWithIds => {
            let events: Vec<serde_json::Value> = data
                .into_iter()
                .map(|data| {
                    if variant == Variant::AppendWithIds {
                        let id = uuid::Uuid::new_v4().to_string();
                        serde_json::json!({"type": "item-added", "data": data, "id": id})
                    } else {
                        serde_json::json!({"type": "item-added", "data": data})
                    }
                })
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
        Variant::MessageDb => {
            for data in data {
                sqlx::query("SELECT message_store.write_message($1, $2, 'item-added', $3)")
                    .bind(uuid::Uuid::new_v4().to_string())
                    .bind(&stream)
                    .bind(data)
                    .execute(&mut *conn)
                    .await
                    .expect("write_message");
            }
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

/// The baseline table beside the store's log, with the same columns and indexes.
async fn prepare_baseline(pool: &PgPool) {
    pool.execute(
        "DROP SCHEMA IF EXISTS bench CASCADE;
         CREATE SCHEMA bench;
         CREATE TABLE bench.baseline (LIKE eventstore.events INCLUDING ALL);
         CREATE SEQUENCE bench.position;
         CREATE SEQUENCE bench.version;",
    )
    .await
    .expect("prepare the bench schema");
}

async fn prepare(pool: &PgPool) {
    pool.execute("CREATE EXTENSION IF NOT EXISTS pg_eventstore")
        .await
        .expect("create the extension");
    prepare_baseline(pool).await;
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

/// The allocator of `eventstore` (see its main.rs), so the projections measured here run
/// as the daemon runs them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let seconds = arg("--seconds", 5);
    let rounds = arg("--rounds", 3);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the bench database");
    let options = PgConnectOptions::from_str(&url).expect("a valid DATABASE_URL");
    // Every pool here, baselines' and store's alike, has the settings of the store's own
    // pools (no ping before each call on a connection used within the last second).
    let pool = pg_eventstore_client::pool_options()
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
    if only.is_empty() || only == "portable" {
        all_met &= portable_ratios(&pool, &options, seconds, rounds).await;
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
    if only.is_empty() || only == "serve" {
        all_met &= serve_bench::run(&store, &url, seconds, rounds).await;
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
    println!(
        "pg_eventstore append benchmark: {rounds} rounds of {seconds} s per variant, alternating"
    );
    let rows: Vec<(&Scenario, &PgPool, &PgPool)> =
        SCENARIOS.iter().map(|s| (s, pool, pool)).collect();
    ratio_table(("INSERT ev/s", "append ev/s"), &rows, seconds, rounds).await
}

/// The portable form against INSERT in a database of its own on the same server, and
/// against Message DB when `MESSAGE_DB_URL` names a database it is installed in
/// (`scripts/bench.sh` installs it from its npm package). True when every target is met.
async fn portable_ratios(
    pool: &PgPool,
    options: &PgConnectOptions,
    seconds: u64,
    rounds: u64,
) -> bool {
    let name = "eventstore_bench_portable";
    pool.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop the portable bench database");
    pool.execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create the portable bench database");
    let portable = pg_eventstore_client::pool_options()
        .max_connections(16)
        .connect_with(options.clone().database(name))
        .await
        .expect("connect to the portable bench database");
    pg_eventstore_client::EventStore::from_pool(portable.clone())
        .migrate_with(pg_eventstore_client::Install::Portable)
        .await
        .expect("install the portable form");
    prepare_baseline(&portable).await;
    println!(
        "portable form (plain SQL and PL/pgSQL, no extension) append benchmark: {rounds} rounds of {seconds} s per variant, alternating"
    );
    let rows: Vec<(&Scenario, &PgPool, &PgPool)> = PORTABLE_SCENARIOS
        .iter()
        .map(|s| (s, &portable, &portable))
        .collect();
    let mut all_met = ratio_table(("INSERT ev/s", "append ev/s"), &rows, seconds, rounds).await;
    match std::env::var("MESSAGE_DB_URL") {
        Ok(url) => {
            let message_db = pg_eventstore_client::pool_options()
                .max_connections(16)
                .connect_with(
                    PgConnectOptions::from_str(&url)
                        .expect("a valid MESSAGE_DB_URL")
                        .options([("search_path", "message_store,public")]),
                )
                .await
                .expect("connect to Message DB");
            let version: String =
                sqlx::query_scalar("SELECT message_store.message_store_version()")
                    .fetch_one(&message_db)
                    .await
                    .expect("Message DB's version");
            println!("portable append against Message DB {version}'s write_message, in its own database on the same server");
            all_met &= ratio_table(
                ("write_message ev/s", "append ev/s"),
                &[(&MESSAGE_DB_SCENARIO, &message_db, &portable)],
                seconds,
                rounds,
            )
            .await;
        }
        Err(_) => {
            println!("portable append against Message DB: not measured (MESSAGE_DB_URL is not set; scripts/bench.sh installs Message DB) MISSED");
            all_met = false;
        }
    }
    all_met
}

/// Measures each row's subject against its baseline in alternating rounds and prints the
/// ratios with their targets; true when every target is met.
async fn ratio_table(
    (baseline_label, subject_label): (&str, &str),
    rows: &[(&Scenario, &PgPool, &PgPool)],
    seconds: u64,
    rounds: u64,
) -> bool {
    println!(
        "{:<32} {:>18} {:>14} {:>7} {:>8}",
        "scenario", baseline_label, subject_label, "ratio", "target"
    );
    let duration = Duration::from_secs(seconds);
    let mut all_met = true;
    for &(scenario, baseline_pool, subject_pool) in rows {
        let pool_of = |variant: Variant| {
            if variant == scenario.baseline {
                baseline_pool
            } else {
                subject_pool
            }
        };
        // Warm both paths (plan caches, first pages) before measuring.
        for variant in [scenario.baseline, scenario.subject] {
            phase(
                pool_of(variant),
                scenario,
                variant,
                Duration::from_millis(500),
            )
            .await;
        }
        let (mut baseline, mut subject) = (0.0, 0.0);
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [scenario.baseline, scenario.subject]
            } else {
                [scenario.subject, scenario.baseline]
            };
            for variant in order {
                let rate = phase(pool_of(variant), scenario, variant, duration).await;
                if variant == scenario.baseline {
                    baseline += rate;
                } else {
                    subject += rate;
                }
            }
        }
        let per_call = scenario.events_per_call as f64;
        let (baseline, subject) = (
            baseline / rounds as f64 * per_call,
            subject / rounds as f64 * per_call,
        );
        let ratio = subject / baseline;
        let met = ratio >= scenario.target;
        all_met &= met;
        println!(
            "{:<32} {:>18.0} {:>14.0} {:>7.2} {:>5} {}",
            scenario.name,
            baseline,
            subject,
            ratio,
            format!(">={}", scenario.target),
            if met { "met" } else { "MISSED" }
        );
    }
    all_met
}
