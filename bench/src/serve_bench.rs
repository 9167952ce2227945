//! `eventstore serve` against the store's own client: appends through EventStoreDB's Rust
//! client (`kurrentdb`, over gRPC to `eventstore serve` on loopback) with 1 and 8 concurrent
//! callers, against the same appends through `EventStore::append`; and a `$all` catch-up
//! read through each. The server runs as its own process; both sides use the same database
//! in the same rounds, alternating which goes first.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, ReadAllOptions};

/// Events read per catch-up run.
const CATCH_UP: u64 = 100_000;

/// `eventstore serve` as its own process, as it is deployed: the release build beside this
/// one (`scripts/bench.sh` builds it), on a free loopback port. Killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the server against `url`; returns it and a client connected to it.
fn start(url: &str) -> (Server, kurrentdb::Client) {
    use std::io::BufRead;
    let bin = std::env::current_exe()
        .expect("the bench's path")
        .with_file_name("eventstore");
    let mut child = std::process::Command::new(&bin)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{} starts ({e}): build it with cargo build --release -p pg_eventstore_cli",
                bin.display()
            )
        });
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .expect("the server says where it listens");
    let url = line
        .trim()
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let settings: kurrentdb::ClientSettings = url.parse().expect("a connection string");
    (
        Server(child),
        kurrentdb::Client::new(settings).expect("a client"),
    )
}

#[derive(Clone, Copy)]
enum Side {
    Direct,
    Served,
}

/// Events/s of `callers` tasks appending one event per call to random streams for
/// `duration`, through `side`.
async fn appends(
    store: &EventStore,
    client: &kurrentdb::Client,
    side: Side,
    callers: usize,
    duration: Duration,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let appended = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (store, client) = (store.clone(), client.clone());
        let (stop, appended) = (stop.clone(), appended.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (stream, data) = {
                    let mut rng = rand::thread_rng();
                    (super::random_stream(&mut rng), super::event_data(&mut rng))
                };
                match side {
                    Side::Direct => {
                        store
                            .append(
                                &stream,
                                ExpectedVersion::Any,
                                [EventData::json("order-noted", data)],
                            )
                            .await
                            .expect("append");
                    }
                    Side::Served => {
                        let event = kurrentdb::EventData::json("order-noted", &data)
                            .expect("JSON data")
                            .id(uuid::Uuid::new_v4());
                        client
                            .append_to_stream(stream, &Default::default(), event)
                            .await
                            .expect("append over gRPC");
                    }
                }
                appended.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("an append task");
    }
    appended.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Events/s of reading the first [`CATCH_UP`] events of `$all` through `side`.
async fn catch_up(store: &EventStore, client: &kurrentdb::Client, side: Side) -> f64 {
    let started = Instant::now();
    let count = match side {
        Side::Direct => store
            .read_all(ReadAllOptions::default().page_size(2_000).limit(CATCH_UP))
            .try_fold(0_u64, |n, event| async move {
                std::hint::black_box(&event);
                Ok(n + 1)
            })
            .await
            .expect("read_all"),
        Side::Served => {
            let options = kurrentdb::ReadAllOptions::default()
                .position(kurrentdb::StreamPosition::Start)
                .forwards()
                .max_count(CATCH_UP as usize);
            let mut read = client.read_all(&options).await.expect("read $all");
            let mut n = 0_u64;
            while let Some(event) = read.next().await.expect("read $all goes on") {
                std::hint::black_box(&event);
                n += 1;
            }
            n
        }
    };
    assert_eq!(count, CATCH_UP, "both readers read every event");
    count as f64 / started.elapsed().as_secs_f64()
}

/// Prints the table; true when every target is met.
pub async fn run(store: &EventStore, url: &str, seconds: u64, rounds: u64) -> bool {
    let (_server, client) = start(url);
    let duration = Duration::from_secs(seconds);
    println!();
    println!(
        "{:<32} {:>14} {:>14} {:>7} {:>8}",
        "eventstore serve (gRPC)", "client ev/s", "served ev/s", "ratio", "target"
    );
    let mut all_met = true;
    let mut report = |name: String, direct: f64, served: f64, target: f64| {
        let ratio = served / direct;
        let met = ratio >= target;
        all_met &= met;
        println!(
            "{:<32} {:>14.0} {:>14.0} {:>7.2} {:>8} {}",
            name,
            direct,
            served,
            ratio,
            format!(">={target}"),
            if met { "met" } else { "MISSED" }
        );
    };
    for callers in [1, 8] {
        // A short warm-up of both sides: connections, prepared statements, HTTP/2.
        let warm = Duration::from_millis(500);
        appends(store, &client, Side::Direct, callers, warm).await;
        appends(store, &client, Side::Served, callers, warm).await;
        let (mut direct, mut served) = (0.0, 0.0);
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Side::Direct, Side::Served]
            } else {
                [Side::Served, Side::Direct]
            };
            for side in order {
                let rate = appends(store, &client, side, callers, duration).await;
                match side {
                    Side::Direct => direct += rate,
                    Side::Served => served += rate,
                }
            }
        }
        report(
            format!("append 1 event, {callers} caller(s)"),
            direct / rounds as f64,
            served / rounds as f64,
            0.7,
        );
    }
    super::client_bench::fill(store, CATCH_UP).await;
    catch_up(store, &client, Side::Direct).await;
    let (mut direct, mut served) = (0.0, 0.0);
    for round in 0..rounds {
        if round % 2 == 0 {
            direct += catch_up(store, &client, Side::Direct).await;
            served += catch_up(store, &client, Side::Served).await;
        } else {
            served += catch_up(store, &client, Side::Served).await;
            direct += catch_up(store, &client, Side::Direct).await;
        }
    }
    report(
        format!("$all catch-up, {CATCH_UP} events"),
        direct / rounds as f64,
        served / rounds as f64,
        0.5,
    );
    all_met
}
