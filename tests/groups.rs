//! Persistent subscription groups against a real server: the SQL contract (leases, acks by
//! the holder only, retries, parking, the view, SQLSTATEs), competing workers of the client
//! over 100k events with failures and a worker killed mid-batch, and the ordering option.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pg_eventstore_client::{
    ConsumerOptions, ConsumerStats, Error, EventStore, GroupEvent, GroupSettings, HandlerError,
};
use pg_eventstore_tests::{eventually, sqlstate, TestDb, PATIENCE};
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

/// Appends `streams` streams of `per_stream` events each, interleaved in the global log
/// (round-robin over the streams), numbered `n` 0.. in log order; one transaction per
/// round so the log holds many transactions.
async fn append_interleaved(pool: &PgPool, category: &str, streams: i32, per_stream: i32) {
    for round in 0..per_stream {
        sqlx::query(
            "SELECT count(eventstore.append($1 || '-' || s, jsonb_build_array(jsonb_build_object( \
                 'type', 'item-added', 'data', jsonb_build_object('n', $2 * $3 + s))))) \
             FROM generate_series(0, $3 - 1) AS s",
        )
        .bind(category)
        .bind(round)
        .bind(streams)
        .execute(pool)
        .await
        .unwrap();
    }
}

async fn view(pool: &PgPool, group: &str) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT position, in_flight, parked, lag FROM eventstore.groups WHERE group_name = $1",
    )
    .bind(group)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn fetch(pool: &PgPool, group: &str, consumer: &str, n: i32) -> Vec<(i64, i32)> {
    sqlx::query_as("SELECT position, attempt FROM eventstore.fetch($1, $2, $3)")
        .bind(group)
        .bind(consumer)
        .bind(n)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The lease of the 100k-event groups: longer than any batch takes on a loaded machine.
const LONG_LEASE: Duration = Duration::from_secs(300);

/// Moves the end of `consumer`'s leases into the past, as if their hour had gone by: the
/// test then does not depend on how fast the machine runs the steps before.
async fn run_out(pool: &PgPool, group: &str, consumer: &str) {
    assert!(
        end_leases(pool, group, consumer).await > 0,
        "{consumer} holds leases"
    );
}

/// Ends `consumer`'s leases now, both kinds: batches of the log (group_leases) and events
/// retried (group_events). Returns how many leases there were.
async fn end_leases(pool: &PgPool, group: &str, consumer: &str) -> i64 {
    sqlx::query_scalar(
        "WITH g AS (SELECT group_id FROM eventstore.subscription_groups WHERE group_name = $1), \
         rows AS (UPDATE eventstore.group_events AS e \
                  SET lease_until = clock_timestamp() - interval '1 ms' FROM g \
                  WHERE e.group_id = g.group_id AND e.consumer = $2 AND e.lease_until IS NOT NULL \
                  RETURNING 1), \
         batches AS (UPDATE eventstore.group_leases AS l \
                     SET lease_until = clock_timestamp() - interval '1 ms' FROM g \
                     WHERE l.group_id = g.group_id AND l.consumer = $2 \
                     RETURNING 1) \
         SELECT (SELECT count(*) FROM rows) + (SELECT count(*) FROM batches)",
    )
    .bind(group)
    .bind(consumer)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn int(pool: &PgPool, sql: &str) -> i32 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn the_sql_contract_leases_acks_retries_and_parks() {
    let db = TestDb::new(4).await;
    let pool = &db.pool;
    append_interleaved(pool, "order", 3, 4).await; // 12 events
    sqlx::query(
        "SELECT eventstore.append('user-1', '[{\"type\": \"user-created\", \"data\": {}}]')",
    )
    .execute(pool)
    .await
    .unwrap();
    db.settled().await;
    sqlx::query(
        "SELECT eventstore.create_group('g', categories => ARRAY['order'], max_attempts => 2, \
         lease_timeout => '1 hour')",
    )
    .execute(pool)
    .await
    .unwrap();

    // Two consumers get disjoint leases, in position order, attempt 1.
    let a = fetch(pool, "g", "a", 5).await;
    let b = fetch(pool, "g", "b", 100).await;
    assert_eq!((a.len(), b.len()), (5, 7), "the user event is filtered out");
    assert!(a.iter().chain(&b).all(|(_, attempt)| *attempt == 1));
    assert!(a.last().unwrap().0 < b[0].0);
    assert_eq!(view(pool, "g").await.1, 12, "all 12 in flight");
    assert!(fetch(pool, "g", "c", 100).await.is_empty());

    // Only the holder acks; acking twice counts once.
    let a_positions: Vec<i64> = a.iter().map(|(p, _)| *p).collect();
    let ack = |consumer: &'static str, positions: Vec<i64>| async move {
        sqlx::query_scalar::<_, i32>("SELECT eventstore.ack('g', $1, $2)")
            .bind(consumer)
            .bind(positions)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(ack("b", a_positions.clone()).await, 0);
    assert_eq!(ack("a", a_positions[..3].to_vec()).await, 3);
    assert_eq!(ack("a", a_positions[..3].to_vec()).await, 0);
    assert_eq!(ack("a", vec![]).await, 0);

    // Nack: retried on the next fetch with attempt 2; nacked again it is out of attempts
    // and parked with the reason.
    let nack = |consumer: &'static str, positions: Vec<i64>, reason: &'static str| async move {
        sqlx::query_scalar::<_, i32>("SELECT eventstore.nack('g', $1, $2, '0', $3)")
            .bind(consumer)
            .bind(positions)
            .bind(reason)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(nack("b", a_positions[3..].to_vec(), "not yours").await, 0);
    assert_eq!(nack("a", a_positions[3..].to_vec(), "timeout").await, 2);
    let again = fetch(pool, "g", "c", 100).await;
    assert_eq!(
        again,
        a_positions[3..].iter().map(|p| (*p, 2)).collect::<Vec<_>>()
    );
    assert_eq!(nack("c", vec![a_positions[3]], "still down").await, 1);
    sqlx::query("SELECT eventstore.park('g', 'c', $1, 'bad input')")
        .bind(vec![a_positions[4]])
        .execute(pool)
        .await
        .unwrap();
    let parked: Vec<(i64, i32, String)> =
        sqlx::query_as("SELECT position, attempt, reason FROM eventstore.parked('g')")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        parked,
        vec![
            (a_positions[3], 2, "still down".to_owned()),
            (a_positions[4], 2, "bad input".to_owned())
        ]
    );
    // b's leases run out: they are delivered again (attempt 2) to another consumer, and b
    // can no longer ack them.
    run_out(pool, "g", "b").await;
    let redelivered = fetch(pool, "g", "d", 100).await;
    assert_eq!(
        redelivered,
        b.iter().map(|(p, _)| (*p, 2)).collect::<Vec<_>>()
    );
    let b_positions: Vec<i64> = b.iter().map(|(p, _)| *p).collect();
    assert_eq!(ack("b", b_positions.clone()).await, 0);
    // d dies too: out of attempts, the events are parked when the leases run out.
    run_out(pool, "g", "d").await;
    assert!(fetch(pool, "g", "e", 100).await.is_empty());
    let (position, in_flight, parked_count, lag) = view(pool, "g").await;
    assert_eq!((in_flight, parked_count, lag), (0, 9, 0));
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM eventstore.parked('g') WHERE position = $1")
            .bind(b_positions[0])
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(reason, "the lease of consumer d ran out on attempt 2");
    assert!(
        position >= b_positions[6],
        "everything up to the end is acked or parked"
    );

    // Replay two parked events: delivered again from attempt 1; drop the rest.
    assert_eq!(
        int(
            pool,
            &format!(
                "SELECT eventstore.replay_parked('g', ARRAY[{}, {}])",
                b_positions[0], b_positions[1]
            )
        )
        .await,
        2
    );
    assert_eq!(
        fetch(pool, "g", "f", 100).await,
        vec![(b_positions[0], 1), (b_positions[1], 1)]
    );
    assert_eq!(int(pool, "SELECT eventstore.drop_parked('g')").await, 7);
    assert_eq!(ack("f", b_positions[..2].to_vec()).await, 2);
    let (position, in_flight, parked_count, lag) = view(pool, "g").await;
    assert_eq!((in_flight, parked_count, lag), (0, 0, 0));
    assert!(position >= b_positions[6]);

    // New events reach the group; alter_group repositions it to read the log again.
    append_interleaved(pool, "order", 1, 1).await;
    db.settled().await;
    assert_eq!(view(pool, "g").await.3, 1);
    sqlx::query(
        "SELECT eventstore.alter_group('g', from_position => 0, event_types => ARRAY['nothing'])",
    )
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(view(pool, "g").await.3, 0);
    sqlx::query("SELECT eventstore.alter_group('g', event_types => '{}', categories => '{}')")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(view(pool, "g").await.3, 14, "every event of the log again");

    // Errors: SQLSTATE and nothing changed.
    let error = |sql: &'static str| async move {
        sqlstate(&sqlx::query(sql).execute(pool).await).unwrap_or_default()
    };
    for (sql, code) in [
        ("SELECT eventstore.create_group('g')", "23505"),
        ("SELECT eventstore.create_group('')", "22023"),
        (
            "SELECT eventstore.create_group('h', categories => '{}')",
            "22023",
        ),
        (
            "SELECT eventstore.create_group('h', categories => ARRAY['a-b'])",
            "22023",
        ),
        (
            "SELECT eventstore.create_group('h', max_attempts => 0)",
            "22023",
        ),
        (
            "SELECT eventstore.create_group('h', lease_timeout => '-1 second')",
            "22023",
        ),
        (
            "SELECT eventstore.create_group('h', from_position => -1)",
            "22023",
        ),
        ("SELECT * FROM eventstore.fetch('nope', 'a')", "42704"),
        ("SELECT * FROM eventstore.fetch('g', '')", "22023"),
        ("SELECT * FROM eventstore.fetch('g', 'a', -1)", "22023"),
        ("SELECT eventstore.ack('g', 'a', NULL)", "22023"),
        (
            "SELECT eventstore.nack('g', 'a', '{}', '-1 second')",
            "22023",
        ),
        ("SELECT eventstore.delete_group('nope')", "42704"),
        ("SELECT eventstore.ack('nope', 'a', '{}')", "42704"),
        ("SELECT * FROM eventstore.parked('nope')", "42704"),
        (
            "SELECT eventstore.alter_group('g', max_attempts => -3)",
            "22023",
        ),
    ] {
        assert_eq!(error(sql).await, code, "{sql}");
    }
    assert_eq!(
        int(pool, "SELECT count(*)::int FROM eventstore.groups").await,
        1
    );
    let store = EventStore::from_pool(pool.clone());
    assert!(matches!(
        store.create_group("g", &GroupSettings::default()).await,
        Err(Error::GroupExists(name)) if name == "g"
    ));
    assert!(matches!(
        store.fetch("nope", "a", 1).await,
        Err(Error::GroupNotFound(name)) if name == "nope"
    ));
    assert!(matches!(
        store.parked("nope").await,
        Err(Error::GroupNotFound(name)) if name == "nope"
    ));
    let no_group = store.delete_group("nope").await.unwrap_err();
    assert_eq!(no_group.sqlstate().as_deref(), Some("42704"));
    assert!(
        store
            .group_consumer("nope", ConsumerOptions::default())
            .run(|_| async { Ok(()) }, std::future::pending())
            .await
            .is_err_and(|error| matches!(error, Error::GroupNotFound(_))),
        "a consumer of a missing group ends with GroupNotFound"
    );
    store.delete_group("g").await.unwrap();
    assert_eq!(
        int(pool, "SELECT count(*)::int FROM eventstore.group_events").await,
        0
    );
    db.drop_database().await;
}

/// Runs a one-worker consumer named `victim` with `handler` and aborts it in the middle of a
/// batch: once it has handled at least `handled` events, `unacked` of them not acked yet.
/// Returns its counters, which show events handled and never acked.
async fn kill_mid_batch<H, Fut>(
    store: &EventStore,
    group: &str,
    batch_size: u32,
    handler: H,
    (handled, unacked): (u64, u64),
) -> ConsumerStats
where
    H: Fn(GroupEvent) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let victim = store.group_consumer(
        group,
        ConsumerOptions::default()
            .name("victim")
            .batch_size(batch_size),
    );
    let stats = victim.stats();
    let task = tokio::spawn(victim.run(handler, std::future::pending()));
    eventually(PATIENCE, "the victim is in the middle of a batch", || {
        let stats = stats.clone();
        async move {
            let now = stats.get();
            now.handled >= handled && now.handled >= now.acked + unacked
        }
    })
    .await;
    task.abort();
    let _ = task.await;
    let done = stats.get();
    assert!(done.handled > done.acked, "killed mid-batch: {done:?}");
    // Its leases run out at once (the group's lease is long, so that the live workers never
    // lose one however slow the machine).
    run_out(store.pool(), group, "victim-0").await;
    done
}

/// What the handlers saw, per event position.
#[derive(Default)]
struct Record {
    successes: HashMap<u64, u32>,
    failures: HashMap<u64, u32>,
    parked_by_handler: BTreeSet<u64>,
}

#[tokio::test]
async fn competing_workers_ack_every_event_once_or_park_it_despite_failures_and_a_killed_worker() {
    let db = TestDb::new(12).await;
    append_interleaved(&db.pool, "cart", 1000, 100).await; // 100,000 events
    db.settled().await;
    let store = EventStore::from_pool(db.pool.clone());
    store
        .create_group(
            "carts",
            &GroupSettings::default()
                .max_attempts(3)
                .lease_timeout(LONG_LEASE),
        )
        .await
        .unwrap();
    let victim_record = Arc::new(Mutex::new(Record::default()));
    let record = Arc::new(Mutex::new(Record::default()));
    let handler = |record: Arc<Mutex<Record>>, pace: Option<Duration>| {
        move |event: GroupEvent| {
            let record = record.clone();
            async move {
                if let Some(pace) = pace {
                    tokio::time::sleep(pace).await;
                }
                let n = event.event.decode::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap();
                let position = event.event.position;
                let fails = n.is_multiple_of(9973) || rand::thread_rng().gen_bool(0.05);
                let mut record = record.lock().unwrap();
                if n % 20011 == 1 {
                    record.parked_by_handler.insert(position);
                    return Err(HandlerError::park(format!("item {n} is invalid")));
                }
                if fails {
                    *record.failures.entry(position).or_default() += 1;
                    return Err(HandlerError::Retry(format!("item {n} failed")));
                }
                *record.successes.entry(position).or_default() += 1;
                Ok(())
            }
        }
    };

    // A slow worker that is killed mid-batch: its leases run out and others get them.
    let victim_done = kill_mid_batch(
        &store,
        "carts",
        100,
        handler(victim_record.clone(), Some(Duration::from_millis(2))),
        (150, 20),
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let workers = store.group_consumer(
        "carts",
        ConsumerOptions::default()
            .name("worker")
            .workers(4)
            .batch_size(200)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(50))
            .poll_interval(Duration::from_millis(100)),
    );
    let worker_stats = workers.stats();
    let running = tokio::spawn(workers.run(handler(record.clone(), None), async {
        let _ = stop_rx.await;
    }));
    eventually(PATIENCE, "the group is done", || {
        let pool = db.pool.clone();
        async move {
            let (_, in_flight, _, lag) = view(&pool, "carts").await;
            in_flight == 0 && lag == 0
        }
    })
    .await;
    stop_tx.send(()).unwrap();
    let stats = running.await.unwrap().unwrap();
    assert_eq!(stats, worker_stats.get());

    assert_eq!(
        stats.lost_leases, 0,
        "the workers are fast enough for their leases"
    );

    let parked: BTreeMap<u64, u32> = store
        .parked("carts")
        .await
        .unwrap()
        .iter()
        .map(|p| (p.event.position, p.attempt))
        .collect();
    let all: Vec<u64> = sqlx::query_scalar::<_, i64>("SELECT position FROM eventstore.events")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p as u64)
        .collect();
    // Each ack deleted the event's row once, so only parked events are left in the group.
    assert_eq!(
        int(
            &db.pool,
            "SELECT count(*)::int FROM eventstore.group_events WHERE parked_at IS NULL"
        )
        .await,
        0
    );
    db.drop_database().await;
    let record = record.lock().unwrap();
    let victim_record = victim_record.lock().unwrap();
    assert_eq!(all.len(), 100_000);
    for position in &all {
        match parked.get(position) {
            // Parked: by a handler, or out of attempts (failures and the victim's lease
            // that ran out), and never handled by the workers, whose acks always land.
            Some(attempt) => {
                assert!(
                    record.parked_by_handler.contains(position)
                        || victim_record.parked_by_handler.contains(position)
                        || *attempt == 3,
                    "event {position} parked after {attempt} attempts"
                );
                assert!(!record.successes.contains_key(position));
            }
            None => assert!(
                record.successes.contains_key(position)
                    || victim_record.successes.contains_key(position),
                "event {position} was neither handled nor parked"
            ),
        }
    }
    // The acks counted by all consumers are exactly the events not parked.
    assert_eq!(
        victim_done.acked + stats.acked,
        (all.len() - parked.len()) as u64
    );
    // The events the victim handled without acking went to the workers after its leases
    // ran out (unless they then failed out of attempts).
    let handled_again = victim_record
        .successes
        .keys()
        .filter(|p| record.successes.contains_key(p))
        .count() as u64;
    let unacked = victim_done.handled - victim_done.acked;
    assert!(
        handled_again * 2 >= unacked && handled_again > 0,
        "{handled_again} of {unacked}"
    );
    assert!(
        parked.len() >= 11 + 5,
        "poison and invalid items are parked: {}",
        parked.len()
    );
    assert_eq!(
        stats.parked + victim_done.parked,
        (record.parked_by_handler.len() + victim_record.parked_by_handler.len()) as u64
    );
}

/// Per stream: whether a handler runs now, and the last version handled successfully.
#[derive(Default)]
struct StreamState {
    running: bool,
    last: Option<u64>,
}

struct Running(Arc<Mutex<HashMap<String, StreamState>>>, String);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(state) = self.0.lock().unwrap().get_mut(&self.1) {
            state.running = false;
        }
    }
}

#[tokio::test]
async fn ordered_groups_never_handle_a_stream_out_of_order_or_concurrently() {
    let db = TestDb::new(12).await;
    append_interleaved(&db.pool, "account", 400, 250).await; // 100,000 events
    db.settled().await;
    let store = EventStore::from_pool(db.pool.clone());
    store
        .create_group(
            "accounts",
            &GroupSettings::default()
                .ordered_by_stream(true)
                .max_attempts(50)
                .lease_timeout(LONG_LEASE),
        )
        .await
        .unwrap();
    let streams: Arc<Mutex<HashMap<String, StreamState>>> = Arc::default();
    let violations: Arc<Mutex<Vec<String>>> = Arc::default();
    let handler = |pace: Duration| {
        let streams = streams.clone();
        let violations = violations.clone();
        move |event: GroupEvent| {
            let streams = streams.clone();
            let violations = violations.clone();
            async move {
                let stream = event.event.stream.clone();
                let version = event.event.version;
                {
                    let mut all = streams.lock().unwrap();
                    let state = all.entry(stream.clone()).or_default();
                    if state.running {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{stream}@{version} while another ran"));
                    }
                    let next = state.last.map_or(0, |last| last + 1);
                    if version > next {
                        violations
                            .lock()
                            .unwrap()
                            .push(format!("{stream}@{version} before {stream}@{next}"));
                    }
                    state.running = true;
                }
                let _running = Running(streams.clone(), stream.clone());
                tokio::time::sleep(pace).await;
                if rand::thread_rng().gen_bool(0.1) {
                    return Err(HandlerError::Retry("flaky".to_owned()));
                }
                let mut all = streams.lock().unwrap();
                let state = all.get_mut(&stream).unwrap();
                state.last = Some(state.last.map_or(version, |last| last.max(version)));
                Ok(())
            }
        }
    };
    kill_mid_batch(
        &store,
        "accounts",
        50,
        handler(Duration::from_millis(1)),
        (60, 5),
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let workers = store.group_consumer(
        "accounts",
        ConsumerOptions::default()
            .name("worker")
            .workers(4)
            .batch_size(50)
            .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
            .poll_interval(Duration::from_millis(50)),
    );
    let running = tokio::spawn(workers.run(handler(Duration::ZERO), async {
        let _ = stop_rx.await;
    }));
    eventually(PATIENCE, "the ordered group is done", || {
        let pool = db.pool.clone();
        async move {
            let (_, in_flight, parked, lag) = view(&pool, "accounts").await;
            assert_eq!(parked, 0);
            in_flight == 0 && lag == 0
        }
    })
    .await;
    stop_tx.send(()).unwrap();
    let stats = running.await.unwrap().unwrap();
    assert!(stats.nacked > 100, "failures were retried: {stats:?}");
    db.drop_database().await;
    let violations = violations.lock().unwrap();
    assert!(
        violations.is_empty(),
        "{:?}",
        &violations[..violations.len().min(10)]
    );
    let last: BTreeMap<String, Option<u64>> = streams
        .lock()
        .unwrap()
        .iter()
        .map(|(stream, state)| (stream.clone(), state.last))
        .collect();
    assert_eq!(last.len(), 400);
    assert!(last.values().all(|last| *last == Some(249)), "{last:?}");
}

/// Where a [`transactional_worker`] stops for good, to be killed there.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// Its rows written, before the ack.
    BeforeAck,
    /// Acked, before the commit.
    BeforeCommit,
}

/// A consumer whose handler writes one row per event and acks in the same transaction,
/// committing only when the ack counted the whole batch; returns when the group is empty.
/// With `stall`, after that many committed batches it stops inside the next transaction,
/// tells `stalled`, and waits there forever.
async fn transactional_worker(
    pool: PgPool,
    consumer: String,
    stall: Option<(usize, Stall, tokio::sync::oneshot::Sender<()>)>,
) -> Result<(), Error> {
    let mut stall = stall;
    let mut committed = 0;
    loop {
        let batch = EventStore::fetch_in(&pool, "jobs", &consumer, 20).await?;
        if batch.is_empty() {
            return Ok(());
        }
        let stop_here = stall
            .as_ref()
            .is_some_and(|(after, ..)| *after == committed);
        let positions: Vec<u64> = batch.iter().map(|e| e.event.position).collect();
        let mut tx = pool.begin().await?;
        for position in &positions {
            sqlx::query("INSERT INTO handled (position, consumer) VALUES ($1, $2)")
                .bind(*position as i64)
                .bind(&consumer)
                .execute(&mut *tx)
                .await?;
        }
        let wait_there = |stall: &mut Option<(usize, Stall, tokio::sync::oneshot::Sender<()>)>| {
            if let Some((_, _, stalled)) = stall.take() {
                let _ = stalled.send(());
            }
            std::future::pending::<()>()
        };
        if stop_here && matches!(stall, Some((_, Stall::BeforeAck, _))) {
            wait_there(&mut stall).await;
        }
        let acked = EventStore::ack_in(&mut *tx, "jobs", &consumer, &positions).await?;
        if stop_here && matches!(stall, Some((_, Stall::BeforeCommit, _))) {
            wait_there(&mut stall).await;
        }
        if acked == positions.len() as u64 {
            tx.commit().await?;
            committed += 1;
        } else {
            tx.rollback().await?;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_acking_in_their_own_transaction_apply_each_event_once_though_killed() {
    let db = TestDb::new(8).await;
    append_interleaved(&db.pool, "job", 100, 100).await; // 10,000 events
    db.settled().await;
    sqlx::query("CREATE TABLE handled (position bigint NOT NULL, consumer text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let store = EventStore::from_pool(db.pool.clone());
    store
        .create_group("jobs", &GroupSettings::default().lease_timeout(LONG_LEASE))
        .await
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut killed_in_transaction = 0;
    for generation in 0..12 {
        let consumer = format!("c{generation}");
        let name = format!("exactly-once-{generation}");
        let pool = db.pool_named(&name, 2).await;
        // Every other consumer is killed inside a transaction, its rows written (and, half
        // of those times, its ack made) but not committed; the others at a random moment.
        let (stalled_tx, stalled) = tokio::sync::oneshot::channel();
        let stall = (generation % 2 == 0).then(|| {
            let point = if generation % 4 == 0 {
                Stall::BeforeCommit
            } else {
                Stall::BeforeAck
            };
            (rng.gen_range(0..4), point, stalled_tx)
        });
        let stalls = stall.is_some();
        let worker = tokio::spawn(transactional_worker(pool.clone(), consumer.clone(), stall));
        if stalls {
            tokio::time::timeout(PATIENCE, stalled)
                .await
                .expect("the consumer reaches its stall")
                .unwrap();
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..60))).await;
        }
        // Killed: its connections terminated by the server, or the task dropped wherever
        // it is.
        if rng.gen_bool(0.5) {
            db.terminate(&name).await;
        }
        worker.abort();
        let outcome = worker.await;
        if stalls {
            assert!(
                !matches!(outcome, Ok(Ok(()))),
                "a stalled consumer never finishes"
            );
            killed_in_transaction += 1;
        }
        pool.close().await;
        // Whatever it left open goes too, as a killed process's sockets do.
        db.terminate(&name).await;
        // Once the server has seen its sessions go, their transactions are over; its leases
        // then run out as if their time had passed.
        eventually(PATIENCE, "the killed consumer's sessions are gone", || {
            let pool = db.pool.clone();
            let name = name.clone();
            async move {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND application_name = $1",
                )
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
                    == 0
            }
        })
        .await;
        end_leases(&db.pool, "jobs", &consumer).await;
    }
    assert_eq!(killed_in_transaction, 6);
    transactional_worker(db.pool.clone(), "last".to_owned(), None)
        .await
        .unwrap();

    let (_, in_flight, parked, lag) = view(&db.pool, "jobs").await;
    assert_eq!((in_flight, parked, lag), (0, 0, 0));
    let (rows, distinct, missing): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM handled), \
                (SELECT count(DISTINCT position) FROM handled), \
                (SELECT count(*) FROM eventstore.events e \
                 WHERE NOT EXISTS (SELECT FROM handled h WHERE h.position = e.position))",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (rows, distinct, missing),
        (10_000, 10_000, 0),
        "each event's row exists exactly once"
    );
    db.drop_database().await;
}

/// Issue 12's stall: parked events of an ordered group hold back their own streams, and
/// however many events wait behind them, the other streams keep flowing.
#[tokio::test]
async fn parked_events_hold_back_their_own_streams_only_however_many_wait_behind_them() {
    const STREAMS: i32 = 200;
    const PER_STREAM: i32 = 30;
    const POISONED: i32 = 20;
    const BATCH: i32 = 50;
    let db = TestDb::new(4).await;
    let pool = &db.pool;
    append_interleaved(pool, "acct", STREAMS, PER_STREAM).await;
    db.settled().await;
    sqlx::query(
        "SELECT eventstore.create_group('ledger', ordered_by_stream => true, max_attempts => 3, \
         lease_timeout => '1 hour')",
    )
    .execute(pool)
    .await
    .unwrap();

    // The first event of each poisoned stream is parked; everything else is acked. Four
    // consumers take turns.
    let held_back = POISONED * (PER_STREAM - 1);
    assert!(
        held_back > 10 * BATCH,
        "far more held back than the old intake limit"
    );
    let healthy = ((STREAMS - POISONED) * PER_STREAM) as usize;
    let mut delivered: HashMap<String, Vec<i64>> = HashMap::new();
    let mut acked = 0usize;
    let mut parked = 0usize;
    let started = std::time::Instant::now();
    let mut turn = 0usize;
    while acked < healthy {
        assert!(
            started.elapsed() < PATIENCE,
            "the healthy streams stopped flowing: {acked} of {healthy} acked"
        );
        let consumer = ["c0", "c1", "c2", "c3"][turn % 4];
        turn += 1;
        let batch: Vec<(i64, String, i64, i32)> = sqlx::query_as(
            "SELECT position, stream, version, attempt FROM eventstore.fetch('ledger', $1, $2)",
        )
        .bind(consumer)
        .bind(BATCH)
        .fetch_all(pool)
        .await
        .unwrap();
        let (mut to_ack, mut to_park) = (Vec::new(), Vec::new());
        for (position, stream, version, attempt) in batch {
            assert_eq!(attempt, 1, "nothing is delivered twice");
            let number: i32 = stream.trim_start_matches("acct-").parse().unwrap();
            delivered.entry(stream).or_default().push(version);
            if number < POISONED {
                assert_eq!(version, 0, "a poisoned stream stops at its parked event");
                to_park.push(position);
            } else {
                to_ack.push(position);
            }
        }
        if !to_park.is_empty() {
            let n: i32 = sqlx::query_scalar("SELECT eventstore.park('ledger', $1, $2, 'poison')")
                .bind(consumer)
                .bind(&to_park)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(n as usize, to_park.len());
            parked += to_park.len();
        }
        if !to_ack.is_empty() {
            let n: i32 = sqlx::query_scalar("SELECT eventstore.ack('ledger', $1, $2)")
                .bind(consumer)
                .bind(&to_ack)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(n as usize, to_ack.len(), "the holder's acks all count");
            acked += to_ack.len();
        }
    }
    assert_eq!(parked, POISONED as usize);
    for (stream, versions) in &delivered {
        let number: i32 = stream.trim_start_matches("acct-").parse().unwrap();
        let expected: Vec<i64> = if number < POISONED {
            vec![0]
        } else {
            (0..PER_STREAM as i64).collect()
        };
        assert_eq!(
            versions, &expected,
            "{stream} in version order, each event once"
        );
    }
    assert_eq!(delivered.len(), STREAMS as usize);

    // Nothing more to deliver; the view counts what waits behind the parked events.
    assert!(fetch(pool, "ledger", "c0", BATCH).await.is_empty());
    let (in_flight, parked_now, lag, held): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT in_flight, parked, lag, held_back FROM eventstore.groups \
         WHERE group_name = 'ledger'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        (in_flight, parked_now, lag, held),
        (0, POISONED as i64, held_back as i64, held_back as i64)
    );

    // Replaying the parked events lets their streams go on, in order.
    sqlx::query("SELECT eventstore.replay_parked('ledger')")
        .execute(pool)
        .await
        .unwrap();
    let mut rest: HashMap<String, Vec<(i64, i32)>> = HashMap::new();
    let mut total = 0;
    while total < POISONED * PER_STREAM {
        let batch = sqlx::query_as::<_, (i64, String, i64, i32)>(
            "SELECT position, stream, version, attempt FROM eventstore.fetch('ledger', 'c1', $1)",
        )
        .bind(BATCH)
        .fetch_all(pool)
        .await
        .unwrap();
        assert!(!batch.is_empty(), "the replayed streams flow again");
        let positions: Vec<i64> = batch.iter().map(|(p, ..)| *p).collect();
        for (_, stream, version, attempt) in batch {
            rest.entry(stream).or_default().push((version, attempt));
        }
        total += positions.len() as i32;
        let n: i32 = sqlx::query_scalar("SELECT eventstore.ack('ledger', 'c1', $1)")
            .bind(&positions)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n as usize, positions.len());
    }
    assert_eq!(rest.len(), POISONED as usize);
    for (stream, versions) in &rest {
        let only_versions: Vec<i64> = versions.iter().map(|(v, _)| *v).collect();
        assert_eq!(
            only_versions,
            (0..PER_STREAM as i64).collect::<Vec<_>>(),
            "{stream}"
        );
        assert_eq!(
            versions[0].1, 1,
            "the replayed event starts its attempts over"
        );
    }
    assert_eq!(view(pool, "ledger").await.1, 0);
    let (lag, held): (i64, i64) =
        sqlx::query_as("SELECT lag, held_back FROM eventstore.groups WHERE group_name = 'ledger'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!((lag, held), (0, 0));
}

/// An ordered fetch whose first walk of the log found only events of a held stream walks on
/// from where that walk ended. The stream buckets it did not claim must keep their cursors
/// there: their events before that point were never read (a fetch once moved them to the end
/// of the log, and those events were never delivered).
#[tokio::test]
async fn an_ordered_fetch_that_walks_on_past_a_held_stream_skips_no_other_stream() {
    let db = TestDb::new(2).await;
    let pool = &db.pool;
    // With all cursors equal, a fetch claims the buckets 0..31 first.
    let stream_in = |prefix: &'static str, low: bool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT s FROM (SELECT $1 || '-' || n AS s FROM generate_series(0, 999) AS n) AS c \
             WHERE (eventstore._stream_bucket(s) < 32) = $2 LIMIT 1",
        )
        .bind(prefix)
        .bind(low)
        .fetch_one(pool)
        .await
        .unwrap()
    };
    let held = stream_in("held", true).await;
    let low = stream_in("low", true).await;
    let high = stream_in("high", false).await;
    let append = |stream: String| async move {
        sqlx::query(
            "SELECT eventstore.append($1, jsonb_build_array(jsonb_build_object( \
                 'type', 'item-added', 'data', '{}'::jsonb)))",
        )
        .bind(stream)
        .execute(pool)
        .await
        .unwrap();
    };
    let ack = |positions: Vec<i64>| async move {
        let n: i32 = sqlx::query_scalar("SELECT eventstore.ack('walks', 'c', $1)")
            .bind(&positions)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n as usize, positions.len());
    };
    let streams_of = |batch: &[(i64, String)]| -> Vec<String> {
        batch.iter().map(|(_, stream)| stream.clone()).collect()
    };
    let take = |n: i32| async move {
        sqlx::query_as::<_, (i64, String)>(
            "SELECT position, stream FROM eventstore.fetch('walks', 'c', $1)",
        )
        .bind(n)
        .fetch_all(pool)
        .await
        .unwrap()
    };
    sqlx::query(
        "SELECT eventstore.create_group('walks', ordered_by_stream => true, \
         lease_timeout => '1 hour')",
    )
    .execute(pool)
    .await
    .unwrap();

    // The held stream: its first event is nacked for an hour.
    append(held.clone()).await;
    db.settled().await;
    let first = take(1).await;
    assert_eq!(streams_of(&first), [held.as_str()]);
    let n: i32 = sqlx::query_scalar("SELECT eventstore.nack('walks', 'c', $1, '1 hour', 'later')")
        .bind(vec![first[0].0])
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
    // The buckets 32..63 are behind now; the next fetch claims them and moves them on.
    append(high.clone()).await;
    db.settled().await;
    let second = take(1).await;
    assert_eq!(streams_of(&second), [high.as_str()]);
    ack(vec![second[0].0]).await;

    // Then: an event of the high stream, two of the held one, one of the low one. The next
    // fetch claims the buckets 0..31 (furthest behind), finds the held stream's two events
    // (they wait behind its nacked one), and walks on to the low stream's event.
    append(high.clone()).await;
    append(held.clone()).await;
    append(held.clone()).await;
    append(low.clone()).await;
    db.settled().await;
    let third = take(2).await;
    assert_eq!(streams_of(&third), [low.as_str()]);
    ack(third.iter().map(|(p, _)| *p).collect()).await;

    // The high stream's second event is still delivered.
    let fourth = take(10).await;
    assert_eq!(streams_of(&fourth), [high.as_str()]);
    ack(fourth.iter().map(|(p, _)| *p).collect()).await;
    assert!(take(10).await.is_empty());
    // Waiting: the nacked event and the two behind it.
    let (_, in_flight, parked, lag) = view(pool, "walks").await;
    assert_eq!((in_flight, parked, lag), (0, 0, 3));
    db.drop_database().await;
}
