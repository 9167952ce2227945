//! Every released version of the extension, updated to the current one, has the catalog of
//! a fresh install: functions with their definitions, tables, columns, constraints, indexes,
//! views, triggers, types, comments, grants and extension membership. And the events stored
//! before the update are still there, readable and appendable to.

use std::collections::BTreeSet;

use pg_eventstore_tests::TestDb;
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

/// The extension's objects, one line each, in a stable order.
async fn catalog(pool: &PgPool) -> BTreeSet<String> {
    const QUERIES: &[&str] = &[
        "SELECT 'extension ' || extversion || ' schema ' || extnamespace::regnamespace \
                || ' relocatable ' || extrelocatable \
         FROM pg_extension WHERE extname = 'pg_eventstore'",
        "SELECT 'dumped ' || c::regclass::text || ' where ' || coalesce(w, '') \
         FROM pg_extension, unnest(extconfig, extcondition) AS u(c, w) \
         WHERE extname = 'pg_eventstore'",
        "SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM pg_depend \
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e' \
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_eventstore')",
        "SELECT 'schema comment ' || coalesce(obj_description('eventstore'::regnamespace, \
                'pg_namespace'), '-')",
        "SELECT 'function ' || p.oid::regprocedure::text || ' volatile ' || p.provolatile::text \
                || ' parallel ' || p.proparallel::text || ' strict ' || p.proisstrict \
                || ' security definer ' || p.prosecdef \
                || ' config ' || coalesce(p.proconfig::text, '-') \
                || ' acl ' || coalesce(p.proacl::text, 'default') \
                || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-') \
                || E'\\n' || pg_get_functiondef(p.oid) \
         FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace",
        "SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text \
                || ' persistence ' || c.relpersistence::text \
                || ' acl ' || coalesce(c.relacl::text, 'default') \
                || ' options ' || coalesce(c.reloptions::text, '-') \
                || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '-') \
         FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'column ' || c.relname || ' #' \
                || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) \
                || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') \
                || ' identity ' || a.attidentity::text || ' generated ' || a.attgenerated::text \
                || ' collation ' || a.attcollation::regcollation::text \
                || ' acl ' || coalesce(a.attacl::text, 'default') \
                || ' comment ' || coalesce(col_description(c.oid, a.attnum), '-') \
         FROM pg_class c \
         JOIN pg_attribute a ON a.attrelid = c.oid \
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND a.attnum > 0 \
           AND NOT a.attisdropped",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' \
                || pg_get_constraintdef(oid) \
                || ' comment ' || coalesce(obj_description(oid, 'pg_constraint'), '-') \
         FROM pg_constraint WHERE connamespace = 'eventstore'::regnamespace",
        "SELECT 'index ' || pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'view ' || c.relname || E'\\n' || pg_get_viewdef(c.oid) \
         FROM pg_class c \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('v', 'm')",
        "SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text \
                || ' comment ' || coalesce(obj_description(t.oid, 'pg_trigger'), '-') \
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND NOT t.tgisinternal",
        "SELECT 'type ' || t.typname || ' ' || t.typtype::text \
                || ' comment ' || coalesce(obj_description(t.oid, 'pg_type'), '-') \
         FROM pg_type t WHERE t.typnamespace = 'eventstore'::regnamespace",
        "SELECT 'sequence ' || s.seqrelid::regclass::text || ' ' || s.seqtypid::regtype::text \
                || ' ' || s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmax \
         FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'policy ' || polname || ' on ' || polrelid::regclass::text \
         FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
    ];
    let mut lines = BTreeSet::new();
    for query in QUERIES {
        let rows: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|error| panic!("{query}: {error}"));
        lines.extend(rows);
    }
    lines
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
