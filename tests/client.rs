//! The Rust client against a real server: migrations, typed appends and reads, errors by
//! SQLSTATE, and the caller's own transactions.

use futures_util::TryStreamExt;
use pg_eventstore_client::{
    AppliedMigration, Error, EventData, EventStore, ExpectedVersion, ReadAllOptions,
    ReadStreamOptions, RecordedEvent,
};
use pg_eventstore_tests::TestDb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct OrderPlaced {
    username: String,
    items: Vec<Item>,
    currency: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Item {
    sku: String,
    qty: u32,
    price_cents: u32,
}

fn placed(username: &str) -> OrderPlaced {
    OrderPlaced {
        username: username.to_owned(),
        items: vec![Item {
            sku: "espresso".to_owned(),
            qty: 2,
            price_cents: 250,
        }],
        currency: "EUR".to_owned(),
    }
}

fn event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, serde_json::json!({ "n": n }))
}

#[tokio::test]
async fn migrate_creates_the_extension_once_even_when_called_concurrently() {
    let db = TestDb::empty(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    let (a, b) = tokio::join!(store.migrate(), store.migrate());
    let mut applied = [a.unwrap(), b.unwrap()];
    applied.sort_by_key(Vec::len);
    assert_eq!(applied[0], vec![]);
    assert_eq!(
        applied[1],
        vec![
            AppliedMigration {
                version: 1,
                name: "pg_eventstore_extension".to_owned()
            },
            AppliedMigration {
                version: 4,
                name: "projection_checkpoints".to_owned()
            },
            AppliedMigration {
                version: 6,
                name: "pg_eventstore_update".to_owned()
            },
            AppliedMigration {
                version: 7,
                name: "pg_eventstore_update".to_owned()
            }
        ]
    );
    assert_eq!(store.migrate().await.unwrap(), vec![]);
    let result = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", 1)],
        )
        .await
        .unwrap();
    assert_eq!((result.first_version, result.last_version), (0, 0));
    db.drop_database().await;
}

#[tokio::test]
async fn typed_events_round_trip_and_streams_read_in_pages_both_ways() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    let first = store
        .append(
            "order-42",
            ExpectedVersion::NoStream,
            [EventData::new("order-placed", &placed("ada")).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!((first.first_version, first.last_version), (0, 0));
    let rest = store
        .append(
            "order-42",
            ExpectedVersion::Exact(0),
            (1..=6).map(|n| event("order-noted", n)),
        )
        .await
        .unwrap();
    assert_eq!((rest.first_version, rest.last_version), (1, 6));
    assert_eq!(rest.last_position - rest.first_position, 5);
    assert!(rest.first_position > first.last_position);
    assert_eq!(store.stream_version("order-42").await.unwrap(), Some(6));
    assert_eq!(store.stream_version("order-43").await.unwrap(), None);

    let forwards: Vec<RecordedEvent> = store
        .read_stream("order-42", ReadStreamOptions::forwards().page_size(2))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        forwards.iter().map(|e| e.version).collect::<Vec<_>>(),
        (0..=6).collect::<Vec<_>>()
    );
    assert_eq!(forwards[0].decode::<OrderPlaced>().unwrap(), placed("ada"));
    assert_eq!(forwards[0].category(), "order");
    assert_eq!(forwards[3].decode::<serde_json::Value>().unwrap()["n"], 3);
    assert!(matches!(
        forwards[3].decode::<OrderPlaced>(),
        Err(Error::Decode { position, .. }) if position == forwards[3].position
    ));

    let backwards: Vec<u64> = store
        .read_stream("order-42", ReadStreamOptions::backwards().page_size(3))
        .map_ok(|e| e.version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(backwards, vec![6, 5, 4, 3, 2, 1, 0]);
    let window: Vec<u64> = store
        .read_stream(
            "order-42",
            ReadStreamOptions::backwards()
                .from_version(4)
                .limit(3)
                .page_size(2),
        )
        .map_ok(|e| e.version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(window, vec![4, 3, 2]);
    let tail: Vec<u64> = store
        .read_stream("order-42", ReadStreamOptions::forwards().from_version(5))
        .map_ok(|e| e.version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(tail, vec![5, 6]);
    let none: Vec<RecordedEvent> = store
        .read_stream("order-404", ReadStreamOptions::backwards())
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
    db.drop_database().await;
}

#[tokio::test]
async fn a_conflict_yields_wrong_expected_version_with_both_versions() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    store
        .append(
            "user-ada",
            ExpectedVersion::Any,
            [event("user-created", 0), event("user-renamed", 1)],
        )
        .await
        .unwrap();
    let cases = [
        (ExpectedVersion::NoStream, "user-ada", Some(1)),
        (ExpectedVersion::Exact(0), "user-ada", Some(1)),
        (ExpectedVersion::Exact(12), "user-ada", Some(1)),
        (ExpectedVersion::StreamExists, "user-bob", None),
        (ExpectedVersion::Exact(0), "user-bob", None),
    ];
    for (expected, stream, actual) in cases {
        match store
            .append(stream, expected, [event("user-renamed", 2)])
            .await
        {
            Err(Error::WrongExpectedVersion {
                stream: s,
                expected: e,
                actual: a,
            }) => {
                assert_eq!((s.as_str(), e, a), (stream, expected, actual));
            }
            other => panic!("{expected:?} on {stream}: {other:?}"),
        }
    }
    let error = store
        .append("user-ada", ExpectedVersion::Exact(0), [event("x", 0)])
        .await
        .unwrap_err();
    assert_eq!(error.sqlstate().as_deref(), Some("40001"));
    assert_eq!(
        error.to_string(),
        "wrong expected version for stream \"user-ada\": expected 0, actual 1"
    );
    assert_eq!(store.stream_version("user-ada").await.unwrap(), Some(1));
    assert_eq!(store.stream_version("user-bob").await.unwrap(), None);
    db.drop_database().await;
}

#[tokio::test]
async fn server_errors_map_to_variants_by_sqlstate() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    let id = Uuid::now_v7();
    let first = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", 1).id(id)],
        )
        .await
        .unwrap();
    // A retry of the same append (same id, same expectation) is recognised, not rewritten.
    let retry = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", 1).id(id)],
        )
        .await
        .unwrap();
    assert_eq!(first, retry);
    let reused = store
        .append(
            "order-2",
            ExpectedVersion::Any,
            [event("order-placed", 1).id(id)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&reused, Error::DuplicateEventId { message } if message.contains(&id.to_string())),
        "{reused:?}"
    );
    let invalid = store
        .append("order-1", ExpectedVersion::Any, [event("", 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(&invalid, Error::InvalidEvent { message } if message.contains("events[0].type")),
        "{invalid:?}"
    );
    let empty_stream = store
        .append("", ExpectedVersion::Any, [event("x", 1)])
        .await
        .unwrap_err();
    assert!(matches!(empty_stream, Error::InvalidEvent { .. }));
    assert!(matches!(
        store.append("order-1", ExpectedVersion::Any, []).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store
            .append("order-1", ExpectedVersion::Exact(u64::MAX), [event("x", 1)])
            .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        EventData::json("x", serde_json::json!({})).metadata(&[1, 2]),
        Err(Error::InvalidArgument(_))
    ));
    let bad_page: Result<Vec<RecordedEvent>, Error> = store
        .read_all(ReadAllOptions::default().page_size(0))
        .try_collect()
        .await;
    assert!(matches!(bad_page, Err(Error::InvalidArgument(_))));
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 1, "nothing but the first append was written");
    db.drop_database().await;
}

#[tokio::test]
async fn appends_and_reads_run_inside_the_callers_transaction() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());

    let mut tx = db.pool.begin().await.unwrap();
    EventStore::append_in(
        &mut *tx,
        "order-1",
        ExpectedVersion::NoStream,
        [event("order-placed", 1)],
    )
    .await
    .unwrap();
    // The transaction sees its own events; others do not yet.
    let inside: Vec<RecordedEvent> =
        EventStore::read_stream_in(&mut tx, "order-1", ReadStreamOptions::forwards())
            .try_collect()
            .await
            .unwrap();
    assert_eq!(inside.len(), 1);
    assert_eq!(store.stream_version("order-1").await.unwrap(), None);
    // A wrong expected version reports both versions and leaves the transaction usable.
    let conflict = EventStore::append_in(
        &mut *tx,
        "order-1",
        ExpectedVersion::NoStream,
        [event("order-placed", 2)],
    )
    .await;
    assert!(matches!(
        conflict,
        Err(Error::WrongExpectedVersion {
            actual: Some(0),
            ..
        })
    ));
    EventStore::append_in(
        &mut *tx,
        "order-1",
        ExpectedVersion::Exact(0),
        [event("order-paid", 3)],
    )
    .await
    .unwrap();
    assert_eq!(
        EventStore::stream_version_in(&mut *tx, "order-1")
            .await
            .unwrap(),
        Some(1)
    );
    tx.commit().await.unwrap();
    assert_eq!(store.stream_version("order-1").await.unwrap(), Some(1));

    let mut tx = db.pool.begin().await.unwrap();
    EventStore::append_in(
        &mut *tx,
        "order-2",
        ExpectedVersion::NoStream,
        [event("order-placed", 4)],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(store.stream_version("order-2").await.unwrap(), None);

    db.settled().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let all: Vec<u64> = EventStore::read_all_in(&mut conn, ReadAllOptions::default())
        .map_ok(|e| e.version)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all, vec![0, 1]);
    drop(conn);
    db.drop_database().await;
}

#[tokio::test]
async fn the_global_log_and_categories_page_and_filter() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    for n in 0..30_u64 {
        let (stream, event_type) = match n % 3 {
            0 => (format!("order-{}", n % 4), "order-placed"),
            1 => (format!("user-{}", n % 5), "user-created"),
            _ => (format!("order-{}", n % 4), "order-paid"),
        };
        store
            .append(&stream, ExpectedVersion::Any, [event(event_type, n)])
            .await
            .unwrap();
    }
    db.settled().await;
    let all: Vec<RecordedEvent> = store
        .read_all(ReadAllOptions::default().page_size(7))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 30);
    assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    let ns: Vec<u64> = all
        .iter()
        .map(|e| {
            e.decode::<serde_json::Value>().unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ns, (0..30).collect::<Vec<_>>());

    let after: Vec<u64> = store
        .read_all(
            ReadAllOptions::default()
                .after(all[9].position)
                .limit(5)
                .page_size(2),
        )
        .map_ok(|e| e.position)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        after,
        all[10..15].iter().map(|e| e.position).collect::<Vec<_>>()
    );

    let paid: Vec<RecordedEvent> = store
        .read_all(
            ReadAllOptions::default()
                .event_types(["order-paid"])
                .page_size(3),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(paid.len(), 10);
    assert!(paid.iter().all(|e| e.event_type == "order-paid"));

    let users: Vec<RecordedEvent> = store
        .read_category("user", ReadAllOptions::default().page_size(4))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(users.len(), 10);
    let placed_orders: Vec<RecordedEvent> = store
        .read_category(
            "order",
            ReadAllOptions::default().event_types(["order-placed"]),
        )
        .try_collect()
        .await
        .unwrap();
    assert_eq!(placed_orders.len(), 10);

    // Consumer groups: the members' reads partition the category by stream.
    let mut seen = Vec::new();
    let mut streams_per_member = Vec::new();
    for member in 0..3 {
        let part: Vec<RecordedEvent> = store
            .read_category(
                "order",
                ReadAllOptions::default()
                    .consumer_group(member, 3)
                    .page_size(2),
            )
            .try_collect()
            .await
            .unwrap();
        let mut streams: Vec<String> = part.iter().map(|e| e.stream.clone()).collect();
        streams.sort();
        streams.dedup();
        streams_per_member.push(streams);
        seen.extend(part.into_iter().map(|e| e.position));
    }
    seen.sort_unstable();
    let mut orders: Vec<u64> = all
        .iter()
        .filter(|e| e.category() == "order")
        .map(|e| e.position)
        .collect();
    orders.sort_unstable();
    assert_eq!(seen, orders);
    for (i, a) in streams_per_member.iter().enumerate() {
        for b in &streams_per_member[i + 1..] {
            assert!(a.iter().all(|s| !b.contains(s)), "{a:?} / {b:?}");
        }
    }
    let mixed: Result<Vec<RecordedEvent>, Error> = store
        .read_category(
            "order",
            ReadAllOptions::default()
                .consumer_group(0, 2)
                .event_types(["order-paid"]),
        )
        .try_collect()
        .await;
    assert!(matches!(mixed, Err(Error::InvalidArgument(_))));
    db.drop_database().await;
}

#[tokio::test]
async fn correlation_and_causation_ids_follow_the_cause() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    let command = Uuid::now_v7();
    store
        .append(
            "order-9",
            ExpectedVersion::NoStream,
            [EventData::new("order-placed", &placed("bob"))
                .unwrap()
                .correlation_id(command)
                .metadata_field("source", "web")],
        )
        .await
        .unwrap();
    let cause: Vec<RecordedEvent> = store
        .read_stream("order-9", ReadStreamOptions::forwards())
        .try_collect()
        .await
        .unwrap();
    let cause = &cause[0];
    assert_eq!(cause.correlation_id(), Some(command));
    assert_eq!(cause.causation_id(), None);
    let meta: serde_json::Value = cause.decode_metadata().unwrap();
    assert_eq!(meta["source"], "web");

    store
        .append(
            "order-9",
            ExpectedVersion::Exact(0),
            [EventData::json("order-paid", serde_json::json!({"amount": 5})).caused_by(cause)],
        )
        .await
        .unwrap();
    let effect: Vec<RecordedEvent> = store
        .read_stream("order-9", ReadStreamOptions::forwards().from_version(1))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(effect[0].causation_id(), Some(cause.id));
    assert_eq!(effect[0].correlation_id(), Some(command));
    db.drop_database().await;
}

#[tokio::test]
async fn the_clients_constants_agree_with_the_server() {
    let db = TestDb::new(2).await;
    // The expected-version sentinels.
    let (any, no_stream, exists): (Option<i64>, i64, i64) = sqlx::query_as(
        "SELECT eventstore.any_version(), eventstore.no_stream(), eventstore.stream_exists()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ExpectedVersion::Any.to_sql().unwrap(), any);
    assert_eq!(ExpectedVersion::NoStream.to_sql().unwrap(), Some(no_stream));
    assert_eq!(
        ExpectedVersion::StreamExists.to_sql().unwrap(),
        Some(exists)
    );
    // The largest page: accepted at MAX_PAGE_SIZE, refused one above.
    let read = |count: i64| {
        sqlx::query("SELECT * FROM eventstore.read_all(0, $1::int)")
            .bind(count)
            .fetch_all(&db.pool)
    };
    assert!(read(i64::from(pg_eventstore_client::MAX_PAGE_SIZE))
        .await
        .is_ok());
    let above = read(i64::from(pg_eventstore_client::MAX_PAGE_SIZE) + 1).await;
    assert_eq!(
        pg_eventstore_tests::sqlstate(&above).as_deref(),
        Some("22023")
    );
    // The wake-up channel: an append wakes a session listening on CHANNEL.
    let mut listener = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    listener
        .listen(pg_eventstore_client::CHANNEL)
        .await
        .unwrap();
    let store = EventStore::from_pool(db.pool.clone());
    store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", 1)],
        )
        .await
        .unwrap();
    let woken = tokio::time::timeout(pg_eventstore_tests::PATIENCE, listener.recv()).await;
    assert!(matches!(woken, Ok(Ok(_))), "a wake-up on CHANNEL");
    drop(listener);
    db.drop_database().await;
}

/// The store's pool hands out a connection used within the last second without a ping, and
/// pings one idle for longer: a connection whose server process ended meanwhile is replaced,
/// and the call goes through.
#[tokio::test]
async fn a_connection_that_died_while_idle_is_replaced_before_use() {
    let db = TestDb::new(4).await;
    let store = EventStore::connect(&db.url()).await.unwrap();
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    // The pool pings a connection when it comes back, then keeps it idle.
    pg_eventstore_tests::eventually(
        pg_eventstore_tests::PATIENCE,
        "the connection is back in the pool",
        || async { store.pool().num_idle() == 1 },
    )
    .await;
    assert_eq!(store.pool().size(), 1, "one connection");
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 60000)")
        .bind(backend)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(ended, "the store's connection is gone");
    // Longer than the pool trusts an idle connection without a ping.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let appended = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", 1)],
        )
        .await
        .expect("the dead connection is replaced, not used");
    assert_eq!(appended.last_version, 0);
    let now: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_ne!(now, backend, "a new server process");
    db.drop_database().await;
}
