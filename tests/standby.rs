//! A hot standby, taken with `pg_basebackup -R` from a primary under load: every write of the
//! API is refused with 25006 and a message that says the server is a standby; the reads, the
//! health view, the client's subscriptions and `eventstore tail` work there; the wake-up
//! worker never starts there; and once replay catches up, the standby's log equals the
//! primary's.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, SubscriptionOptions};
use pg_eventstore_tests::{eventstore_bin, eventually, read_all_from, settled, Cluster, PATIENCE};
use sqlx::PgPool;
use tokio::io::AsyncBufReadExt;

const WRITERS: usize = 3;

fn noted(n: usize) -> EventData {
    EventData::json("order-noted", serde_json::json!({ "n": n }))
}

/// Every write of the API, as a standby must refuse it.
const WRITES: &[&str] = &[
    "SELECT eventstore.append('order-x', '[{\"type\": \"t\", \"data\": {}}]')",
    "SELECT eventstore.try_append('order-x', '[{\"type\": \"t\", \"data\": {}}]')",
    "SELECT eventstore.create_group('another')",
    "SELECT eventstore.alter_group('billing', max_attempts => 3)",
    "SELECT eventstore.delete_group('billing')",
    "SELECT * FROM eventstore.fetch('billing', 'worker-1', 10)",
    "SELECT eventstore.ack('billing', 'worker-1', '{1}')",
    "SELECT eventstore.nack('billing', 'worker-1', '{1}')",
    "SELECT eventstore.park('billing', 'worker-1', '{1}')",
    "SELECT eventstore.replay_parked('billing')",
    "SELECT eventstore.drop_parked('billing')",
    "SELECT eventstore.rebase_positions()",
];

/// The reads a standby serves.
const READS: &[&str] = &[
    "SELECT count(*) FROM eventstore.read_stream('order-0-0')",
    "SELECT count(*) FROM eventstore.read_all(0, 100)",
    "SELECT count(*) FROM eventstore.read_category('order')",
    "SELECT eventstore.head_position()",
    "SELECT eventstore.stream_version('order-0-0')",
    "SELECT * FROM eventstore.health()",
    "SELECT * FROM eventstore.groups",
    "SELECT * FROM eventstore.parked('billing')",
];

async fn writer(store: EventStore, writer: usize, stop: Arc<AtomicBool>) -> usize {
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        store
            .append(
                &format!("order-{writer}-{}", n % 5),
                ExpectedVersion::Any,
                [noted(n)],
            )
            .await
            .unwrap();
        n += 1;
    }
    n
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT eventstore.head_position()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_standby_serves_reads_and_refuses_writes_with_25006() {
    let primary = Cluster::start("standby-primary", None);
    primary.create_database("app").await;
    let store = EventStore::connect(&primary.url("app")).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query("SELECT eventstore.create_group('billing')")
        .execute(store.pool())
        .await
        .unwrap();
    store
        .append("order-0-0", ExpectedVersion::NoStream, [noted(0)])
        .await
        .unwrap();
    settled(store.pool()).await;
    let parked: i32 = sqlx::query_scalar(
        "SELECT eventstore.park('billing', 'worker-1', \
                array(SELECT position FROM eventstore.fetch('billing', 'worker-1', 1)))",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(parked, 1);

    // The base backup is taken while writers append.
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w, stop.clone())))
        .collect();
    eventually(PATIENCE, "the writers have appended", || async {
        head(store.pool()).await > 0
            && sqlx::query_scalar::<_, i64>("SELECT count(*) FROM eventstore.events")
                .fetch_one(store.pool())
                .await
                .unwrap()
                > 100
    })
    .await;
    let standby = Cluster::standby_of(&primary, "standby-replica");
    let replica = EventStore::connect(&standby.url("app")).await.unwrap();
    let in_recovery: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()")
        .fetch_one(replica.pool())
        .await
        .unwrap();
    assert!(in_recovery);

    // Followers on the standby, started while the primary still takes writes.
    let mut subscription = replica
        .subscribe_to_all(SubscriptionOptions::default().poll_interval(Duration::from_millis(200)));
    let mut tail = tokio::process::Command::new(eventstore_bin())
        .args(["tail", "--from-start", "--format", "json"])
        .env("DATABASE_URL", standby.url("app"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("eventstore tail starts");

    for sql in WRITES {
        let error = sqlx::query(sql).execute(replica.pool()).await.unwrap_err();
        let error = error.as_database_error().expect("a database error");
        assert_eq!(error.code().as_deref(), Some("25006"), "{sql}: {error}");
        assert!(error.message().contains("standby"), "{sql}: {error}");
    }
    for sql in READS {
        sqlx::query(sql)
            .execute(replica.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let parked_there: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.parked('billing')")
        .fetch_one(replica.pool())
        .await
        .unwrap();
    assert_eq!(parked_there, 1);

    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        assert!(writer.await.unwrap() > 0);
    }
    settled(store.pool()).await;
    let primary_head = head(store.pool()).await;
    let primary_log = read_all_from(store.pool(), 0, 500).await;
    eventually(
        PATIENCE,
        "the standby replayed up to the primary's head",
        || async { head(replica.pool()).await == primary_head },
    )
    .await;
    assert_eq!(read_all_from(replica.pool(), 0, 500).await, primary_log);

    // The subscription followed by polling, in order, with nothing missing or repeated.
    let mut followed = Vec::with_capacity(primary_log.len());
    while followed.len() < primary_log.len() {
        let event = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("the subscription on the standby delivers")
            .expect("it goes on")
            .unwrap();
        followed.push(event.position as i64);
    }
    let positions: Vec<i64> = primary_log.iter().map(|e| e.position).collect();
    assert_eq!(followed, positions);

    // So did `eventstore tail`.
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut tailed = Vec::with_capacity(primary_log.len());
    while tailed.len() < primary_log.len() {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("eventstore tail prints")
            .unwrap()
            .expect("eventstore tail keeps running");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        tailed.push(event["position"].as_i64().unwrap());
    }
    assert_eq!(tailed, positions);
    tail.kill().await.unwrap();

    // No wake-up worker on the standby, and nothing of ours in its log but the refusals.
    let workers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'pg_eventstore wake-ups'",
    )
    .fetch_one(replica.pool())
    .await
    .unwrap();
    assert_eq!(workers, 0);
    let log = standby.server_log();
    for line in log.lines() {
        assert!(
            !line.contains("wake-ups") && !line.contains("TransactionIds"),
            "unexpected in the standby's log: {line}"
        );
    }
    replica.pool().close().await;
    store.pool().close().await;
}
