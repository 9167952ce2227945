//! Least privilege over the wire: a role granted nothing may call nothing; each of
//! eventstore_reader, eventstore_writer, eventstore_consumer and eventstore_admin may call
//! what it is for, and every other call is refused with 42501 and writes nothing. No role
//! can change stored events, whatever it is granted, short of superuser.

use pg_eventstore_tests::{sqlstate, stored_rows, TestDb};
use sqlx::{ConnectOptions, PgConnection};

/// Reads and subscriptions.
const READ: &[&str] = &[
    "SELECT count(*) FROM eventstore.read_all(0, 10)",
    "SELECT count(*) FROM eventstore.read_stream('order-1')",
    "SELECT count(*) FROM eventstore.read_category('order')",
    "SELECT eventstore.head_position()",
    "SELECT eventstore.stream_version('order-1')",
    "SELECT * FROM eventstore.health()",
    "SELECT * FROM eventstore.groups",
];

/// Appends.
const WRITE: &[&str] = &[
    "SELECT eventstore.append('order-1', '[{\"type\": \"order-noted\", \"data\": {}}]')",
    "SELECT eventstore.try_append('order-2', '[{\"type\": \"order-noted\", \"data\": {}}]')",
];

/// Competing consumers on an existing group.
const CONSUME: &[&str] = &[
    "SELECT count(*) FROM eventstore.fetch('billing', 'worker-1', 1)",
    "SELECT eventstore.ack('billing', 'worker-1', '{1}')",
    "SELECT eventstore.nack('billing', 'worker-1', '{1}')",
    "SELECT eventstore.park('billing', 'worker-1', '{1}')",
    "SELECT count(*) FROM eventstore.parked('billing')",
];

/// Group administration and the position base, in an order that works.
const ADMINISTER: &[&str] = &[
    "SELECT eventstore.create_group('admin_made')",
    "SELECT eventstore.alter_group('admin_made', max_attempts => 3)",
    "SELECT eventstore.replay_parked('admin_made')",
    "SELECT eventstore.drop_parked('admin_made')",
    "SELECT eventstore.delete_group('admin_made')",
    "SELECT eventstore.rebase_positions()",
];

/// Writes past the API, refused to every role.
const PAST_THE_API: &[&str] = &[
    "INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
     VALUES (1, 'order-9', 0, 't', '{}', '{}', gen_random_uuid())",
    "UPDATE eventstore.events SET data = '{}'",
    "DELETE FROM eventstore.events",
    "TRUNCATE eventstore.events",
    "UPDATE eventstore.subscription_groups SET position = 0",
    "DELETE FROM eventstore.group_events",
    "DELETE FROM eventstore.group_leases",
    "UPDATE eventstore.position_base SET base = 0",
];

async fn login(db: &TestDb, role: &str) -> PgConnection {
    let url = db.url();
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    options.username(role).connect().await.unwrap()
}

/// Calls every statement of `calls` as `role`: `allowed` ones must succeed, the others must
/// fail with 42501 and leave the store as it was.
async fn check(db: &TestDb, conn: &mut PgConnection, role: &str, calls: &[&str], allowed: bool) {
    for sql in calls {
        let before = stored_rows(&db.pool).await;
        let result = sqlx::query(sql).execute(&mut *conn).await;
        if allowed {
            assert!(result.is_ok(), "{role} may run {sql}: {:?}", result.err());
        } else {
            assert_eq!(
                sqlstate(&result).as_deref(),
                Some("42501"),
                "{role} must not run {sql}"
            );
            assert_eq!(
                stored_rows(&db.pool).await,
                before,
                "{role}'s refused {sql} wrote nothing"
            );
        }
    }
}

#[tokio::test]
async fn each_role_may_call_what_it_is_for_and_nothing_else() {
    let db = TestDb::new(4).await;
    sqlx::query(
        "SELECT eventstore.append('order-1', '[{\"type\": \"order-placed\", \"data\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT eventstore.create_group('billing')")
        .execute(&db.pool)
        .await
        .unwrap();

    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let cases: [(&str, [bool; 4]); 5] = [
        // granted role (none for the first), then read, write, consume, administer
        ("", [false, false, false, false]),
        ("eventstore_reader", [true, false, false, false]),
        ("eventstore_writer", [true, true, false, false]),
        ("eventstore_consumer", [true, false, true, false]),
        ("eventstore_admin", [true, true, true, true]),
    ];
    for (granted, [read, write, consume, administer]) in cases {
        let role = format!(
            "es_app_{}_{suffix}",
            if granted.is_empty() {
                "nobody"
            } else {
                granted
            }
        );
        sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
            .execute(&db.pool)
            .await
            .unwrap();
        if !granted.is_empty() {
            sqlx::query(&format!("GRANT {granted} TO {role}"))
                .execute(&db.pool)
                .await
                .unwrap();
        }
        let mut conn = login(&db, &role).await;
        check(&db, &mut conn, &role, READ, read).await;
        check(&db, &mut conn, &role, WRITE, write).await;
        check(&db, &mut conn, &role, CONSUME, consume).await;
        check(&db, &mut conn, &role, ADMINISTER, administer).await;
        check(&db, &mut conn, &role, PAST_THE_API, false).await;
        drop(conn);
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    db.drop_database().await;
}

#[tokio::test]
async fn no_grant_lets_a_role_change_stored_events() {
    let db = TestDb::new(4).await;
    sqlx::query(
        "SELECT eventstore.append('order-1', '[{\"type\": \"order-placed\", \"data\": {}}]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let role = format!("es_app_granted_all_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(&format!(
        "CREATE ROLE {role} LOGIN IN ROLE eventstore_admin; \
         GRANT ALL ON eventstore.events TO {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut conn = login(&db, &role).await;
    for sql in [
        "UPDATE eventstore.events SET data = '{\"forged\": true}'",
        "DELETE FROM eventstore.events",
        "TRUNCATE eventstore.events",
    ] {
        let result = sqlx::query(sql).execute(&mut conn).await;
        assert_eq!(sqlstate(&result).as_deref(), Some("0A000"), "{sql}");
    }
    for sql in [
        "ALTER TABLE eventstore.events DISABLE TRIGGER events_immutable",
        "DROP TRIGGER events_immutable ON eventstore.events",
        "SET session_replication_role = replica",
    ] {
        let result = sqlx::query(sql).execute(&mut conn).await;
        assert_eq!(sqlstate(&result).as_deref(), Some("42501"), "{sql}");
    }
    drop(conn);
    let unchanged: (i64, String) =
        sqlx::query_as("SELECT count(*), min(data::text) FROM eventstore.events")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(unchanged, (1, "{}".to_owned()));
    sqlx::raw_sql(&format!(
        "REVOKE ALL ON eventstore.events FROM {role}; DROP ROLE {role}"
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn every_security_definer_function_pins_its_search_path() {
    let db = TestDb::new(1).await;
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
         WHERE p.pronamespace = 'eventstore'::regnamespace AND p.prosecdef \
           AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(unpinned, Vec::<String>::new());
    let definers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc p \
         WHERE p.pronamespace = 'eventstore'::regnamespace AND p.prosecdef",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(definers >= 10);
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
         WHERE p.pronamespace = 'eventstore'::regnamespace \
           AND has_function_privilege('public', p.oid, 'EXECUTE')",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        public,
        Vec::<String>::new(),
        "nothing is executable by PUBLIC"
    );
    db.drop_database().await;
}
