//! The projection daemon: the rates of the shop projection into `shop.users` +
//! `shop.orders` over a generated log, catching up from zero in a daemon and rebuilding
//! (target: 150,000 events/s each), against reading the same events through `read_all` in
//! the same run; and the live lag from append to read model with 8 writers running.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_eventstore_client::projection::{self, Daemon, DaemonOptions};
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion};
use pg_eventstore_shop::ShopProjection;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

const DATABASE: &str = "bench_projection";
const USERS: u64 = 10_000;
const TARGET: f64 = 150_000.0;

/// A database of its own with the migrations applied.
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
    let store = EventStore::from_pool(pool);
    pg_eventstore_shop::migrate(&store).await.expect("migrate");
    store
}

/// Appends `USERS` users, then orders (placed, paid, shipped or cancelled) until about
/// `total` events, server-side in chunks.
async fn fill(pool: &PgPool, total: u64) -> u64 {
    let started = Instant::now();
    sqlx::query(
        "SELECT eventstore.append('user-u' || i, jsonb_build_array(jsonb_build_object( \
             'type', 'user-created', \
             'data', jsonb_build_object('username', 'u' || i, 'fullName', 'User ' || i))), -1) \
         FROM generate_series(1, $1::int) AS i",
    )
    .bind(USERS as i32)
    .execute(pool)
    .await
    .expect("users");
    // Placed, paid, then shipped or (one in ten) cancelled; one in seven stays placed: 19/7
    // events per order.
    let orders = total.saturating_sub(USERS) * 7 / 19;
    let chunk = 20_000;
    let mut first = 0;
    while first < orders {
        let last = (first + chunk).min(orders);
        sqlx::query(
            "SELECT eventstore.append('order-' || i, \
                 jsonb_build_array(jsonb_build_object('type', 'order-placed', 'data', \
                     jsonb_build_object('username', 'u' || (1 + i % $3), 'currency', 'EUR', \
                         'items', jsonb_build_array( \
                             jsonb_build_object('sku', 'espresso', 'qty', 1 + i % 3, 'price', 2.4), \
                             jsonb_build_object('sku', 'mug', 'qty', 1, 'price', 9.5))))) \
                 || CASE WHEN i % 7 = 0 THEN '[]'::jsonb ELSE jsonb_build_array( \
                     jsonb_build_object('type', 'order-paid', 'data', \
                         jsonb_build_object('amount', 2.4 * (1 + i % 3) + 9.5, 'method', 'card')), \
                     CASE WHEN i % 10 = 0 \
                          THEN jsonb_build_object('type', 'order-cancelled', 'data', \
                                   jsonb_build_object('reason', 'refund')) \
                          ELSE jsonb_build_object('type', 'order-shipped', 'data', \
                                   jsonb_build_object('carrier', 'dhl', 'trackingNumber', 'T' || i)) \
                     END) END, \
                 -1) \
             FROM generate_series($1::int, $2::int - 1) AS i",
        )
        .bind(first as i32)
        .bind(last as i32)
        .bind(USERS as i32)
        .execute(pool)
        .await
        .expect("orders");
        first = last;
    }
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(pool)
        .await
        .expect("count");
    eprintln!(
        "  (generated {events} shop events in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    sqlx::query("VACUUM ANALYZE eventstore.events")
        .execute(pool)
        .await
        .expect("vacuum");
    u64::try_from(events).unwrap_or_default()
}

pub async fn run(admin: &PgPool, options: &PgConnectOptions, total: u64, seconds: u64) -> bool {
    println!();
    println!("projection daemon: shop.users + shop.orders");
    let store = database(admin, options).await;
    let events = fill(store.pool(), total).await;

    // Reading every event through the client, as the projection does: the baseline.
    let (_, read) = crate::client_bench::client_catch_up(&store, u64::MAX).await;

    // Catch-up: a daemon started on the whole log with empty tables (a first deployment,
    // or one that was down), until its checkpoint reaches the head.
    let head: i64 = sqlx::query_scalar("SELECT eventstore.head_position()")
        .fetch_one(store.pool())
        .await
        .expect("head");
    let started = Instant::now();
    let daemon = Running::start(&store);
    loop {
        let position: i64 =
            sqlx::query_scalar("SELECT position FROM projections.checkpoints WHERE name = 'shop'")
                .fetch_optional(store.pool())
                .await
                .expect("checkpoint")
                .unwrap_or_default();
        if position >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up = events as f64 / started.elapsed().as_secs_f64();
    daemon.stop().await;

    // Rebuild: empties the tables and applies the log again.
    let started = Instant::now();
    let applied = projection::rebuild(&store, &ShopProjection, 5_000, |_| {})
        .await
        .expect("rebuild");
    let rebuild = applied as f64 / started.elapsed().as_secs_f64();
    let mut met = true;
    for (what, rate) in [("catch-up", catch_up), ("rebuild", rebuild)] {
        met &= rate >= TARGET;
        println!(
            "  {what:<8} over {events} events: {rate:>9.0} events/s (target {TARGET:.0}: {}); \
             reading the same events through read_all: {read:.0}/s, ratio {:.2}",
            if rate >= TARGET { "met" } else { "MISSED" },
            rate / read
        );
    }

    // Live: a daemon follows 8 writers; a probe measures append-to-read-model time.
    let daemon = Running::start(&store);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = Arc::new(AtomicBool::new(true));
    let appended = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let store = store.clone();
            let running = running.clone();
            let appended = appended.clone();
            tokio::spawn(async move {
                let mut n = 0_u64;
                while running.load(Ordering::Relaxed) {
                    n += 1;
                    let user = 1 + (writer * 7_919 + n) % USERS;
                    store
                        .append(
                            &format!("order-live{writer}x{n}"),
                            ExpectedVersion::NoStream,
                            [placed(user)],
                        )
                        .await
                        .expect("writer append");
                    appended.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut lags = Vec::new();
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut probe = 0;
    while Instant::now() < until {
        probe += 1;
        let order = format!("probe{probe}");
        let sent = Instant::now();
        store
            .append(
                &format!("order-{order}"),
                ExpectedVersion::NoStream,
                [placed(1)],
            )
            .await
            .expect("probe append");
        loop {
            let seen: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT FROM shop.orders WHERE order_id = $1)")
                    .bind(&order)
                    .fetch_one(store.pool())
                    .await
                    .expect("probe read");
            if seen {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lags.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.store(false, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer");
    }
    let writes = appended.load(Ordering::Relaxed) as f64 / seconds as f64;
    daemon.stop().await;
    lags.sort();
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize].as_secs_f64() * 1000.0;
    println!(
        "  live lag, append to shop.orders, 8 writers at {writes:.0} appends/s: \
         p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes)",
        at(0.5),
        at(0.99),
        at(1.0),
        lags.len()
    );
    let _ = store.pool().close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
        .execute(admin)
        .await
        .expect("drop the bench database");
    met
}

/// A daemon running the shop projection in this process.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<pg_eventstore_client::Result<()>>,
}

impl Running {
    fn start(store: &EventStore) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            Daemon::new(store.clone(), DaemonOptions::default())
                .with(ShopProjection)
                .run(async {
                    let _ = stopped.await;
                }),
        );
        Running { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("daemon task").expect("daemon");
    }
}

fn placed(user: u64) -> EventData {
    EventData::json(
        "order-placed",
        serde_json::json!({
            "username": format!("u{user}"),
            "currency": "EUR",
            "items": [{"sku": "espresso", "qty": 2, "price": 2.4}],
        }),
    )
}
