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
