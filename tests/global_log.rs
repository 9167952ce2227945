//! The global log (`read_all`, `read_category`) against a real server with concurrent writers.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pg_eventstore_tests::{eventually, read_all_from, sqlstate, LogEntry, TestDb, PATIENCE};
use rand::Rng;
use sqlx::{Connection, PgPool};
use uuid::Uuid;

const WRITERS: usize = 8;
const TRANSACTIONS_PER_WRITER: usize = 120;

fn events_json(ids: &[Uuid], event_type: &str) -> serde_json::Value {
    serde_json::Value::Array(
        ids.iter()
            .map(|id| serde_json::json!({"type": event_type, "data": {}, "id": id.to_string()}))
            .collect(),
    )
}

/// One writer: transactions of one or two appends (sometimes inside a savepoint that is rolled
/// back), some committed, some rolled back. Returns the ids it committed.
async fn writer(pool: PgPool, seed: usize) -> (Vec<Uuid>, usize) {
    let mut committed = Vec::new();
    let mut aborted = 0;
    for _ in 0..TRANSACTIONS_PER_WRITER {
        let (appends, commit, pause_us) = {
            let mut rng = rand::thread_rng();
            let mut appends: Vec<(String, usize, bool)> = (0..rng.gen_range(1..=2))
                .map(|_| {
                    (
                        format!("order-{}", rng.gen_range(0..40)),
                        rng.gen_range(1..=3),
                        rng.gen_bool(0.15),
                    )
                })
                .collect();
            // Lock streams in one global order, as applications should, to avoid deadlocks.
            appends.sort_by(|a, b| a.0.cmp(&b.0));
            (appends, rng.gen_bool(0.7), rng.gen_range(0..2000))
        };
        let mut tx = pool.begin().await.unwrap();
        let mut written = Vec::new();
        let mut failed = false;
        for (stream, count, in_rolled_back_savepoint) in appends {
            let ids: Vec<Uuid> = (0..count).map(|_| Uuid::new_v4()).collect();
            if in_rolled_back_savepoint {
                sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
            }
            let result = sqlx::query("SELECT eventstore.append($1, $2)")
                .bind(&stream)
                .bind(events_json(&ids, &format!("written-by-{seed}")))
                .execute(&mut *tx)
                .await;
            if let Err(error) = &result {
                // An older transaction that waited for a younger one's stream lock is refused
                // (40001) so that stream order and log order agree.
                assert_eq!(sqlstate(&result).as_deref(), Some("40001"), "{error}");
                failed = true;
                break;
            }
            if in_rolled_back_savepoint {
                sqlx::query("ROLLBACK TO SAVEPOINT s")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            } else {
                written.extend(ids);
            }
            tokio::time::sleep(Duration::from_micros(pause_us)).await;
        }
        if commit && !failed {
            tx.commit().await.unwrap();
            committed.extend(written);
        } else {
            tx.rollback().await.unwrap();
            aborted += usize::from(failed);
        }
    }
    (committed, aborted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_following_concurrent_writers_sees_exactly_the_committed_events() {
    let db = TestDb::new(WRITERS as u32 + 2).await;
    let done = Arc::new(AtomicBool::new(false));

    let reader = {
        let pool = db.pool.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut seen: Vec<LogEntry> = Vec::new();
            let mut after = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch: Vec<LogEntry> = sqlx::query_as(
                    "SELECT position, stream, version, type, id FROM eventstore.read_all($1, 37)",
                )
                .bind(after)
                .fetch_all(&pool)
                .await
                .unwrap();
                if let Some(last) = batch.last() {
                    after = last.position;
                }
                let empty = batch.is_empty();
                seen.extend(batch);
                if empty {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };

    let writers: Vec<_> = (0..WRITERS)
        .map(|seed| tokio::spawn(writer(db.pool.clone(), seed)))
        .collect();
    let mut committed: HashSet<Uuid> = HashSet::new();
    let mut aborted = 0;
    for handle in writers {
        let (ids, refused) = handle.await.unwrap();
        committed.extend(ids);
        aborted += refused;
    }
    // Transactions of other tests on this server may hold the global log back for a moment;
    // wait until every committed event is readable before telling the reader to finish.
    db.settled().await;
    done.store(true, Ordering::SeqCst);
    let seen = reader.await.unwrap();

    assert!(
        committed.len() > 500,
        "the writers committed {} events",
        committed.len()
    );
    println!(
        "{} committed events, {aborted} transactions refused as out of order",
        committed.len()
    );

    let seen_ids: Vec<Uuid> = seen.iter().map(|e| e.id).collect();
    let unique: HashSet<Uuid> = seen_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        seen_ids.len(),
        "the reader received an event twice"
    );
    assert_eq!(
        unique, committed,
        "the reader's events differ from the committed ones"
    );
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].position < pair[1].position),
        "positions are strictly increasing"
    );

    // The order is stable: a full re-read from the start gives the same sequence.
    assert_eq!(read_all_from(&db.pool, 0, 1000).await, seen);

    // Within each stream, the global log holds versions 0, 1, 2, ... in order.
    let mut next_version: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &seen {
        let next = next_version.entry(&event.stream).or_insert(0);
        assert_eq!(
            event.version, *next,
            "stream {} out of order in the log",
            event.stream
        );
        *next += 1;
    }
    db.drop_database().await;
}

async fn wait_until_visible(pool: &PgPool, count: usize) -> Vec<LogEntry> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = read_all_from(pool, 0, 1000).await;
        if log.len() >= count || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_long_running_transaction_delays_later_events_but_never_loses_them() {
    let db = TestDb::new(4).await;
    let mut slow = db.connect().await;
    let mut slow_tx = slow.begin().await.unwrap();
    sqlx::query(
        "SELECT eventstore.append('order-slow', '[{\"type\": \"order-placed\", \"data\": {}}]')",
    )
    .execute(&mut *slow_tx)
    .await
    .unwrap();

    sqlx::query(
        "SELECT eventstore.append('order-fast', '[{\"type\": \"order-placed\", \"data\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1, "the fast event is committed");
    assert!(
        read_all_from(&db.pool, 0, 100).await.is_empty(),
        "the committed event waits behind the older open transaction"
    );

    slow_tx.commit().await.unwrap();
    let log = wait_until_visible(&db.pool, 2).await;
    let streams: Vec<&str> = log.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        ["order-slow", "order-fast"],
        "ordered by transaction, nothing lost"
    );
    db.drop_database().await;
}

#[tokio::test]
async fn writers_on_different_streams_do_not_wait_for_one_another() {
    let db = TestDb::new(2).await;
    let mut holder = db.connect().await;
    let mut held = holder.begin().await.unwrap();
    sqlx::query("SELECT eventstore.append('order-1', '[{\"type\": \"a\", \"data\": {}}]')")
        .execute(&mut *held)
        .await
        .unwrap();

    let mut other = db.connect().await;
    sqlx::query("SET lock_timeout = '300ms'")
        .execute(&mut other)
        .await
        .unwrap();
    let different =
        sqlx::query("SELECT eventstore.append('order-2', '[{\"type\": \"a\", \"data\": {}}]')")
            .execute(&mut other)
            .await;
    assert!(
        different.is_ok(),
        "another stream is not blocked: {different:?}"
    );
    let same =
        sqlx::query("SELECT eventstore.append('order-1', '[{\"type\": \"a\", \"data\": {}}]')")
            .execute(&mut other)
            .await;
    assert_eq!(
        sqlstate(&same).as_deref(),
        Some("55P03"),
        "the same stream waits for the lock"
    );

    held.rollback().await.unwrap();
    let version: i64 =
        sqlx::query_scalar("SELECT last_version FROM eventstore.append('order-1', '[{\"type\": \"a\", \"data\": {}}]')")
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert_eq!(version, 0, "the rolled-back append left no trace");
    db.drop_database().await;
}

#[tokio::test]
async fn an_older_transaction_cannot_append_behind_a_younger_ones_event() {
    let db = TestDb::new(2).await;
    let mut older = db.connect().await;
    let mut younger = db.connect().await;
    // Explicit BEGIN/COMMIT: the older connection moves into a task while it waits.
    for (conn, sql) in [
        (
            &mut older,
            "SELECT eventstore.append('order-a', '[{\"type\": \"a\", \"data\": {}}]')",
        ),
        (
            &mut younger,
            "SELECT eventstore.append('order-c', '[{\"type\": \"c\", \"data\": {}}]')",
        ),
    ] {
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }

    let older_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut older)
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let result = sqlx::query(
            "SELECT eventstore.append('order-c', '[{\"type\": \"late\", \"data\": {}}]')",
        )
        .execute(&mut older)
        .await;
        (sqlstate(&result), older)
    });
    eventually(
        PATIENCE,
        "the older transaction waits for the stream's lock",
        || async {
            sqlx::query_scalar::<_, bool>(
                "SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity \
             WHERE pid = $1",
            )
            .bind(older_pid)
            .fetch_one(&db.pool)
            .await
            .unwrap()
        },
    )
    .await;
    sqlx::query("COMMIT").execute(&mut younger).await.unwrap();
    let (state, mut older) = waiting.await.unwrap();
    assert_eq!(state.as_deref(), Some("40001"));
    sqlx::query("ROLLBACK").execute(&mut older).await.unwrap();

    // A retry is a new, younger transaction and succeeds after the younger one's event.
    sqlx::query("SELECT eventstore.append('order-c', '[{\"type\": \"late\", \"data\": {}}]')")
        .execute(&mut older)
        .await
        .unwrap();
    let log = wait_until_visible(&db.pool, 2).await;
    let types: Vec<&str> = log.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["c", "late"]);
    db.drop_database().await;
}

#[tokio::test]
async fn read_all_filters_by_event_type_and_category() {
    let db = TestDb::new(2).await;
    for (stream, event_type) in [
        ("user-ann", "user-created"),
        ("order-1", "order-placed"),
        ("order-1", "order-paid"),
        ("user-ann", "user-renamed"),
        ("order-2", "order-placed"),
    ] {
        sqlx::query("SELECT eventstore.append($1, jsonb_build_array(jsonb_build_object('type', $2::text, 'data', '{}'::jsonb)))")
            .bind(stream)
            .bind(event_type)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    wait_until_visible(&db.pool, 5).await;
    let query = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        query(
            "SELECT stream || '/' || type FROM eventstore.read_all(0, 100, ARRAY['order-placed'])"
        )
        .await,
        ["order-1/order-placed", "order-2/order-placed"]
    );
    assert_eq!(
        query("SELECT type FROM eventstore.read_all(0, 100, NULL, ARRAY['user'])").await,
        ["user-created", "user-renamed"]
    );
    assert_eq!(
        query("SELECT type FROM eventstore.read_all(0, 100, ARRAY['order-paid', 'user-renamed'], ARRAY['order'])").await,
        ["order-paid"]
    );
    assert_eq!(
        query("SELECT type FROM eventstore.read_all(0, 2)").await,
        ["user-created", "order-placed"]
    );
    assert_eq!(
        query("SELECT stream || '/' || type FROM eventstore.read_category('order')").await,
        [
            "order-1/order-placed",
            "order-1/order-paid",
            "order-2/order-placed"
        ]
    );
    let second: i64 =
        sqlx::query_scalar("SELECT position FROM eventstore.read_category('order', 0, 1)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let rest: Vec<String> =
        sqlx::query_scalar("SELECT type FROM eventstore.read_category('order', $1)")
            .bind(second)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rest, ["order-paid", "order-placed"]);
    db.drop_database().await;
}

#[tokio::test]
async fn a_consumer_group_gives_each_stream_to_exactly_one_member() {
    let db = TestDb::new(2).await;
    for n in 0..60 {
        sqlx::query("SELECT eventstore.append($1, '[{\"type\": \"e\", \"data\": {}}, {\"type\": \"e\", \"data\": {}}]')")
            .bind(format!("order-{n}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query("SELECT eventstore.append('user-x', '[{\"type\": \"e\", \"data\": {}}]')")
        .execute(&db.pool)
        .await
        .unwrap();
    wait_until_visible(&db.pool, 121).await;

    let size = 3;
    let mut owner: BTreeMap<String, i32> = BTreeMap::new();
    let mut total = 0;
    for member in 0..size {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT stream, position FROM eventstore.read_category('order', 0, 1000, $1, $2)",
        )
        .bind(member)
        .bind(size)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert!(!rows.is_empty(), "member {member} of {size} got no stream");
        assert!(
            rows.windows(2).all(|w| w[0].1 < w[1].1),
            "in position order"
        );
        total += rows.len();
        for (stream, _) in rows {
            let first = *owner.entry(stream.clone()).or_insert(member);
            assert_eq!(
                first, member,
                "{stream} went to members {first} and {member}"
            );
        }
    }
    assert_eq!(owner.len(), 60, "every order stream has a member");
    assert_eq!(total, 120, "every order event went to exactly one member");
    db.drop_database().await;
}

/// Rows of eventstore.events the statement `sql` touched (read sequentially or fetched
/// through an index), from this transaction's own statistics, which are exact: they are
/// not flushed while the transaction runs.
async fn rows_touched(conn: &mut sqlx::PgConnection, sql: &str) -> i64 {
    let touched = "SELECT coalesce(sum(seq_tup_read + idx_tup_fetch), 0)::bigint \
                   FROM pg_stat_xact_user_tables WHERE relid = 'eventstore.events'::regclass";
    let before: i64 = sqlx::query_scalar(touched)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sql)
        .execute(&mut *conn)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
    let after: i64 = sqlx::query_scalar(touched)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    after - before
}

/// Issue 12: right after a bulk load, before any ANALYZE, the catch-up reads and the groups'
/// reads of the log walk it in position order and stop after a page, instead of collecting
/// and sorting everything after the position (which the planner's default estimates favour).
#[tokio::test]
async fn catch_up_reads_take_the_ordered_plan_before_any_analyze() {
    let db = TestDb::new(2).await;
    let pool = &db.pool;
    // No ANALYZE may run on the log during the test: its statistics stay absent.
    sqlx::query("ALTER TABLE eventstore.events SET (autovacuum_enabled = false)")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "SELECT count(eventstore.append((ARRAY['item', 'cart', 'user'])[1 + i % 3] || '-' || i % 300, \
             jsonb_build_array(jsonb_build_object('type', 't' || i % 2, 'data', '{}'::jsonb)))) \
         FROM generate_series(1, 30000) AS i",
    )
    .execute(pool)
    .await
    .unwrap();
    db.settled().await;
    let analyzed: bool = sqlx::query_scalar(
        "SELECT last_analyze IS NOT NULL OR last_autoanalyze IS NOT NULL \
         FROM pg_stat_user_tables WHERE relid = 'eventstore.events'::regclass",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(!analyzed, "the log has no statistics yet");
    for group in [
        "SELECT eventstore.create_group('plain')",
        "SELECT eventstore.create_group('ordered', ordered_by_stream => true)",
        "SELECT eventstore.create_group('filtered', categories => ARRAY['cart', 'user'], \
         event_types => ARRAY['t1'])",
    ] {
        sqlx::query(group).execute(pool).await.unwrap();
    }

    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
    // A page is 500 events; each read may touch a few pages' worth (the ordered group reads
    // about two events for each it leases, and looks each up again), never the log.
    for (sql, bound) in [
        ("SELECT count(*) FROM eventstore.read_all(0, 500)", 500),
        ("SELECT count(*) FROM eventstore.read_all(0, 500, event_types => ARRAY['t1'])", 1_500),
        (
            "SELECT count(*) FROM eventstore.read_all(0, 500, categories => ARRAY['cart', 'user'], \
             event_types => ARRAY['t1'])",
            3_000,
        ),
        ("SELECT count(*) FROM eventstore.read_category('cart', 0, 500)", 500),
        ("SELECT count(*) FROM eventstore.fetch('plain', 'a', 500)", 1_500),
        ("SELECT count(*) FROM eventstore.fetch('ordered', 'a', 500)", 3_000),
        ("SELECT count(*) FROM eventstore.fetch('filtered', 'a', 500)", 3_000),
    ] {
        let touched = rows_touched(&mut conn, sql).await;
        assert!(
            touched <= bound,
            "{sql} touched {touched} rows of the log (at most {bound} expected of 30,000)"
        );
    }
    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
}
