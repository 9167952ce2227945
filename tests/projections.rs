//! The projection daemon and the shop read models against a real server: daemons killed
//! with SIGKILL mid catch-up, two daemons handing a projection over, replay to a point,
//! failing events, and the shop's business rules.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use pg_eventstore_client::projection::{
    self, ApplyError, Daemon, DaemonOptions, Projection, ProjectionState, ReplayUntil,
};
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, RecordedEvent};
use pg_eventstore_shop::{ShopProjection, EVENT_TYPES as SHOP_EVENT_TYPES};
use pg_eventstore_tests::{eventstore_bin, eventually, settled, TestDb, PATIENCE};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::{PgConnection, PgPool, Row};
use tokio::process::{Child, Command};

async fn migrated(connections: u32) -> (TestDb, EventStore) {
    let db = TestDb::new(connections).await;
    let store = EventStore::from_pool(db.pool.clone());
    pg_eventstore_shop::migrate(&store).await.unwrap();
    (db, store)
}

fn command(db: &TestDb, args: &[&str]) -> Command {
    let mut command = Command::new(eventstore_bin());
    command
        .args(args)
        .env("DATABASE_URL", db.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    command
}

/// The application name of a daemon's pool connections (its runners name theirs
/// [`SHOP_RUNNER`]).
const DAEMON: &str = "eventstore daemon";

/// Starts `eventstore run` with `args`.
fn daemon(db: &TestDb, args: &[&str]) -> Child {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let url = db.url();
    let separator = if url.contains('?') { '&' } else { '?' };
    command(db, &all)
        .env(
            "DATABASE_URL",
            format!(
                "{url}{separator}application_name={}",
                DAEMON.replace(' ', "%20")
            ),
        )
        .spawn()
        .expect("start the daemon")
}

/// Runs `eventstore generate` with `args` to completion.
async fn generate(db: &TestDb, args: &[&str]) {
    let mut all = vec!["generate"];
    all.extend_from_slice(args);
    let status = command(db, &all).status().await.unwrap();
    assert!(status.success(), "eventstore generate {args:?}: {status}");
}

fn terminate(child: &Child) {
    let pid = child.id().expect("still running") as libc::pid_t;
    // SAFETY: kill(2) on the pid of a child we have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

struct Checkpoint {
    position: i64,
    applied: i64,
    owner: Option<String>,
}

async fn checkpoint(pool: &PgPool, name: &str) -> Checkpoint {
    let row = sqlx::query(
        "SELECT position, events_applied, owner FROM projections.checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .unwrap();
    match row {
        Some(row) => Checkpoint {
            position: row.get(0),
            applied: row.get(1),
            owner: row.get(2),
        },
        None => Checkpoint {
            position: 0,
            applied: 0,
            owner: None,
        },
    }
}

async fn head(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT eventstore.head_position()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Shop events through `position`: what exactly-once application must have counted.
async fn shop_events_through(pool: &PgPool, position: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events WHERE type = ANY($1) AND position <= $2",
    )
    .bind(SHOP_EVENT_TYPES.to_vec())
    .bind(position)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn caught_up(pool: &PgPool) {
    settled(pool).await;
    let target = head(pool).await;
    eventually(PATIENCE, "the shop projection caught up", || async {
        checkpoint(pool, "shop").await.position >= target
    })
    .await;
}

/// Asserts that two schemas' shop tables hold the same rows, and returns the row counts.
async fn assert_same_tables(pool: &PgPool, left: &str, right: &str) -> (i64, i64) {
    for table in ["users", "orders", "anomalies"] {
        let differing: i64 = sqlx::query_scalar(&format!(
            "SELECT (SELECT count(*) FROM (TABLE {left}.{table} EXCEPT ALL TABLE {right}.{table}) a) \
                  + (SELECT count(*) FROM (TABLE {right}.{table} EXCEPT ALL TABLE {left}.{table}) b)"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        if differing > 0 {
            let sample: Vec<String> = sqlx::query_scalar(&format!(
                "(SELECT '{left}: ' || a::text FROM (TABLE {left}.{table} EXCEPT ALL TABLE {right}.{table}) a LIMIT 3) \
                 UNION ALL \
                 (SELECT '{right}: ' || b::text FROM (TABLE {right}.{table} EXCEPT ALL TABLE {left}.{table}) b LIMIT 3)"
            ))
            .fetch_all(pool)
            .await
            .unwrap();
            panic!(
                "{left}.{table} and {right}.{table} differ in {differing} rows, e.g.\n{}",
                sample.join("\n")
            );
        }
    }
    let count = |table: &'static str| {
        let sql = format!("SELECT count(*) FROM {left}.{table}");
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(pool)
                .await
                .unwrap()
        }
    };
    (count("users").await, count("orders").await)
}

async fn replay_through(store: &EventStore, schema: &str, position: i64) {
    let report = projection::replay(
        store,
        &ShopProjection,
        schema,
        ReplayUntil::Position(position as u64),
        true,
        1000,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.position, position as u64);
}

/// The application name of a projection's runner session.
const SHOP_RUNNER: &str = "eventstore projection shop";

/// Sessions of daemons (their pools and runners) connected to `db` now.
async fn daemon_sessions(pool: &PgPool, waiting_on_a_lock: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name IN ($1, $2) \
           AND (NOT $3 OR wait_event_type = 'Lock')",
    )
    .bind(SHOP_RUNNER)
    .bind(DAEMON)
    .bind(waiting_on_a_lock)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// While it is held, every write to `projections.checkpoints` waits: a runner's batch waits
/// at its checkpoint update, its read-model writes made and not committed.
struct Gate(PgConnection);

impl Gate {
    async fn close(db: &TestDb) -> Gate {
        let mut connection = db.connect().await;
        Gate::lock(&mut connection).await;
        Gate(connection)
    }

    async fn lock(connection: &mut PgConnection) {
        sqlx::query("BEGIN")
            .execute(&mut *connection)
            .await
            .unwrap();
        // SHARE: reads go on, writes wait. No transaction id is taken, so the log is not
        // held back.
        sqlx::query("LOCK TABLE projections.checkpoints IN SHARE MODE")
            .execute(&mut *connection)
            .await
            .unwrap();
    }

    /// Waits until the daemon is stopped at the gate (its runner's batch, or its first
    /// checkpoint write).
    async fn daemon_waits(pool: &PgPool) {
        eventually(PATIENCE, "the daemon waits at the gate", || async {
            daemon_sessions(pool, true).await == 1
        })
        .await;
    }

    /// Lets the waiting write through, and closes again once its transaction ended.
    async fn step(&mut self) {
        sqlx::query("COMMIT").execute(&mut self.0).await.unwrap();
        Gate::lock(&mut self.0).await;
    }

    async fn open(mut self) {
        sqlx::query("ROLLBACK").execute(&mut self.0).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_at_random_moments_leaves_what_a_rebuild_builds() {
    let (db, store) = migrated(4).await;
    generate(&db, &["--users", "300", "--orders", "4000", "--seed", "1"]).await;
    let mut rng = StdRng::seed_from_u64(11);
    let mut mid_batch = 0;
    for round in 0..10 {
        if round > 0 {
            // The log grows between kills, so each restart has catching up to do.
            let prefix = format!("r{round}-");
            generate(
                &db,
                &["--users", "20", "--orders", "400", "--prefix", &prefix],
            )
            .await;
        }
        // Every other round the kill lands at a random point in time, wherever the daemon
        // is (folding pages in memory, or writing them); the others hold it mid-batch, after
        // a random number of committed batches, writing after every batch.
        let gated = round % 2 == 0;
        let gate = if gated {
            Some(Gate::close(&db).await)
        } else {
            None
        };
        let write_every = if gated { "0" } else { "0.2" };
        let mut child = daemon(&db, &["--batch-size", "25", "--write-every", write_every]);
        if let Some(mut gate) = gate {
            for _ in 0..rng.gen_range(0..6) {
                Gate::daemon_waits(&db.pool).await;
                gate.step().await;
            }
            Gate::daemon_waits(&db.pool).await;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
            gate.open().await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..700))).await;
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
        // The server notices the killed process's sessions go; with them go its locks.
        eventually(
            PATIENCE,
            "the killed daemon's sessions are gone",
            || async { daemon_sessions(&db.pool, false).await == 0 },
        )
        .await;
        let stats = projection::status(&store, &[&ShopProjection])
            .await
            .unwrap();
        assert_eq!(stats[0].owner, None, "a killed daemon owns nothing");
        let at = checkpoint(&db.pool, "shop").await;
        let head = head(&db.pool).await;
        if gated {
            assert!(
                at.position < head,
                "the daemon was killed with its catch-up unfinished"
            );
            mid_batch += 1;
        }
        // Each event through the checkpoint was applied exactly once, and the tables are
        // what a replay through that position builds.
        assert_eq!(at.applied, shop_events_through(&db.pool, at.position).await);
        replay_through(&store, "rebuilt", at.position).await;
        assert_same_tables(&db.pool, "shop", "rebuilt").await;
    }
    assert_eq!(mid_batch, 5);

    let child = daemon(&db, &["--batch-size", "500", "--owner", "last"]);
    eventually(PATIENCE, "the last daemon runs the projection", || async {
        let stats = projection::status(&store, &[&ShopProjection])
            .await
            .unwrap();
        stats[0].owner.as_deref() == Some("last")
    })
    .await;
    caught_up(&db.pool).await;
    terminate(&child);
    let status = child.wait_with_output().await.unwrap().status;
    assert!(
        status.success(),
        "SIGTERM ends the daemon cleanly: {status}"
    );
    let at = checkpoint(&db.pool, "shop").await;
    assert_eq!(
        at.owner, None,
        "a daemon that stops releases its projections"
    );
    assert_eq!(at.applied, shop_events_through(&db.pool, at.position).await);
    replay_through(&store, "rebuilt", at.position).await;
    let (users, orders) = assert_same_tables(&db.pool, "shop", "rebuilt").await;
    assert_eq!(users, 300 + 9 * 20);
    assert!(orders > 7000, "{orders} orders");
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_daemons_one_runs_the_projection_and_the_other_takes_over_when_it_dies() {
    let (db, store) = migrated(4).await;
    generate(&db, &["--users", "200", "--orders", "500"]).await;
    let args = |owner: &'static str| {
        [
            "--owner",
            owner,
            "--takeover-interval",
            "0.2",
            "--batch-size",
            "100",
        ]
    };
    let mut daemons = vec![
        ("a", daemon(&db, &args("a"))),
        ("b", daemon(&db, &args("b"))),
    ];
    eventually(PATIENCE, "a daemon owns the projection", || async {
        checkpoint(&db.pool, "shop").await.owner.is_some()
    })
    .await;
    let holders: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND l.granted \
           AND a.datname = current_database() \
           AND a.application_name = 'eventstore projection shop'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(holders, 1, "exactly one session holds the projection");

    // Appends keep coming while the runner is killed.
    let writer = command(
        &db,
        &[
            "generate", "--users", "100", "--orders", "3000", "--prefix", "live",
        ],
    )
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let owner = checkpoint(&db.pool, "shop").await.owner.unwrap();
    let index = daemons.iter().position(|(name, _)| *name == owner).unwrap();
    let (killed, mut child) = daemons.remove(index);
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let (survivor, survivor_child) = daemons.pop().unwrap();
    eventually(PATIENCE, "the other daemon took over", || async {
        checkpoint(&db.pool, "shop").await.owner.as_deref() == Some(survivor)
    })
    .await;
    assert_ne!(killed, survivor);
    assert!(writer.wait_with_output().await.unwrap().status.success());
    caught_up(&db.pool).await;
    terminate(&survivor_child);
    assert!(survivor_child
        .wait_with_output()
        .await
        .unwrap()
        .status
        .success());

    let at = checkpoint(&db.pool, "shop").await;
    assert_eq!(
        at.applied,
        shop_events_through(&db.pool, at.position).await,
        "no event applied twice or skipped"
    );
    replay_through(&store, "rebuilt", at.position).await;
    let (users, _) = assert_same_tables(&db.pool, "shop", "rebuilt").await;
    assert_eq!(users, 300);
    db.drop_database().await;
}

/// The shop projection, counting the states runners take from it.
struct CountedShop(Arc<AtomicUsize>);

impl Projection for CountedShop {
    fn name(&self) -> &str {
        ShopProjection.name()
    }

    fn event_types(&self) -> Vec<String> {
        ShopProjection.event_types()
    }

    fn schema(&self) -> &str {
        ShopProjection.schema()
    }

    fn tables(&self) -> Vec<String> {
        ShopProjection.tables()
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        ShopProjection.apply(tx, schema, events)
    }

    fn state(&self) -> Option<Box<dyn ProjectionState>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        ShopProjection.state()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_folds_many_batches_in_memory_builds_what_a_replay_builds() {
    let (db, store) = migrated(4).await;
    generate(&db, &["--users", "200", "--orders", "1500", "--seed", "3"]).await;
    let states = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Small pages, a state of at most 300 rows, and no timed writes: the catch-up folds
    // pages until the state is full, writes it, forgets it, and reads rows back from the
    // tables for the next state.
    let options = DaemonOptions::default()
        .batch_size(40)
        .state_rows(300)
        .write_every(Duration::from_secs(3600));
    let daemon = tokio::spawn(
        Daemon::new(store.clone(), options)
            .with(CountedShop(states.clone()))
            .run(async {
                let _ = stopped.await;
            }),
    );
    caught_up(&db.pool).await;
    // Then live, one state per batch.
    generate(
        &db,
        &["--users", "10", "--orders", "100", "--prefix", "live-"],
    )
    .await;
    caught_up(&db.pool).await;
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    let at = checkpoint(&db.pool, "shop").await;
    assert_eq!(at.applied, shop_events_through(&db.pool, at.position).await);
    replay_through(&store, "rebuilt", at.position).await;
    let (users, orders) = assert_same_tables(&db.pool, "shop", "rebuilt").await;
    assert_eq!(users, 210);
    let held = 300;
    let taken = states.load(Ordering::SeqCst) as i64;
    assert!(
        taken > (users + orders) / held,
        "{} rows through states of at most {held} take more than {taken} of them",
        users + orders
    );
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_position_or_time_equals_a_rebuild_stopped_there() {
    let (db, store) = migrated(4).await;
    generate(&db, &["--users", "100", "--orders", "800", "--seed", "3"]).await;
    settled(&db.pool).await;
    let applied = projection::rebuild(&store, &ShopProjection, 500, |_| {})
        .await
        .unwrap();
    let stopped = checkpoint(&db.pool, "shop").await;
    assert_eq!(applied as i64, stopped.applied);
    sqlx::raw_sql(
        "CREATE SCHEMA snap; \
         CREATE TABLE snap.users AS TABLE shop.users; \
         CREATE TABLE snap.orders AS TABLE shop.orders; \
         CREATE TABLE snap.anomalies AS TABLE shop.anomalies;",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let moment: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Later: new users and orders, and changes to the old ones.
    generate(
        &db,
        &["--users", "20", "--orders", "100", "--prefix", "later"],
    )
    .await;
    let placed: Vec<String> =
        sqlx::query_scalar("SELECT order_id FROM shop.orders WHERE status = 'placed' LIMIT 20")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!placed.is_empty());
    for order in &placed {
        store
            .append(
                &format!("order-{order}"),
                ExpectedVersion::Any,
                [EventData::json(
                    "order-cancelled",
                    json!({"reason": "later"}),
                )],
            )
            .await
            .unwrap();
    }
    settled(&db.pool).await;
    projection::rebuild(&store, &ShopProjection, 500, |_| {})
        .await
        .unwrap();
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (TABLE shop.orders EXCEPT ALL TABLE snap.orders) AS changed",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        changed >= 100 + placed.len() as i64,
        "the later events changed the tables"
    );
    let live_before: i64 = sqlx::query_scalar("SELECT count(*) FROM shop.orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    replay_through(&store, "asof_position", stopped.position).await;
    assert_same_tables(&db.pool, "snap", "asof_position").await;

    let report = projection::replay(
        &store,
        &ShopProjection,
        "asof_time",
        ReplayUntil::Time(moment),
        false,
        300,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.position as i64, stopped.position);
    assert_same_tables(&db.pool, "snap", "asof_time").await;

    // The live tables are untouched, and an existing schema is not replaced unasked.
    let live_after: i64 = sqlx::query_scalar("SELECT count(*) FROM shop.orders")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(live_before, live_after);
    let again = projection::replay(
        &store,
        &ShopProjection,
        "asof_time",
        ReplayUntil::Time(moment),
        false,
        300,
        |_| {},
    )
    .await;
    assert!(
        matches!(again, Err(pg_eventstore_client::Error::InvalidArgument(_))),
        "{again:?}"
    );
    let into_live = projection::replay(
        &store,
        &ShopProjection,
        "shop",
        ReplayUntil::Position(1),
        true,
        300,
        |_| {},
    )
    .await;
    assert!(matches!(
        into_live,
        Err(pg_eventstore_client::Error::InvalidArgument(_))
    ));
    db.drop_database().await;
}

/// A projection whose table refuses negative numbers: an event with one fails until the
/// constraint is dropped.
struct Audit;

impl Projection for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    fn event_types(&self) -> Vec<String> {
        vec!["audited".to_owned()]
    }

    fn schema(&self) -> &str {
        "audit"
    }

    fn tables(&self) -> Vec<String> {
        vec!["log".to_owned()]
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        Box::pin(async move {
            let positions: Vec<i64> = events.iter().map(|e| e.position as i64).collect();
            let data: Vec<String> = events.iter().map(|e| e.data.get().to_owned()).collect();
            sqlx::query(&format!(
                "INSERT INTO {schema}.log (position, n) \
                 SELECT p, (d::jsonb ->> 'n')::int FROM unnest($1::int8[], $2::text[]) AS u(p, d)"
            ))
            .bind(positions)
            .bind(data)
            .execute(tx)
            .await?;
            Ok(())
        })
    }
}

fn audited(n: i64) -> EventData {
    EventData::json("audited", json!({ "n": n }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_stops_its_projection_visibly_until_fixed() {
    let (db, store) = migrated(6).await;
    sqlx::raw_sql(
        "CREATE SCHEMA audit; \
         CREATE TABLE audit.log (position bigint PRIMARY KEY, \
                                 n int NOT NULL CONSTRAINT n_not_negative CHECK (n >= 0));",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    store
        .append("audit-1", ExpectedVersion::NoStream, (0..10).map(audited))
        .await
        .unwrap();
    let bad = store
        .append("audit-1", ExpectedVersion::Exact(9), [audited(-1)])
        .await
        .unwrap();
    store
        .append("audit-1", ExpectedVersion::Exact(10), (10..15).map(audited))
        .await
        .unwrap();
    // The shop projection in the same daemon meets an order-placed without items.
    store
        .append(
            "user-ada",
            ExpectedVersion::NoStream,
            [EventData::json(
                "user-created",
                json!({"username": "ada", "fullName": "Ada"}),
            )],
        )
        .await
        .unwrap();
    let malformed = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [EventData::json(
                "order-placed",
                json!({"username": "ada", "currency": "EUR"}),
            )],
        )
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = DaemonOptions::default()
        .retry_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(200));
    let running = tokio::spawn(
        Daemon::new(store.clone(), options)
            .with(Audit)
            .with(ShopProjection)
            .run(async {
                let _ = stopped.await;
            }),
    );
    let projections: [&dyn Projection; 2] = [&Audit, &ShopProjection];
    eventually(
        PATIENCE,
        "both projections report their failure",
        || async {
            let stats = projection::status(&store, &projections).await.unwrap();
            stats.iter().filter(|p| p.failure.is_some()).count() == 2
        },
    )
    .await;
    let stats = projection::status(&store, &projections).await.unwrap();
    let audit = stats.iter().find(|p| p.name == "audit").unwrap();
    let failure = audit.failure.as_ref().unwrap();
    assert_eq!(failure.position, bad.first_position);
    assert_eq!(
        (
            failure.stream.as_str(),
            failure.version,
            failure.event_type.as_str()
        ),
        ("audit-1", 10, "audited")
    );
    assert!(
        failure.message.contains("n_not_negative"),
        "{}",
        failure.message
    );
    assert!(
        failure
            .to_string()
            .contains("projection audit stopped at position"),
        "{failure}"
    );
    assert_eq!(
        audit.events_behind, 6,
        "the failing event and the five after it"
    );
    let audited_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.log")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        audited_rows, 10,
        "the events before the failing one are applied"
    );
    let shop = stats.iter().find(|p| p.name == "shop").unwrap();
    let shop_failure = shop.failure.as_ref().unwrap();
    assert_eq!(shop_failure.position, malformed.first_position);
    assert!(
        shop_failure
            .message
            .contains("order-placed data does not decode"),
        "{}",
        shop_failure.message
    );
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM shop.users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        users, 1,
        "the shop applied the user before the malformed order"
    );

    // Retried, still failing: the attempts are counted and nothing after it is applied.
    eventually(PATIENCE, "the failing event was retried", || async {
        checkpoint_failures(&db.pool, "audit").await >= 2
    })
    .await;

    // The fix: the constraint goes; the projection resumes and clears its failure.
    sqlx::query("ALTER TABLE audit.log DROP CONSTRAINT n_not_negative")
        .execute(&db.pool)
        .await
        .unwrap();
    eventually(PATIENCE, "the audit projection resumed", || async {
        let stats = projection::status(&store, &projections).await.unwrap();
        let audit = stats.iter().find(|p| p.name == "audit").unwrap();
        audit.failure.is_none() && audit.events_behind == 0
    })
    .await;
    let audited_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.log")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(audited_rows, 16);

    // And it follows live appends.
    let live = store
        .append("audit-2", ExpectedVersion::NoStream, [audited(99)])
        .await
        .unwrap();
    eventually(PATIENCE, "a live append reached the table", || async {
        sqlx::query_scalar::<_, bool>("SELECT EXISTS (SELECT FROM audit.log WHERE position = $1)")
            .bind(live.first_position as i64)
            .fetch_one(&db.pool)
            .await
            .unwrap()
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(checkpoint(&db.pool, "audit").await.owner, None);
    db.drop_database().await;
}

async fn checkpoint_failures(pool: &PgPool, name: &str) -> i32 {
    sqlx::query_scalar("SELECT failures FROM projections.checkpoints WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_shop_follows_its_business_rules() {
    let (db, store) = migrated(4).await;
    let append = |stream: &'static str, event_type: &'static str, data: serde_json::Value| {
        let store = store.clone();
        async move {
            store
                .append(
                    stream,
                    ExpectedVersion::Any,
                    [EventData::json(event_type, data)],
                )
                .await
                .unwrap()
        }
    };
    append(
        "user-ada",
        "user-created",
        json!({"username": "ada", "fullName": "Ada Lovelace", "openedAt": "2020-01-01T00:00:00Z"}),
    )
    .await;
    append("user-ada", "user-renamed", json!({"fullName": "Ada King"})).await;
    append(
        "user-bob",
        "user-created",
        json!({"username": "bob", "fullName": "Bob"}),
    )
    .await;
    let items = json!([{"sku": "a", "qty": 2, "price": 2.5}, {"sku": "b", "qty": 1, "price": 10}]);
    append(
        "order-1",
        "order-placed",
        json!({"username": "ada", "items": items, "currency": "EUR"}),
    )
    .await;
    append(
        "order-1",
        "order-paid",
        json!({"amount": 15.0, "method": "card"}),
    )
    .await;
    append(
        "order-1",
        "order-shipped",
        json!({"carrier": "dhl", "trackingNumber": "T1"}),
    )
    .await;
    append("order-2", "order-placed", json!({"username": "ada", "items": [{"sku": "c", "qty": 3, "price": 2.5}], "currency": "EUR"})).await;
    append("order-2", "order-paid", json!({"amount": 7.5})).await;
    append("order-2", "order-cancelled", json!({"reason": "refund"})).await;
    append("order-2", "order-paid", json!({"amount": 7.5})).await; // after cancellation
    append(
        "order-3",
        "order-placed",
        json!({"username": "ghost", "items": [], "currency": "EUR"}),
    )
    .await;
    append("order-3", "order-paid", json!({"amount": 1})).await;
    append("order-4", "order-placed", json!({"username": "bob", "items": [{"sku": "d", "qty": 1, "price": 0.1}], "currency": "USD"})).await;
    append("order-4", "order-shipped", json!({"carrier": "ups"})).await; // not paid
    append("order-1", "order-cancelled", json!({"reason": "too late"})).await; // shipped
    append("user-carol", "user-renamed", json!({"fullName": "Carol"})).await;
    append("user-bob", "user-deactivated", json!({})).await;
    append(
        "user-ada",
        "user-created",
        json!({"username": "ada", "fullName": "Again"}),
    )
    .await;
    let last = append("order-5", "order-placed", json!({"username": "bob", "items": [{"sku": "e", "qty": 4, "price": 1.25}], "currency": "EUR"})).await;

    settled(&db.pool).await;
    let applied = projection::rebuild(&store, &ShopProjection, 7, |_| {})
        .await
        .unwrap();
    assert_eq!(applied, 19);
    assert_eq!(
        checkpoint(&db.pool, "shop").await.position,
        last.last_position as i64
    );

    let users: Vec<(String, String, bool, String, i32, String)> = sqlx::query_as(
        "SELECT username, full_name, active, created_at::date::text, order_count, total_spent::text \
         FROM shop.users ORDER BY username",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        users,
        vec![
            (
                "ada".into(),
                "Ada King".into(),
                true,
                "2020-01-01".into(),
                1,
                "15.0".into()
            ),
            (
                "bob".into(),
                "Bob".into(),
                false,
                users[1].3.clone(),
                2,
                "0".into()
            ),
        ]
    );
    let orders: Vec<(String, String, String, i32, String, String, i64)> = sqlx::query_as(
        "SELECT order_id, username, status, item_count, total::text, currency, version \
         FROM shop.orders ORDER BY order_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        orders,
        vec![
            (
                "1".into(),
                "ada".into(),
                "shipped".into(),
                3,
                "15.0".into(),
                "EUR".into(),
                2
            ),
            (
                "2".into(),
                "ada".into(),
                "cancelled".into(),
                3,
                "7.5".into(),
                "EUR".into(),
                2
            ),
            (
                "4".into(),
                "bob".into(),
                "placed".into(),
                1,
                "0.1".into(),
                "USD".into(),
                0
            ),
            (
                "5".into(),
                "bob".into(),
                "placed".into(),
                4,
                "5.00".into(),
                "EUR".into(),
                0
            ),
        ]
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM shop.anomalies ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        reasons,
        vec![
            "payment for cancelled order 2; to be refunded",
            "order 3 placed by unknown user ghost; rejected",
            "unknown order 3",
            "order 4 shipped before it was paid",
            "order 1 is shipped and cannot be cancelled",
            "unknown user carol",
            "user ada already exists",
        ]
    );
    let items: serde_json::Value =
        sqlx::query_scalar("SELECT items FROM shop.orders WHERE order_id = '1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(items, items_expected());
    db.drop_database().await;
}

fn items_expected() -> serde_json::Value {
    json!([{"sku": "a", "qty": 2, "price": 2.5}, {"sku": "b", "qty": 1, "price": 10}])
}
