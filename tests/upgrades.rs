//! Every released version of the extension, updated to the current one, has the catalog of
//! a fresh install: functions with their definitions, tables, columns, constraints, indexes,
//! views, triggers, types, comments, grants and extension membership. And the events stored
//! before the update are still there, readable and appendable to.

use pg_eventstore_tests::{catalog, TestDb};
use sqlx::PgPool;

/// The released versions older than this one, from their frozen install scripts.
fn older_versions() -> Vec<String> {
    let released = concat!(env!("CARGO_MANIFEST_DIR"), "/../extension/sql/released");
    let mut versions: Vec<String> = std::fs::read_dir(released)
        .expect("extension/sql/released exists")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter_map(|name| {
            name.strip_prefix("pg_eventstore--")?
                .strip_suffix(".sql")
                .map(str::to_owned)
        })
        .filter(|version| version != env!("CARGO_PKG_VERSION"))
        .collect();
    versions.sort();
    versions
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sql)
        .execute(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"));
}

#[tokio::test]
async fn every_released_version_updates_to_the_catalog_of_a_fresh_install() {
    let versions = older_versions();
    assert!(
        versions.contains(&"0.1.0".to_owned()) && versions.contains(&"0.2.0".to_owned()),
        "the released install scripts are kept: {versions:?}"
    );
    let fresh = TestDb::empty(2).await;
    exec(&fresh.pool, "CREATE EXTENSION pg_eventstore").await;
    let expected = catalog(&fresh.pool).await;
    assert!(expected.contains(&format!(
        "extension {} schema eventstore relocatable false",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(
        expected.len() > 100,
        "the catalog query sees the extension: {} lines",
        expected.len()
    );
    fresh.drop_database().await;

    for version in versions {
        let db = TestDb::empty(2).await;
        exec(
            &db.pool,
            &format!("CREATE EXTENSION pg_eventstore VERSION '{version}'"),
        )
        .await;
        exec(
            &db.pool,
            "SELECT eventstore.append('order-1', \
             '[{\"type\": \"order-placed\", \"data\": {\"n\": 1}}]', -1)",
        )
        .await;
        exec(&db.pool, "ALTER EXTENSION pg_eventstore UPDATE").await;
        let updated = catalog(&db.pool).await;
        let missing: Vec<&String> = expected.difference(&updated).collect();
        let extra: Vec<&String> = updated.difference(&expected).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{version} updated differs from a fresh install.\n\
             only in the fresh install:\n{}\n\nonly in the updated one:\n{}",
            missing
                .iter()
                .map(|line| line.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            extra
                .iter()
                .map(|line| line.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        // What was stored before the update is there, and the stream goes on.
        exec(
            &db.pool,
            "SELECT eventstore.append('order-1', \
             '[{\"type\": \"order-paid\", \"data\": {\"n\": 2}}]', 0)",
        )
        .await;
        let types: Vec<String> =
            sqlx::query_scalar("SELECT type FROM eventstore.read_stream('order-1')")
                .fetch_all(&db.pool)
                .await
                .unwrap();
        assert_eq!(types, ["order-placed", "order-paid"], "from {version}");
        db.drop_database().await;
    }
}

async fn scalar(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("{sql}: {error}"))
}

/// Groups in flight when 0.4.0 (a row per event in the group) is updated to 0.5.0 (leases
/// of batches, rows only for exceptions): leases, attempts and parked events carry over,
/// in both modes, and the groups go on with new events.
#[tokio::test]
async fn groups_in_flight_keep_their_leases_and_parked_events_across_the_update() {
    let db = TestDb::empty(2).await;
    let pool = &db.pool;
    exec(pool, "CREATE EXTENSION pg_eventstore VERSION '0.4.0'").await;
    exec(
        pool,
        "SELECT count(eventstore.append('acct-' || i % 5, jsonb_build_array( \
             jsonb_build_object('type', 't', 'data', jsonb_build_object('n', i))))) \
         FROM generate_series(0, 19) AS i",
    )
    .await;
    // Until every event is below the visibility bound, a fetch would see fewer of them.
    db.settled().await;
    for (group, ordered) in [("plain", false), ("ordered", true)] {
        exec(
            pool,
            &format!(
                "SELECT eventstore.create_group('{group}', max_attempts => 3, \
                 lease_timeout => '1 hour', ordered_by_stream => {ordered})"
            ),
        )
        .await;
        // a holds 4 events; one of them is parked; b holds others.
        exec(
            pool,
            &format!(
                "CREATE TABLE held_{group} AS SELECT position, stream FROM eventstore.fetch('{group}', 'a', 4); \
                 SELECT eventstore.park('{group}', 'a', ARRAY[(SELECT min(position) FROM held_{group})]); \
                 CREATE TABLE other_{group} AS SELECT position FROM eventstore.fetch('{group}', 'b', 3)"
            ),
        )
        .await;
        assert_eq!(
            scalar(pool, &format!("SELECT count(*) FROM held_{group}")).await,
            4,
            "{group}"
        );
    }
    exec(pool, "ALTER EXTENSION pg_eventstore UPDATE").await;
    assert_eq!(
        sqlx::query_scalar::<_, String>(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_eventstore'"
        )
        .fetch_one(pool)
        .await
        .unwrap(),
        env!("CARGO_PKG_VERSION")
    );
    for group in ["plain", "ordered"] {
        // The parked event is still parked, with its reason and attempt.
        assert_eq!(
            scalar(
                pool,
                &format!(
                    "SELECT count(*) FROM eventstore.parked('{group}') \
                     WHERE position = (SELECT min(position) FROM held_{group}) AND attempt = 1"
                )
            )
            .await,
            1,
            "{group}"
        );
        // b's leases are b's: a cannot ack them, b can, each once.
        let others = format!("(SELECT array_agg(position) FROM other_{group})");
        let held = format!(
            "(SELECT array_agg(position) FROM held_{group} \
             WHERE position > (SELECT min(position) FROM held_{group}))"
        );
        let b_count = scalar(pool, &format!("SELECT count(*) FROM other_{group}")).await;
        assert_eq!(
            scalar(
                pool,
                &format!("SELECT eventstore.ack('{group}', 'a', {others})::bigint")
            )
            .await,
            0
        );
        assert_eq!(
            scalar(
                pool,
                &format!("SELECT eventstore.ack('{group}', 'b', {others})::bigint")
            )
            .await,
            b_count,
            "{group}"
        );
        assert_eq!(
            scalar(
                pool,
                &format!("SELECT eventstore.ack('{group}', 'b', {others})::bigint")
            )
            .await,
            0
        );
        assert_eq!(
            scalar(
                pool,
                &format!("SELECT eventstore.ack('{group}', 'a', {held})::bigint")
            )
            .await,
            3,
            "{group}"
        );
        // The rest of the log flows through the new leases, each event once; an ordered
        // group holds back only the parked event's stream.
        let mut seen = 0;
        loop {
            let positions: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT position FROM eventstore.fetch('{group}', 'c', 100)"
            ))
            .fetch_all(pool)
            .await
            .unwrap();
            if positions.is_empty() {
                break;
            }
            seen += positions.len() as i64;
            let acked: i32 =
                sqlx::query_scalar(&format!("SELECT eventstore.ack('{group}', 'c', $1)"))
                    .bind(&positions)
                    .fetch_one(pool)
                    .await
                    .unwrap();
            assert_eq!(acked as usize, positions.len());
        }
        let handled_before = 3 + b_count;
        let parked_stream_rest = scalar(
            pool,
            &format!(
                "SELECT count(*) FROM eventstore.events WHERE stream = \
                 (SELECT stream FROM held_{group} ORDER BY position LIMIT 1) \
                 AND position > (SELECT min(position) FROM held_{group}) \
                 AND position NOT IN (SELECT position FROM held_{group}) \
                 AND position NOT IN (SELECT position FROM other_{group})"
            ),
        )
        .await;
        let expected = if group == "ordered" {
            20 - 1 - handled_before - parked_stream_rest
        } else {
            20 - 1 - handled_before
        };
        assert_eq!(seen, expected, "{group}");
        let (in_flight, parked): (i64, i64) = sqlx::query_as(&format!(
            "SELECT in_flight, parked FROM eventstore.groups WHERE group_name = '{group}'"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((in_flight, parked), (0, 1), "{group}");
    }
    db.drop_database().await;
}
