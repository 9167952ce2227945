//! `append` over the wire: concurrency on one stream, retries, isolation levels, SQLSTATEs.

use std::collections::BTreeMap;
use std::time::Duration;

use pg_eventstore_tests::{sqlstate, TestDb};
use sqlx::{Connection, PgPool};

const RACERS: usize = 8;
const VERSIONS: i64 = 40;

async fn stream_version(pool: &PgPool, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT eventstore.stream_version($1)")
        .bind(stream)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Races for every version of the stream: waits until the previous version exists, then tries
/// to append with that exact expected version. Returns the versions it won.
async fn racer(pool: PgPool, name: usize) -> Vec<i64> {
    let mut won = Vec::new();
    for version in 0..VERSIONS {
        let expected = version - 1;
        while stream_version(&pool, "race-1").await < expected {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let result = sqlx::query_scalar::<_, i64>(
            "SELECT first_version FROM eventstore.append('race-1', $1, $2)",
        )
        .bind(serde_json::json!([{"type": "won", "data": {"by": name}}]))
        .bind(expected)
        .fetch_one(&pool)
        .await;
        match result {
            Ok(first_version) => {
                assert_eq!(first_version, version);
                won.push(version);
            }
            Err(ref error) => {
                assert_eq!(sqlstate(&result).as_deref(), Some("40001"), "{error}");
            }
        }
    }
    won
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_writers_on_one_stream_exactly_one_wins_each_version() {
    let db = TestDb::new(RACERS as u32 + 1).await;
    let racers: Vec<_> = (0..RACERS)
        .map(|n| tokio::spawn(racer(db.pool.clone(), n)))
        .collect();
    let mut winners: BTreeMap<i64, usize> = BTreeMap::new();
    for handle in racers {
        for version in handle.await.unwrap() {
            *winners.entry(version).or_default() += 1;
        }
    }
    assert_eq!(winners.len() as i64, VERSIONS, "every version was won");
    assert!(
        winners.values().all(|&n| n == 1),
        "one winner per version: {winners:?}"
    );
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM eventstore.read_stream('race-1')")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(versions, (0..VERSIONS).collect::<Vec<_>>());
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_with_any_version_all_land_in_order() {
    let db = TestDb::new(9).await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = db.pool.clone();
            tokio::spawn(async move {
                for _ in 0..25 {
                    sqlx::query("SELECT eventstore.append('hot-1', '[{\"type\": \"a\", \"data\": {}}, {\"type\": \"b\", \"data\": {}}]')")
                        .execute(&pool)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, type FROM eventstore.read_stream('hot-1')")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 400);
    for (index, (version, event_type)) in rows.iter().enumerate() {
        assert_eq!(*version, index as i64);
        assert_eq!(
            event_type,
            if index % 2 == 0 { "a" } else { "b" },
            "a batch stays contiguous"
        );
    }
    db.drop_database().await;
}

#[tokio::test]
async fn a_retry_after_a_lost_reply_does_not_write_twice() {
    let db = TestDb::new(2).await;
    let events = serde_json::json!([
        {"type": "order-placed", "data": {"username": "ann"}, "id": "7a0f6a3e-1c7d-4b1e-9a1d-3a3c2b1f0e01"},
        {"type": "order-paid", "data": {"amount": 10}, "id": "7a0f6a3e-1c7d-4b1e-9a1d-3a3c2b1f0e02"}
    ]);
    let append = || {
        sqlx::query_as::<_, (i64, i64, i64, i64)>(
            "SELECT * FROM eventstore.append('order-9', $1, -1)",
        )
        .bind(events.clone())
        .fetch_one(&db.pool)
    };
    let first = append().await.unwrap();
    let retry = append().await.unwrap();
    assert_eq!(first, retry);
    assert_eq!((first.0, first.1), (0, 1));
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
    db.drop_database().await;
}

#[tokio::test]
async fn under_repeatable_read_a_concurrent_append_is_a_serialization_failure() {
    let db = TestDb::new(2).await;
    sqlx::query(
        "SELECT eventstore.append('user-kim', '[{\"type\": \"user-created\", \"data\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = db.connect().await;
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT eventstore.stream_version('user-kim')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 0);

    sqlx::query(
        "SELECT eventstore.append('user-kim', '[{\"type\": \"user-renamed\", \"data\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    let result = sqlx::query(
        "SELECT eventstore.append('user-kim', '[{\"type\": \"user-renamed\", \"data\": {}}]')",
    )
    .execute(&mut *tx)
    .await;
    assert_eq!(sqlstate(&result).as_deref(), Some("40001"));
    tx.rollback().await.unwrap();
    assert_eq!(stream_version(&db.pool, "user-kim").await, 1);
    db.drop_database().await;
}

#[tokio::test]
async fn errors_reach_the_client_with_their_sqlstate_and_write_nothing() {
    let db = TestDb::new(2).await;
    sqlx::query("SELECT eventstore.append('order-1', '[{\"type\": \"order-placed\", \"data\": {}, \"id\": \"9d9b3c52-5f0e-4a0e-8d3c-6a1a4b1c2d01\"}]')")
        .execute(&db.pool)
        .await
        .unwrap();
    let cases = [
        ("SELECT eventstore.append('order-1', '[{\"type\": \"x\", \"data\": {}}]', 5)", "40001"),
        ("SELECT eventstore.append('order-1', '[{\"type\": \"x\", \"data\": {}}]', eventstore.no_stream())", "40001"),
        ("SELECT eventstore.append('order-2', '[{\"type\": \"x\", \"data\": {}}]', eventstore.stream_exists())", "40001"),
        ("SELECT eventstore.append('order-2', '{\"type\": \"x\"}')", "22023"),
        ("SELECT eventstore.append('order-2', '[{\"type\": \"x\", \"data\": {}, \"id\": \"nope\"}]')", "22023"),
        ("SELECT eventstore.append('order-2', '[{\"type\": \"x\", \"data\": {}, \"id\": \"9d9b3c52-5f0e-4a0e-8d3c-6a1a4b1c2d01\"}]')", "23505"),
        ("SELECT * FROM eventstore.read_all(0, -1)", "22023"),
        ("SELECT * FROM eventstore.read_stream('order-1', 0, 1000000)", "22023"),
        ("DELETE FROM eventstore.events", "0A000"),
    ];
    for (sql, expected) in cases {
        let result = sqlx::query(sql).execute(&db.pool).await;
        assert_eq!(sqlstate(&result).as_deref(), Some(expected), "{sql}");
    }
    let result =
        sqlx::query("SELECT eventstore.append('order-1', '[{\"type\": \"x\", \"data\": {}}]', 5)")
            .execute(&db.pool)
            .await;
    let error = result.unwrap_err();
    let message = error.as_database_error().unwrap().message().to_owned();
    assert_eq!(
        message,
        "wrong expected version for stream \"order-1\": expected 5, actual 0"
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(count, 1);
    db.drop_database().await;
}
