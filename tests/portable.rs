//! The portable form (plain SQL and PL/pgSQL, `pg_eventstore_client::portable`): installed by
//! a database owner who is not superuser with `eventstore migrate --portable`, with the
//! extension's catalog and the extension's errors.

use std::collections::BTreeSet;
use std::process::Command;
use std::str::FromStr;

use futures_util::TryStreamExt;
use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, Form, ReadAllOptions};
use pg_eventstore_tests::{catalog, eventstore_bin, eventually, settled, TestDb, PATIENCE};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool};

/// The portable form's own internals, which the extension implements inside its C functions.
const PORTABLE_ONLY: [&str; 5] = [
    "eventstore._insert_events(text,jsonb,bigint,bigint)",
    "eventstore._append_problem(text,jsonb,bigint,text)",
    "eventstore._append(text,jsonb,bigint,boolean,text)",
    "eventstore._parse_uuid(text)",
    "eventstore._uuid_v7()",
];

/// A database owned by a new login role with no other privilege (no superuser, no
/// CREATEROLE), the way managed PostgreSQL hands out databases; and that role's URL.
async fn owned_database(db: &TestDb) -> (String, String) {
    let owner = format!("owner_{}", &db.name[8..20]);
    sqlx::query(&format!("CREATE ROLE {owner} LOGIN"))
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(&format!("ALTER DATABASE {} OWNER TO {owner}", db.name))
        .execute(&db.pool)
        .await
        .unwrap();
    let url = owned_url(db, &owner);
    (owner, url)
}

/// The URL of `db` for its owner `owner`.
fn owned_url(db: &TestDb, owner: &str) -> String {
    let options = PgConnectOptions::from_str(&db.url()).unwrap();
    format!(
        "postgres://{owner}@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        db.name
    )
}

async fn drop_owned(db: TestDb, owner: &str) {
    let admin = db.url().replace(&format!("/{}", db.name), "/postgres");
    db.drop_database().await;
    let pool = PgPoolOptions::new().connect(&admin).await.unwrap();
    sqlx::query(&format!("DROP ROLE {owner}"))
        .execute(&pool)
        .await
        .unwrap();
}

fn migrate(url: &str, args: &[&str]) -> String {
    let output = Command::new(eventstore_bin())
        .arg("migrate")
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("eventstore runs");
    assert!(
        output.status.success(),
        "eventstore migrate {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn a_database_owner_without_superuser_installs_the_portable_form_and_uses_it() {
    let db = TestDb::empty(2).await;
    let (owner, url) = owned_database(&db).await;

    let applied = migrate(&url, &["--portable"]);
    for version in ["V1__", "V4__", "V6__", "V7__"] {
        assert!(applied.contains(version), "{version} applied: {applied}");
    }
    assert!(migrate(&url, &[]).contains("the database is up to date"));

    let store = EventStore::connect(&url).await.unwrap();
    assert_eq!(store.installed_form().await.unwrap(), Some(Form::Portable));
    let owner_of: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = 'eventstore.events'::regclass",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(owner_of, owner);
    let mode: String = sqlx::query_scalar("SELECT eventstore.wakeup_mode()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(mode, "notifier");

    let first = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            vec![EventData::json("placed", serde_json::json!({"total": 3}))],
        )
        .await
        .unwrap();
    let second = store
        .append(
            "order-1",
            ExpectedVersion::Exact(0),
            vec![
                EventData::json("paid", serde_json::json!({})),
                EventData::json("shipped", serde_json::json!({})),
            ],
        )
        .await
        .unwrap();
    assert_eq!((second.first_version, second.last_version), (1, 2));
    assert!(second.first_position > first.last_position);
    let conflict = store
        .append(
            "order-1",
            ExpectedVersion::Exact(0),
            vec![EventData::json("paid", serde_json::json!({}))],
        )
        .await;
    assert!(
        matches!(
            conflict,
            Err(pg_eventstore_client::Error::WrongExpectedVersion { .. })
        ),
        "{conflict:?}"
    );
    // Another test's transaction, anywhere in the cluster, holds the log back while it runs.
    settled(store.pool()).await;
    let all: Vec<String> = store
        .read_all(ReadAllOptions::default())
        .map_ok(|e| e.event_type)
        .try_collect()
        .await
        .unwrap();
    let types: Vec<&str> = all.iter().map(String::as_str).collect();
    assert_eq!(types, ["placed", "paid", "shipped"]);
    store.pool().close().await;
    drop_owned(db, &owner).await;
}

/// The catalog of a database, with the owner's name taken out of its grants, and for each
/// function the portable form replaces, only what callers see of it.
async fn comparable_catalog(
    pool: &PgPool,
    owner: &str,
    replaced: &BTreeSet<String>,
) -> BTreeSet<String> {
    catalog(pool)
        .await
        .into_iter()
        .filter(|line| {
            !line.starts_with("extension ")
                && !line.starts_with("member ")
                && !line.starts_with("dumped ")
        })
        .filter(|line| {
            !PORTABLE_ONLY
                .iter()
                .any(|f| line.starts_with(&format!("function {f} ")))
        })
        .map(|line| {
            line.replace(&format!("{owner}="), "OWNER=")
                .replace(&format!("/{owner}"), "/OWNER")
        })
        .map(|line| {
            match replaced
                .iter()
                .find(|f| line.starts_with(&format!("function {f} ")))
            {
                // Language, body, SECURITY DEFINER and search_path are the implementation's.
                Some(_) => {
                    let head = line.lines().next().unwrap_or_default().to_owned();
                    let cut = |head: &str, from: &str, to: &str| -> String {
                        match (head.find(from), head.find(to)) {
                            (Some(a), Some(b)) if a < b => format!("{}{}", &head[..a], &head[b..]),
                            _ => head.to_owned(),
                        }
                    };
                    cut(&head, " security definer ", " acl ")
                }
                None => line,
            }
        })
        .collect()
}

/// A database with the extension beside one with the portable form, installed by its owner.
struct Pair {
    native: TestDb,
    db: TestDb,
    owner: String,
    portable: PgPool,
}

impl Pair {
    async fn new() -> Pair {
        let native = TestDb::with_extension(2).await;
        let db = TestDb::empty(2).await;
        let (owner, url) = owned_database(&db).await;
        migrate(&url, &["--portable"]);
        let portable = PgPoolOptions::new().connect(&url).await.unwrap();
        Pair {
            native,
            db,
            owner,
            portable,
        }
    }

    async fn drop(self) {
        self.portable.close().await;
        self.native.drop_database().await;
        drop_owned(self.db, &self.owner).await;
    }
}

#[tokio::test]
async fn the_portable_catalog_is_the_extensions() {
    let Pair {
        native,
        db,
        owner,
        portable,
    } = Pair::new().await;

    let replaced: BTreeSet<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p \
         WHERE p.pronamespace = 'eventstore'::regnamespace AND p.prolang = \
               (SELECT oid FROM pg_language WHERE lanname = 'c')",
    )
    .fetch_all(&native.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert!(
        replaced.contains("eventstore.append(text,jsonb,bigint)"),
        "{replaced:?}"
    );
    let native_owner: String = sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'eventstore'",
    )
    .fetch_one(&native.pool)
    .await
    .unwrap();
    let expected = comparable_catalog(&native.pool, &native_owner, &replaced).await;
    let got = comparable_catalog(&portable, &owner, &replaced).await;
    assert!(
        expected.len() > 100,
        "the catalog query sees the store: {expected:?}"
    );
    let missing: Vec<&String> = expected.difference(&got).collect();
    let extra: Vec<&String> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "the portable catalog differs from the extension's\nonly in the extension:\n{}\nonly in the portable form:\n{}",
        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
        extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n"),
    );
    Pair {
        native,
        db,
        owner,
        portable,
    }
    .drop()
    .await;
}

/// What a failed statement reports: SQLSTATE, message, detail and hint.
async fn failure(pool: &PgPool, sql: &str) -> String {
    match sqlx::raw_sql(sql).execute(pool).await {
        Ok(_) => "succeeded".to_owned(),
        Err(sqlx::Error::Database(error)) => {
            let error = error.downcast_ref::<sqlx::postgres::PgDatabaseError>();
            format!(
                "{} {} | {} | {}",
                error.code(),
                error.message(),
                error.detail().unwrap_or("-"),
                error.hint().unwrap_or("-")
            )
        }
        Err(other) => panic!("{sql}: {other}"),
    }
}

#[tokio::test]
async fn bad_input_gets_the_same_error_from_both_forms_and_writes_nothing() {
    let Pair {
        native,
        db,
        owner,
        portable,
    } = Pair::new().await;
    let setup = "SELECT eventstore.append('order-1', \
                 '[{\"type\": \"placed\", \"data\": {}, \"id\": \"0190e4a2-7a6b-7c3d-8e9f-0123456789ab\"}]')";
    for pool in [&native.pool, &portable] {
        sqlx::raw_sql(setup).execute(pool).await.unwrap();
    }
    let long = "x".repeat(1025);
    let id = "0190e4a2-7a6b-7c3d-8e9f-0123456789ad";
    let a = format!("{{\"type\": \"a\", \"data\": 1, \"id\": \"{id}\"}}");
    let b = "{\"type\": \"a\", \"data\": 1, \"id\": \"0190e4a2-7a6b-7c3d-8e9f-0123456789ae\"}";
    let cases = [
        "SELECT eventstore.append(NULL, '[]')".to_owned(),
        "SELECT eventstore.append('', '[]')".to_owned(),
        format!("SELECT eventstore.append('{long}', '[]')"),
        "SELECT eventstore.append('s', NULL)".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1}]', -3)".to_owned(),
        "SELECT eventstore.append('s', '{}')".to_owned(),
        "SELECT eventstore.append('s', '\"x\"')".to_owned(),
        "SELECT eventstore.append('s', '[]')".to_owned(),
        "SELECT eventstore.append('s', '[1]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"data\": 1}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": 7, \"data\": 1}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"\", \"data\": 1}]')".to_owned(),
        format!("SELECT eventstore.append('s', '[{{\"type\": \"{long}\", \"data\": 1}}]')"),
        "SELECT eventstore.append('s', '[{\"type\": \"a\"}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1, \"metadata\": []}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1, \"id\": 5}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1, \"id\": \"nope\"}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1, \"extra\": true}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1}, {\"type\": \"b\"}]')".to_owned(),
        "SELECT eventstore.append('s', '[{\"type\": \"a\", \"data\": 1, \"id\": \"0190e4a2-7a6b-7c3d-8e9f-0123456789ac\"}, \
         {\"type\": \"b\", \"data\": 1, \"id\": \"0190E4A2-7A6B-7C3D-8E9F-0123456789AC\"}]')".to_owned(),
        // Which problem is reported when a repeated id and a malformed event meet: the
        // first in batch order, an event's own fields before its id's repetition.
        format!("SELECT eventstore.append('s', '[{a}, {{\"type\": \"b\"}}, {a}]')"),
        format!("SELECT eventstore.append('s', '[{a}, {a}, {{\"type\": \"b\"}}]')"),
        format!("SELECT eventstore.append('s', '[{a}, {{\"type\": \"b\", \"id\": \"{id}\"}}]')"),
        format!("SELECT eventstore.append('s', '[{{\"type\": \"b\", \"id\": \"{id}\"}}, {a}]')"),
        format!("SELECT eventstore.append('s', '[{b}, {a}, {b}, {a}]')"),
        "SELECT eventstore.append('order-1', '[{\"type\": \"a\", \"data\": 1}]', 5)".to_owned(),
        "SELECT eventstore.append('order-1', '[{\"type\": \"a\", \"data\": 1}]', -1)".to_owned(),
        "SELECT eventstore.append('order-2', '[{\"type\": \"a\", \"data\": 1}]', -2)".to_owned(),
        "SELECT eventstore.append('order-2', '[{\"type\": \"a\", \"data\": 1, \"id\": \"0190e4a2-7a6b-7c3d-8e9f-0123456789ab\"}]')".to_owned(),
        "SELECT * FROM eventstore.read_stream('order-1', -2)".to_owned(),
        "SELECT * FROM eventstore.read_stream('order-1', -1, 10, false)".to_owned(),
        "SELECT * FROM eventstore.read_stream(NULL)".to_owned(),
        "SELECT * FROM eventstore.read_all(-1)".to_owned(),
        "SELECT * FROM eventstore.read_all(0, 100001)".to_owned(),
        "SELECT * FROM eventstore.read_all(0, NULL)".to_owned(),
        "SELECT * FROM eventstore.read_category('order-1')".to_owned(),
        "SELECT * FROM eventstore.read_category('')".to_owned(),
        "SELECT * FROM eventstore.read_category('order', 0, 10, 1, NULL)".to_owned(),
        "SELECT * FROM eventstore.read_category('order', 0, 10, 3, 2)".to_owned(),
        "UPDATE eventstore.events SET type = 'x'".to_owned(),
        "DELETE FROM eventstore.events".to_owned(),
    ];
    let mut differences = Vec::new();
    for sql in &cases {
        let expected = failure(&native.pool, sql).await;
        let got = failure(&portable, sql).await;
        assert!(
            !expected.starts_with("succeeded"),
            "{sql} fails on the extension"
        );
        if expected != got {
            differences.push(format!(
                "{sql}\n  extension: {expected}\n  portable:  {got}"
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // A conflict through try_append is data, and a retry of a stored event is recognised.
    for sql in [
        "SELECT t::text FROM eventstore.try_append('order-1', '[{\"type\": \"a\", \"data\": 1}]', 5) AS t",
        "SELECT (t.first_version, t.last_version, t.current_version)::text \
         FROM eventstore.try_append('order-1', \
              '[{\"type\": \"placed\", \"data\": {}, \"id\": \"0190e4a2-7a6b-7c3d-8e9f-0123456789ab\"}]', -1) AS t",
    ] {
        let expected: String = sqlx::query_scalar(sql).fetch_one(&native.pool).await.unwrap();
        let got: String = sqlx::query_scalar(sql).fetch_one(&portable).await.unwrap();
        assert_eq!(got, expected, "{sql}");
    }
    for pool in [&native.pool, &portable] {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(stored, 1, "only the setup's event is stored");
    }
    Pair {
        native,
        db,
        owner,
        portable,
    }
    .drop()
    .await;
}

/// Appends one `placed` event to `stream`.
async fn place(
    store: &EventStore,
    stream: &str,
    expected: ExpectedVersion,
) -> pg_eventstore_client::AppendResult {
    store
        .append(
            stream,
            expected,
            vec![EventData::json("placed", serde_json::json!({}))],
        )
        .await
        .unwrap()
}

/// `eventstore notify` on `url`, killed when dropped.
fn notifier(url: &str) -> tokio::process::Child {
    tokio::process::Command::new(eventstore_bin())
        .args(["notify", "--interval-ms", "5"])
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("eventstore notify starts")
}

/// Waits for a wake-up on `listener` whose payload (the readable head) is at least
/// `position`; earlier wake-ups are skipped.
async fn woken_at(listener: &mut sqlx::postgres::PgListener, position: u64) {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let notification = listener.recv().await.unwrap();
            let head: u64 = notification
                .payload()
                .parse()
                .expect("the payload is the head");
            if head >= position {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no wake-up reached position {position}"));
}

/// The pid of the session holding the notifier lock in this database, if one does.
async fn lock_holder(pool: &PgPool) -> Option<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(pg_eventstore_client::notifier::NOTIFIER_LOCK)
    .fetch_optional(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_notifier_wakes_listeners_and_a_second_one_takes_over_when_the_first_dies() {
    let Pair {
        native,
        db,
        owner,
        portable,
    } = Pair::new().await;
    let url = owned_url(&db, &owner);
    let store = EventStore::from_pool(portable.clone());
    let mut listener = sqlx::postgres::PgListener::connect_with(&portable)
        .await
        .unwrap();
    listener.listen("eventstore").await.unwrap();

    let mut first = notifier(&url);
    eventually(PATIENCE, "the first notifier holds the lock", || async {
        lock_holder(&portable).await.is_some()
    })
    .await;
    let holder = lock_holder(&portable).await;
    let _second = notifier(&url);
    let appended = place(&store, "order-1", ExpectedVersion::Any).await;
    woken_at(&mut listener, appended.last_position).await;

    first.kill().await.unwrap();
    eventually(PATIENCE, "the second notifier holds the lock", || async {
        lock_holder(&portable)
            .await
            .is_some_and(|pid| Some(pid) != holder)
    })
    .await;
    let appended = place(&store, "order-2", ExpectedVersion::Any).await;
    woken_at(&mut listener, appended.last_position).await;

    // On the extension's database there is nothing for a notifier to do.
    let output = Command::new(eventstore_bin())
        .arg("notify")
        .env("DATABASE_URL", native.url())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("no notifier is needed"));
    drop(listener);
    Pair {
        native,
        db,
        owner,
        portable,
    }
    .drop()
    .await;
}

#[tokio::test]
async fn the_committed_script_installs_with_psql_and_eventstore_migrate_takes_it_from_there() {
    let db = TestDb::empty(2).await;
    let (owner, url) = owned_database(&db).await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "../sql/portable/pg_eventstore--{}.sql",
        pg_eventstore_client::portable::VERSION
    ));
    let output = Command::new(std::path::Path::new(pg_eventstore_tests::PG_BIN).join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f"])
        .arg(&script)
        .arg(&url)
        .env("PGOPTIONS", "-c client_min_messages=warning")
        .output()
        .expect("psql runs");
    assert!(
        output.status.success(),
        "psql -1 -f {} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    // Only the shop's own read models are left to apply; the store's migrations are recorded.
    let applied = migrate(&url, &[]);
    assert!(!applied.contains("eventstore_schema_history"), "{applied}");
    assert!(applied.contains("shop_schema_history"), "{applied}");
    let store = EventStore::connect(&url).await.unwrap();
    assert_eq!(store.installed_form().await.unwrap(), Some(Form::Portable));
    let appended = place(&store, "order-1", ExpectedVersion::NoStream).await;
    assert_eq!(appended.first_version, 0);
    store.pool().close().await;
    drop_owned(db, &owner).await;
}

#[tokio::test]
async fn on_a_server_without_the_extension_a_database_owner_gets_the_portable_form_from_plain_migrate(
) {
    let cluster = pg_eventstore_tests::Cluster::start_without_extension("without-extension");
    let mut admin = sqlx::PgConnection::connect(&cluster.url("postgres"))
        .await
        .unwrap();
    let offered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_eventstore'",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(offered, 0, "this server does not offer the extension");
    // The role managed PostgreSQL gives an application: it owns its database, and has no
    // superuser, CREATEROLE or CREATEDB.
    for statement in [
        "CREATE ROLE app LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB",
        "CREATE DATABASE app OWNER app",
    ] {
        sqlx::query(statement).execute(&mut admin).await.unwrap();
    }
    let url = cluster.url("app").replace("postgres@", "app@");
    let applied = migrate(&url, &[]);
    assert!(applied.contains("V1__"), "{applied}");
    let store = EventStore::connect(&url).await.unwrap();
    assert_eq!(store.installed_form().await.unwrap(), Some(Form::Portable));
    let appended = place(&store, "order-1", ExpectedVersion::NoStream).await;
    settled(store.pool()).await;
    let read: Vec<u64> = store
        .read_all(ReadAllOptions::default())
        .map_ok(|e| e.position)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(read, vec![appended.last_position]);
    store.pool().close().await;
    admin.close().await.unwrap();
}

/// Everything a switch of forms must keep, as text: the log, the position base, the groups'
/// rows, leases and parked events, and the checkpoints.
async fn kept_state(pool: &PgPool) -> Vec<String> {
    let mut state = Vec::new();
    for query in [
        "SELECT position, stream, version, type, data, metadata, id, recorded_at FROM eventstore.events ORDER BY position",
        "SELECT base FROM eventstore.position_base",
        "SELECT * FROM eventstore.subscription_groups ORDER BY group_id",
        "SELECT * FROM eventstore.group_events ORDER BY group_id, position",
        "SELECT * FROM eventstore.group_leases ORDER BY group_id, first_position",
        "SELECT * FROM projections.checkpoints ORDER BY name",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT coalesce(json_agg(row_to_json(r))::text, '[]') FROM ({query}) AS r"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        state.extend(rows);
    }
    state
}

#[tokio::test]
async fn a_portable_database_moves_to_the_extension_keeping_every_event_position_group_and_checkpoint(
) {
    let db = TestDb::empty(4).await;
    migrate(&db.url(), &["--portable"]);
    let store = EventStore::from_pool(db.pool.clone());
    assert_eq!(store.installed_form().await.unwrap(), Some(Form::Portable));
    for i in 0..6 {
        store
            .append(
                &format!("order-{}", i % 3),
                ExpectedVersion::Any,
                vec![
                    EventData::json("placed", serde_json::json!({"n": i})),
                    EventData::json("paid", serde_json::json!({"n": i})),
                ],
            )
            .await
            .unwrap();
    }
    settled(&db.pool).await;
    // A group in the middle of its work: one event acked, one parked, one leased.
    let fetched: Vec<i64> = sqlx::raw_sql(
        "SELECT eventstore.create_group('billing', ARRAY['order']); \
         SELECT position FROM eventstore.fetch('billing', 'w1', 3);",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
    .iter()
    .filter_map(|row| sqlx::Row::try_get(row, 0).ok())
    .collect();
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    sqlx::query(
        "SELECT eventstore.ack('billing', 'w1', $1), eventstore.park('billing', 'w1', $2, 'bad')",
    )
    .bind(&fetched[0..1])
    .bind(&fetched[1..2])
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO projections.checkpoints (name, position, events_applied) VALUES ('shop', $1, 4)")
        .bind(fetched[2])
        .execute(&db.pool)
        .await
        .unwrap();
    let before = kept_state(&db.pool).await;
    let head_before = store.head_position().await.unwrap();

    let output = Command::new(eventstore_bin())
        .args(["migrate", "--to-extension"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "migrate --to-extension failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("12 events, 1 groups"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );

    assert_eq!(store.installed_form().await.unwrap(), Some(Form::Extension));
    assert_eq!(kept_state(&db.pool).await, before);
    assert_eq!(store.head_position().await.unwrap(), head_before);
    assert!(migrate(&db.url(), &[]).contains("the database is up to date"));
    // The extension goes on from there: new positions above the old head, the group's
    // parked event still parked and its lease still held, the rest still to deliver.
    let appended = place(&store, "order-9", ExpectedVersion::NoStream).await;
    assert!(appended.first_position > head_before);
    settled(&db.pool).await;
    let parked: Vec<i64> = sqlx::query_scalar("SELECT position FROM eventstore.parked('billing')")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(parked, vec![fetched[1]]);
    let next: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.fetch('billing', 'w2', 100)")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(next.len(), 12 - 3 + 1, "{next:?}");
    assert!(
        !next.contains(&fetched[0]) && !next.contains(&fetched[1]) && !next.contains(&fetched[2])
    );
    // A second switch is refused, and changes nothing.
    let again = Command::new(eventstore_bin())
        .args(["migrate", "--to-extension"])
        .env("DATABASE_URL", db.url())
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has the pg_eventstore extension already")
    );
    db.drop_database().await;
}
