//! The store's migrations and an application's own migration sets: what `migrate()` creates
//! in an application's database, and the upgrades of databases set up by release 0.2.0
//! (whose store migrations also created the shop's read models) and by release 0.3.0.

use pg_eventstore_client::projection::{self, Daemon, DaemonOptions};
use pg_eventstore_client::{AppliedMigration, EventData, EventStore, ExpectedVersion};
use pg_eventstore_shop::ShopProjection;
use pg_eventstore_tests::{eventually, settled, TestDb, PATIENCE};
use refinery_core::{Migration, Runner};
use serde_json::json;

fn applied(list: &[(i32, &str)]) -> Vec<AppliedMigration> {
    list.iter()
        .map(|(version, name)| AppliedMigration {
            version: *version,
            name: (*name).to_owned(),
        })
        .collect()
}

async fn extension_version(db: &TestDb) -> String {
    sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'pg_eventstore'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn schemas(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace \
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname NOT IN ('information_schema', 'public') \
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_store_migrations_create_the_store_and_nothing_else() {
    let db = TestDb::empty(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    store.migrate().await.unwrap();
    assert_eq!(schemas(&db).await, ["eventstore", "projections"]);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(tables, ["eventstore_schema_history"]);

    // The shop's set comes on request, with a history of its own.
    let shop = pg_eventstore_shop::migrate(&store).await.unwrap();
    assert_eq!(
        shop,
        applied(&[(1, "shop_read_models"), (2, "shop_read_models_storage")])
    );
    assert_eq!(schemas(&db).await, ["eventstore", "projections", "shop"]);
    assert_eq!(pg_eventstore_shop::migrate(&store).await.unwrap(), vec![]);

    let refused = store
        .migrate_set(Runner::new(&[]), "Bad Name")
        .await
        .unwrap_err();
    assert!(
        matches!(refused, pg_eventstore_client::Error::InvalidArgument(_)),
        "{refused:?}"
    );
    db.drop_database().await;
}

/// A refinery runner of (name, SQL) migrations, as an earlier release embedded them.
fn runner(migrations: &[(&str, &str)]) -> Runner {
    let migrations: Vec<Migration> = migrations
        .iter()
        .map(|(name, sql)| Migration::unapplied(name, sql).unwrap())
        .collect();
    Runner::new(&migrations)
}

/// The store migrations of release 0.2.0, as refinery saw them: V1 is the file still in
/// `migrations/eventstore`, V2 and V3 the ones that left it (kept as fixtures).
fn release_0_2_0() -> Runner {
    runner(&[
        (
            "V1__pg_eventstore_extension",
            include_str!("../migrations/eventstore/V1__pg_eventstore_extension.sql"),
        ),
        (
            "V2__shop_read_models",
            include_str!("fixtures/release-0.2.0-V2__shop_read_models.sql"),
        ),
        (
            "V3__pg_eventstore_0_2_0",
            include_str!("fixtures/release-0.2.0-V3__pg_eventstore_0_2_0.sql"),
        ),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_set_up_by_release_0_2_0_keeps_its_events_read_models_and_checkpoints() {
    let db = TestDb::empty(8).await;
    let store = EventStore::from_pool(db.pool.clone());
    // What 0.2.0's migrate() did with the 0.2.0 library: the extension at 0.2.0 (its install
    // script is kept in extension/sql/released/), its three migrations in the store's
    // history table.
    sqlx::query("CREATE EXTENSION pg_eventstore VERSION '0.2.0'")
        .execute(&db.pool)
        .await
        .unwrap();
    let old = store
        .migrate_set(release_0_2_0(), pg_eventstore_client::HISTORY_TABLE)
        .await
        .unwrap();
    assert_eq!(
        old,
        applied(&[
            (1, "pg_eventstore_extension"),
            (2, "shop_read_models"),
            (3, "pg_eventstore_0_2_0")
        ])
    );
    let user = |name: &str| {
        EventData::json(
            "user-created",
            json!({"username": name, "fullName": name.to_uppercase()}),
        )
    };
    store
        .append("user-ada", ExpectedVersion::NoStream, [user("ada")])
        .await
        .unwrap();
    settled(&db.pool).await;
    projection::rebuild(&store, &ShopProjection, 100, |_| {})
        .await
        .unwrap();
    let before: i64 =
        sqlx::query_scalar("SELECT position FROM projections.checkpoints WHERE name = 'shop'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(before > 0);

    // The upgrade: the store's set now ends with the checkpoints, the shop's set adopts
    // the tables it finds.
    let upgraded = store.migrate().await.unwrap();
    assert_eq!(
        upgraded,
        applied(&[
            (4, "projection_checkpoints"),
            (6, "pg_eventstore_update"),
            (7, "pg_eventstore_update")
        ])
    );
    assert_eq!(extension_version(&db).await, env!("CARGO_PKG_VERSION"));
    let history: Vec<(i32, String)> =
        sqlx::query_as("SELECT version, name::text FROM eventstore_schema_history ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        history,
        [
            (1, "pg_eventstore_extension".to_owned()),
            (4, "projection_checkpoints".to_owned()),
            (6, "pg_eventstore_update".to_owned()),
            (7, "pg_eventstore_update".to_owned())
        ]
    );
    let shop = pg_eventstore_shop::migrate(&store).await.unwrap();
    assert_eq!(
        shop,
        applied(&[(1, "shop_read_models"), (2, "shop_read_models_storage")])
    );
    assert_eq!(store.migrate().await.unwrap(), vec![]);
    let kept: (i64, String) = sqlx::query_as(
        "SELECT c.position, u.full_name FROM projections.checkpoints c, shop.users u \
         WHERE c.name = 'shop' AND u.username = 'ada'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(kept, (before, "ADA".to_owned()));

    // The daemon continues from the kept checkpoint.
    let grace = store
        .append("user-grace", ExpectedVersion::NoStream, [user("grace")])
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = tokio::spawn(
        Daemon::new(store.clone(), DaemonOptions::default())
            .with(ShopProjection)
            .run(async {
                let _ = stopped.await;
            }),
    );
    eventually(PATIENCE, "the daemon applied the new user", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT position FROM projections.checkpoints WHERE name = 'shop'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            >= grace.last_position as i64
    })
    .await;
    stop.send(()).unwrap();
    daemon.await.unwrap().unwrap();
    let applied: i64 = sqlx::query_scalar(
        "SELECT events_applied FROM projections.checkpoints WHERE name = 'shop'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(applied, 2, "each event applied once, across the upgrade");
    let users: Vec<String> = sqlx::query_scalar("SELECT username FROM shop.users ORDER BY 1")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, ["ada", "grace"]);
    db.drop_database().await;
}

/// The store migrations of release 0.3.0: V1 and V4 are still in `migrations/eventstore`, V5
/// left it (kept as a fixture).
fn release_0_3_0() -> Runner {
    runner(&[
        (
            "V1__pg_eventstore_extension",
            include_str!("../migrations/eventstore/V1__pg_eventstore_extension.sql"),
        ),
        (
            "V4__projection_checkpoints",
            include_str!("../migrations/eventstore/V4__projection_checkpoints.sql"),
        ),
        (
            "V5__pg_eventstore_0_3_0",
            include_str!("fixtures/release-0.3.0-V5__pg_eventstore_0_3_0.sql"),
        ),
    ])
}

#[tokio::test]
async fn a_database_set_up_by_release_0_3_0_is_updated_with_its_events_and_groups() {
    let db = TestDb::empty(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    sqlx::query("CREATE EXTENSION pg_eventstore VERSION '0.3.0'")
        .execute(&db.pool)
        .await
        .unwrap();
    let old = store
        .migrate_set(release_0_3_0(), pg_eventstore_client::HISTORY_TABLE)
        .await
        .unwrap();
    assert_eq!(
        old,
        applied(&[
            (1, "pg_eventstore_extension"),
            (4, "projection_checkpoints"),
            (5, "pg_eventstore_0_3_0")
        ])
    );
    let placed = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [EventData::json("order-placed", json!({}))],
        )
        .await
        .unwrap();
    sqlx::query("SELECT eventstore.create_group('billing')")
        .execute(&db.pool)
        .await
        .unwrap();

    let upgraded = store.migrate().await.unwrap();
    assert_eq!(
        upgraded,
        applied(&[(6, "pg_eventstore_update"), (7, "pg_eventstore_update")])
    );
    assert_eq!(extension_version(&db).await, env!("CARGO_PKG_VERSION"));
    assert_eq!(store.migrate().await.unwrap(), vec![]);
    let history: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM eventstore_schema_history ORDER BY 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(history, [1, 4, 6, 7]);
    settled(&db.pool).await;
    let fetched: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.fetch('billing', 'worker-1', 10)")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(fetched, [placed.last_position as i64]);
    let next = store
        .append(
            "order-1",
            ExpectedVersion::Exact(0),
            [EventData::json("order-paid", json!({}))],
        )
        .await
        .unwrap();
    assert!(next.first_position > placed.last_position);
    db.drop_database().await;
}
