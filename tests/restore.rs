//! A logical dump and restore (pg_dump/pg_restore in custom and plain formats, a data-only
//! dump of the store's schemas, a COPY of the events) into other clusters: one whose
//! transaction counter is far below the source's, one far above. Afterwards appends to
//! restored and new streams work at once, above every restored position, and a subscriber,
//! a group and a projection continue from their restored checkpoints with nothing skipped
//! or repeated.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use pg_eventstore_client::projection::{ApplyError, Daemon, DaemonOptions, Projection};
use pg_eventstore_client::SubscriptionOptions;
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, RecordedEvent};
use pg_eventstore_tests::{eventually, read_all_from, settled, Cluster, LogEntry, PATIENCE};
use sqlx::{PgConnection, PgPool};

/// The source's transaction counter: it has run for a while.
const SOURCE_XID: u64 = 50_000_000;
/// A target that has run far longer than the source.
const BUSIER_XID: u64 = 200_000_000;
const STREAMS: [&str; 3] = ["order-1", "order-2", "order-3"];
const PER_STREAM: u64 = 10;

/// Records every position it applies; the primary key refuses a repeat.
struct Seen;

impl Projection for Seen {
    fn name(&self) -> &str {
        "seen"
    }

    fn event_types(&self) -> Vec<String> {
        vec!["noted".to_owned()]
    }

    fn schema(&self) -> &str {
        "audit"
    }

    fn tables(&self) -> Vec<String> {
        vec!["seen".to_owned()]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let positions: Vec<i64> = events.iter().map(|e| e.position as i64).collect();
            sqlx::query(&format!(
                "INSERT INTO {schema}.seen (position) SELECT unnest($1::int8[])"
            ))
            .bind(positions)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
    }
}

async fn create_audit_table(pool: &PgPool) {
    sqlx::raw_sql("CREATE SCHEMA audit; CREATE TABLE audit.seen (position bigint PRIMARY KEY)")
        .execute(pool)
        .await
        .unwrap();
}

fn noted() -> EventData {
    EventData::json("noted", serde_json::json!({}))
}

/// Runs the projection until its checkpoint reaches `position`.
async fn project_through(store: &EventStore, position: i64) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(
        Daemon::new(
            store.clone(),
            DaemonOptions::default().poll_interval(Duration::from_millis(100)),
        )
        .with(Seen)
        .run(async {
            let _ = stopped.await;
        }),
    );
    eventually(PATIENCE, "the projection reached the head", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT coalesce(max(position), 0) FROM projections.checkpoints WHERE name = 'seen'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap()
            >= position
    })
    .await;
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
}

/// Fetches and acks everything `consumer` gets from group `billing` until the acked
/// positions are `wanted`; returns the positions it acked, each once.
async fn drain_group(pool: &PgPool, consumer: &str, wanted: &BTreeSet<i64>) -> BTreeSet<i64> {
    let mut acked = BTreeSet::new();
    let started = std::time::Instant::now();
    while &acked != wanted {
        assert!(
            started.elapsed() < PATIENCE,
            "timed out waiting for the group to deliver every open event; acked {acked:?}"
        );
        let fetched: Vec<i64> =
            sqlx::query_scalar("SELECT position FROM eventstore.fetch('billing', $1, 100)")
                .bind(consumer)
                .fetch_all(pool)
                .await
                .unwrap();
        if fetched.is_empty() {
            // The leases caught by the dump run out within a second.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let count: i32 = sqlx::query_scalar("SELECT eventstore.ack('billing', $1, $2)")
            .bind(consumer)
            .bind(&fetched)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(count as usize, fetched.len());
        for position in fetched {
            assert!(acked.insert(position), "{position} was delivered twice");
        }
    }
    acked
}

/// What the source held when it was dumped.
struct Source {
    log: Vec<LogEntry>,
    /// Acked by the source's consumer: never delivered again.
    acked: BTreeSet<i64>,
    /// A subscriber's checkpoint: it has handled everything up to here.
    subscriber_at: i64,
}

async fn fill_source(url: &str) -> Source {
    let store = EventStore::connect(url).await.unwrap();
    store.migrate().await.unwrap();
    create_audit_table(store.pool()).await;
    // The leases the dump catches run out soon after, so the target delivers them again.
    sqlx::query("SELECT eventstore.create_group('billing', lease_timeout => '1 second')")
        .execute(store.pool())
        .await
        .unwrap();
    for n in 0..PER_STREAM {
        for stream in STREAMS {
            let expected = if n == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(n - 1)
            };
            store.append(stream, expected, [noted()]).await.unwrap();
        }
    }
    settled(store.pool()).await;
    let fetched: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.fetch('billing', 'worker-1', 10)")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(fetched.len(), 10);
    let acked: Vec<i64> = fetched[..5].to_vec();
    sqlx::query("SELECT eventstore.ack('billing', 'worker-1', $1)")
        .bind(&acked)
        .execute(store.pool())
        .await
        .unwrap();
    let log = read_all_from(store.pool(), 0, 7).await;
    assert_eq!(log.len(), STREAMS.len() * PER_STREAM as usize);
    assert!(
        (log[0].position >> 20) as u64 >= SOURCE_XID,
        "the source's positions carry its transaction ids"
    );
    project_through(&store, log.last().unwrap().position).await;
    store.pool().close().await;
    Source {
        subscriber_at: log[19].position,
        log,
        acked: acked.into_iter().collect(),
    }
}

/// Everything that must hold in a target after the restore. `checkpoints`: the group and
/// projection state came along (not for a COPY of the events alone).
async fn check_continues(url: &str, source: &Source, checkpoints: bool) {
    let store = EventStore::connect(url).await.unwrap();
    let pool = store.pool().clone();
    settled(&pool).await;
    assert_eq!(
        read_all_from(&pool, 0, 7).await,
        source.log,
        "the log as it was"
    );
    let top = source.log.last().unwrap().position;

    // Appends to a restored stream and to a new one, at once and above every restored event.
    let restored = store
        .append("order-1", ExpectedVersion::Exact(PER_STREAM - 1), [noted()])
        .await
        .unwrap();
    assert!(restored.first_position as i64 > top);
    let fresh = store
        .append("order-4", ExpectedVersion::NoStream, [noted()])
        .await
        .unwrap();
    assert!(fresh.first_position > restored.last_position);
    settled(&pool).await;
    let log = read_all_from(&pool, 0, 7).await;
    assert_eq!(log.len(), source.log.len() + 2);

    // A subscriber resuming from its checkpoint gets exactly what came after it.
    let wanted: Vec<i64> = log
        .iter()
        .map(|e| e.position)
        .filter(|p| *p > source.subscriber_at)
        .collect();
    let mut subscription = store.subscribe_to_all(
        SubscriptionOptions::default()
            .after(source.subscriber_at as u64)
            .poll_interval(Duration::from_millis(100)),
    );
    let mut received = Vec::new();
    while received.len() < wanted.len() {
        let event = tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .expect("the subscription delivers")
            .expect("the subscription goes on")
            .unwrap();
        received.push(event.position as i64);
    }
    assert_eq!(received, wanted);

    if checkpoints {
        // The group: every event not acked in the source, once each, and the new ones.
        let all: BTreeSet<i64> = log.iter().map(|e| e.position).collect();
        let open: BTreeSet<i64> = all.difference(&source.acked).copied().collect();
        let acked = drain_group(&pool, "worker-2", &open).await;
        assert!(acked.is_disjoint(&source.acked));
        let groups: Vec<(String, i64)> =
            sqlx::query_as("SELECT group_name, lag FROM eventstore.groups")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(groups, [("billing".to_owned(), 0)]);
        // A new group gets an id of its own next to the restored one.
        sqlx::query("SELECT eventstore.create_group('shipping')")
            .execute(&pool)
            .await
            .unwrap();

        // The projection: continues from its checkpoint and applies each event once.
        project_through(&store, fresh.last_position as i64).await;
        let seen: Vec<i64> = sqlx::query_scalar("SELECT position FROM audit.seen ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(seen, all.iter().copied().collect::<Vec<_>>());
        let applied: i64 = sqlx::query_scalar(
            "SELECT events_applied FROM projections.checkpoints WHERE name = 'seen'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(applied as usize, log.len());
    }
    pool.close().await;
}

async fn position_base(url: &str) -> i64 {
    let mut conn = <PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT base FROM eventstore.position_base")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logical_restore_into_other_clusters_keeps_the_log_going() {
    let source = Cluster::start("restore-source", Some(SOURCE_XID));
    source.create_database("app").await;
    let state = fill_source(&source.url("app")).await;

    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pg/restore-dumps");
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).unwrap();
    let file = |name: &str| folder.join(name).to_str().unwrap().to_owned();
    let app = source.url("app");
    source.run("pg_dump", &["-Fc", "-f", &file("custom.dump"), &app]);
    source.run("pg_dump", &["-Fp", "-f", &file("plain.sql"), &app]);
    source.run(
        "pg_dump",
        &[
            "-Fc",
            "--data-only",
            "-n",
            "eventstore",
            "-n",
            "projections",
            "-n",
            "audit",
            "-f",
            &file("schemas.dump"),
            &app,
        ],
    );
    let copy_out = format!("\\copy eventstore.events TO '{}'", file("events.copy"));
    source.run(
        "psql",
        &["-X", "-v", "ON_ERROR_STOP=1", "-c", &copy_out, &app],
    );
    drop(source);

    // A fresh cluster: its transaction ids are 50 million below the restored positions.
    let fresh = Cluster::start("restore-fresh", None);
    fresh.create_database("custom").await;
    fresh.run(
        "pg_restore",
        &[
            "--exit-on-error",
            "-d",
            &fresh.url("custom"),
            &file("custom.dump"),
        ],
    );
    assert!(position_base(&fresh.url("custom")).await > 0);
    check_continues(&fresh.url("custom"), &state, true).await;

    fresh.create_database("plain").await;
    fresh.run(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            &file("plain.sql"),
            &fresh.url("plain"),
        ],
    );
    check_continues(&fresh.url("plain"), &state, true).await;

    // The events alone, copied into a fresh install.
    fresh.create_database("copied").await;
    EventStore::connect(&fresh.url("copied"))
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    let copy_in = format!("\\copy eventstore.events FROM '{}'", file("events.copy"));
    fresh.run(
        "psql",
        &[
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            &copy_in,
            &fresh.url("copied"),
        ],
    );
    check_continues(&fresh.url("copied"), &state, false).await;
    drop(fresh);

    // A cluster far ahead of the source, restored schema by schema into a migrated database:
    // the restored positions lie below its ids and need no new base.
    let busier = Cluster::start("restore-busier", Some(BUSIER_XID));
    busier.create_database("schemas").await;
    let store = EventStore::connect(&busier.url("schemas")).await.unwrap();
    store.migrate().await.unwrap();
    create_audit_table(store.pool()).await;
    store.pool().close().await;
    busier.run(
        "pg_restore",
        &[
            "--exit-on-error",
            "--data-only",
            "-d",
            &busier.url("schemas"),
            &file("schemas.dump"),
        ],
    );
    assert_eq!(position_base(&busier.url("schemas")).await, 0);
    check_continues(&busier.url("schemas"), &state, true).await;
}
