//! EventStoreDB's official Rust client (the `kurrentdb` crate, unchanged) against
//! `eventstore serve`: every call goes over gRPC to the server process, which uses a test
//! database of its own; the store's SQL API is used beside it to check what was stored.

use std::time::Duration;

use bytes::Bytes;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, NakAction,
    PersistentSubscription, PersistentSubscriptionEvent, PersistentSubscriptionInfo,
    PersistentSubscriptionOptions, PersistentSubscriptionToAllOptions, ReadAllOptions,
    ReadStreamOptions, ResolvedEvent, StreamPosition, StreamState, SubscribeToAllOptions,
    SubscribeToPersistentSubscriptionOptions, SubscribeToStreamOptions, SubscriptionEvent,
    SubscriptionFilter, SystemConsumerStrategy,
};
use pg_eventstore_tests::{Served, TestDb};
use serde_json::json;
use sqlx::Row;
use uuid::Uuid;

/// How long a test waits for something it expects, generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

async fn serve() -> (TestDb, Served, Client) {
    let db = TestDb::new(4).await;
    let served = Served::start(&db.url()).await;
    let settings: ClientSettings = served.esdb_url.parse().expect("a connection string");
    let client = Client::new(settings).expect("a client");
    (db, served, client)
}

fn event(event_type: &str, data: serde_json::Value) -> EventData {
    EventData::json(event_type, &data)
        .expect("JSON data")
        .id(Uuid::new_v4())
}

async fn drain(mut read: kurrentdb::ReadStream) -> Vec<ResolvedEvent> {
    let mut events = Vec::new();
    while let Some(event) = read.next().await.expect("read goes on") {
        events.push(event);
    }
    events
}

async fn read_stream(
    client: &Client,
    stream: &str,
    options: &ReadStreamOptions,
) -> Vec<ResolvedEvent> {
    drain(
        client
            .read_stream(stream, options)
            .await
            .expect("read starts"),
    )
    .await
}

async fn read_all(client: &Client, options: &ReadAllOptions) -> Vec<ResolvedEvent> {
    drain(client.read_all(options).await.expect("read starts")).await
}

fn revisions(events: &[ResolvedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect()
}

fn positions(events: &[ResolvedEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.get_original_event().position.commit)
        .collect()
}

async fn stored_count(db: &TestDb, stream: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM eventstore.events WHERE stream = $1")
        .bind(stream)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn expect_conflict(
    result: kurrentdb::Result<kurrentdb::WriteResult>,
    expected: StreamState,
    current: CurrentRevision,
) {
    match result {
        Err(kurrentdb::Error::WrongExpectedVersion {
            expected: got_expected,
            current: got_current,
        }) => {
            assert_eq!(got_expected, expected);
            assert_eq!(got_current, current);
        }
        other => panic!("expected a wrong-expected-version error, got {other:?}"),
    }
}

#[tokio::test]
async fn appends_check_every_kind_of_expected_revision_and_a_retry_is_idempotent() {
    let (db, served, client) = serve().await;
    let stream = "order-1";
    let options = |state| AppendToStreamOptions::default().stream_state(state);

    let first = vec![
        event("order-placed", json!({"username": "ada"})),
        event("order-paid", json!({"amount": 12})),
    ];
    let written = client
        .append_to_stream(stream, &options(StreamState::NoStream), first.clone())
        .await
        .expect("the first append to a new stream");
    assert_eq!(written.next_expected_version, 1);
    let last_position: i64 = sqlx::query_scalar(
        "SELECT position FROM eventstore.events WHERE stream = $1 AND version = 1",
    )
    .bind(stream)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(written.position.commit, last_position as u64);
    assert_eq!(written.position.prepare, last_position as u64);

    // The same events, ids and all, sent again after a lost reply: nothing new is written.
    let retried = client
        .append_to_stream(stream, &options(StreamState::NoStream), first)
        .await
        .expect("a retry of the same events succeeds");
    assert_eq!(retried.next_expected_version, 1);
    assert_eq!(stored_count(&db, stream).await, 2);

    let another = || vec![event("order-shipped", json!({"carrier": "x"}))];
    expect_conflict(
        client
            .append_to_stream(stream, &options(StreamState::NoStream), another())
            .await,
        StreamState::NoStream,
        CurrentRevision::Current(1),
    );
    expect_conflict(
        client
            .append_to_stream(stream, &options(StreamState::StreamRevision(0)), another())
            .await,
        StreamState::StreamRevision(0),
        CurrentRevision::Current(1),
    );
    expect_conflict(
        client
            .append_to_stream("order-2", &options(StreamState::StreamExists), another())
            .await,
        StreamState::StreamExists,
        CurrentRevision::NoStream,
    );
    expect_conflict(
        client
            .append_to_stream(
                "order-2",
                &options(StreamState::StreamRevision(0)),
                another(),
            )
            .await,
        StreamState::StreamRevision(0),
        CurrentRevision::NoStream,
    );
    assert_eq!(
        stored_count(&db, stream).await,
        2,
        "conflicts write nothing"
    );
    assert_eq!(
        stored_count(&db, "order-2").await,
        0,
        "conflicts write nothing"
    );

    let exact = client
        .append_to_stream(stream, &options(StreamState::StreamRevision(1)), another())
        .await
        .expect("the exact revision");
    assert_eq!(exact.next_expected_version, 2);
    let exists = client
        .append_to_stream(stream, &options(StreamState::StreamExists), another())
        .await
        .expect("an existing stream");
    assert_eq!(exists.next_expected_version, 3);
    let any = client
        .append_to_stream(stream, &options(StreamState::Any), another())
        .await
        .expect("any revision");
    assert_eq!(any.next_expected_version, 4);
    assert!(any.position.commit > exists.position.commit);
    assert_eq!(stored_count(&db, stream).await, 5);

    // Through SQL the events are the store's own: types, data and ids as sent.
    let rows = sqlx::query("SELECT type, data FROM eventstore.read_stream($1)")
        .bind(stream)
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let first_type: String = rows[0].get("type");
    let first_data: serde_json::Value = rows[0].get("data");
    assert_eq!(first_type, "order-placed");
    assert_eq!(first_data, json!({"username": "ada"}));

    // An id used in another stream is refused, and nothing is written.
    let reused: Uuid = sqlx::query_scalar("SELECT id FROM eventstore.events LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let result = client
        .append_to_stream(
            "order-3",
            &options(StreamState::Any),
            EventData::json("order-placed", &json!({}))
                .unwrap()
                .id(reused),
        )
        .await;
    assert!(result.is_err(), "a reused id is refused: {result:?}");
    assert_eq!(stored_count(&db, "order-3").await, 0);

    // Deleting is refused clearly: the store keeps every event.
    let deleted = client
        .delete_stream(stream, &kurrentdb::DeleteStreamOptions::default())
        .await;
    assert!(deleted.is_err(), "{deleted:?}");
    assert_eq!(stored_count(&db, stream).await, 5);

    let status = served.stop().await;
    assert!(status.success(), "eventstore serve exited with {status}");
    db.drop_database().await;
}

#[tokio::test]
async fn streams_and_all_read_both_ways_from_anywhere() {
    let (db, served, client) = serve().await;
    for n in 0..5 {
        client
            .append_to_stream(
                "user-ada",
                &AppendToStreamOptions::default(),
                event("user-renamed", json!({"fullName": format!("Ada {n}")})),
            )
            .await
            .unwrap();
        client
            .append_to_stream(
                "user-bob",
                &AppendToStreamOptions::default(),
                event("user-renamed", json!({"fullName": format!("Bob {n}")})),
            )
            .await
            .unwrap();
    }
    db.settled().await;

    let forwards = read_stream(&client, "user-ada", &ReadStreamOptions::default()).await;
    assert_eq!(revisions(&forwards), [0, 1, 2, 3, 4]);
    assert!(forwards
        .iter()
        .all(|e| e.get_original_event().stream_id() == "user-ada"));
    let named: serde_json::Value = forwards[2].get_original_event().as_json().unwrap();
    assert_eq!(named, json!({"fullName": "Ada 2"}));

    let from_two = ReadStreamOptions::default()
        .position(StreamPosition::Position(2))
        .max_count(2);
    assert_eq!(
        revisions(&read_stream(&client, "user-ada", &from_two).await),
        [2, 3]
    );
    let last_two = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(2);
    assert_eq!(
        revisions(&read_stream(&client, "user-ada", &last_two).await),
        [4, 3]
    );
    let down_from_one = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::Position(1));
    assert_eq!(
        revisions(&read_stream(&client, "user-ada", &down_from_one).await),
        [1, 0]
    );

    let mut missing = client
        .read_stream("user-nobody", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        missing.next().await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));

    // $all holds what the store's global log holds, in its order.
    let log: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.read_all(0, 1000) ORDER BY position")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let log: Vec<u64> = log.into_iter().map(|p| p as u64).collect();
    assert_eq!(log.len(), 10);
    let all = read_all(&client, &ReadAllOptions::default()).await;
    assert_eq!(positions(&all), log);
    let backwards = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End),
    )
    .await;
    let mut reversed = log.clone();
    reversed.reverse();
    assert_eq!(positions(&backwards), reversed);

    // Forwards from a position includes it; backwards from a position excludes it.
    let at = kurrentdb::Position {
        commit: log[4],
        prepare: log[4],
    };
    let from = read_all(
        &client,
        &ReadAllOptions::default()
            .position(StreamPosition::Position(at))
            .max_count(3),
    )
    .await;
    assert_eq!(positions(&from), &log[4..7]);
    let before = read_all(
        &client,
        &ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::Position(at)),
    )
    .await;
    assert_eq!(positions(&before), [log[3], log[2], log[1], log[0]]);

    let status = served.stop().await;
    assert!(status.success(), "eventstore serve exited with {status}");
    db.drop_database().await;
}

#[tokio::test]
async fn binary_data_and_custom_metadata_round_trip_and_json_stays_queryable() {
    let (db, served, client) = serve().await;
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255, b'{', b'"']);
    let raw_metadata = Bytes::from_static(b"\x01\x02not json\xff");
    let json_metadata =
        Bytes::from_static(br#"{"$correlationId":"c-1","$causationId":"d-2","z":1}"#);
    client
        .append_to_stream(
            "blob-1",
            &AppendToStreamOptions::default(),
            vec![
                EventData::binary("blob-written", binary.clone())
                    .id(Uuid::new_v4())
                    .metadata(raw_metadata.clone()),
                EventData::json("blob-described", &json!({"size": 7, "name": "ada"}))
                    .unwrap()
                    .id(Uuid::new_v4())
                    .metadata(json_metadata.clone()),
            ],
        )
        .await
        .unwrap();

    let events = read_stream(&client, "blob-1", &ReadStreamOptions::default()).await;
    let written = events[0].get_original_event();
    assert!(!written.is_json);
    assert_eq!(written.data, binary);
    assert_eq!(written.custom_metadata, raw_metadata);
    assert_eq!(written.event_type, "blob-written");
    let described = events[1].get_original_event();
    assert!(described.is_json);
    assert_eq!(described.custom_metadata, json_metadata);
    let data: serde_json::Value = described.as_json().unwrap();
    assert_eq!(data, json!({"size": 7, "name": "ada"}));

    // SQL users query what gRPC clients wrote: JSON data and metadata objects are jsonb.
    let row = sqlx::query(
        "SELECT data->>'name' AS name, metadata->>'$correlationId' AS correlation, \
                recorded_at, id \
         FROM eventstore.events WHERE stream = 'blob-1' AND version = 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("name"), "ada");
    assert_eq!(row.get::<String, _>("correlation"), "c-1");
    assert_eq!(row.get::<Uuid, _>("id"), described.id);
    let recorded_at: chrono::DateTime<chrono::Utc> = row.get("recorded_at");
    // `created` is recorded_at in 100-ns ticks; this client keeps whole seconds of it.
    assert_eq!(
        described.metadata["created"],
        (recorded_at.timestamp_micros() * 10).to_string()
    );
    assert_eq!(described.created.timestamp(), recorded_at.timestamp());

    let status = served.stop().await;
    assert!(status.success(), "eventstore serve exited with {status}");
    db.drop_database().await;
}

/// Waits for the next event a subscription delivers, skipping confirmations, checkpoints
/// and the like.
/// Waits for the server's confirmation that `subscription` is established (this client
/// makes the call when first asked for an event).
async fn confirmed(subscription: &mut kurrentdb::Subscription) {
    let first = tokio::time::timeout(PATIENCE, subscription.next_subscription_event())
        .await
        .expect("the subscription is confirmed within the deadline")
        .expect("the subscription starts");
    assert!(
        matches!(first, SubscriptionEvent::Confirmed(_)),
        "{first:?}"
    );
}

#[track_caller]
fn next_event(
    subscription: &mut kurrentdb::Subscription,
) -> impl std::future::Future<Output = ResolvedEvent> + '_ {
    let caller = std::panic::Location::caller();
    async move {
        tokio::time::timeout(PATIENCE, subscription.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no event within the deadline for the subscription at {caller}")
            })
            .expect("the subscription goes on")
    }
}

#[tokio::test]
async fn a_filtered_subscription_to_all_catches_up_and_then_goes_live() {
    let (db, served, client) = serve().await;
    let store = pg_eventstore_client::EventStore::from_pool(db.pool.clone());
    let append = |stream: &'static str, event_type: &'static str| {
        let store = store.clone();
        async move {
            store
                .append(
                    stream,
                    pg_eventstore_client::ExpectedVersion::Any,
                    [pg_eventstore_client::EventData::json(event_type, json!({}))],
                )
                .await
                .unwrap()
        }
    };
    append("user-ada", "user-created").await;
    append("$settings", "$metadata").await;
    append("user-ada", "user-renamed").await;
    db.settled().await;

    let options = SubscribeToAllOptions::default()
        .position(StreamPosition::Start)
        .filter(
            SubscriptionFilter::on_event_type()
                .exclude_system_events()
                .max(1),
        );
    let mut subscription = client.subscribe_to_all(&options).await;
    let mut seen = Vec::new();
    let mut checkpoints = 0;
    let mut caught_up = false;
    while seen.len() < 2 || !caught_up {
        let next = tokio::time::timeout(PATIENCE, subscription.next_subscription_event())
            .await
            .expect("the subscription goes on within the deadline")
            .expect("the subscription does not fail");
        match next {
            SubscriptionEvent::EventAppeared(event) => {
                seen.push(event.get_original_event().event_type.clone());
            }
            SubscriptionEvent::Checkpoint(_) => checkpoints += 1,
            SubscriptionEvent::CaughtUp(_) => caught_up = true,
            _ => {}
        }
    }
    assert_eq!(
        seen,
        ["user-created", "user-renamed"],
        "system events are filtered out"
    );
    assert!(
        checkpoints >= 3,
        "a checkpoint per event considered (window 1): {checkpoints}"
    );

    // Live: new events arrive as they are appended, system ones still filtered out.
    append("$settings", "$metadata").await;
    let live = append("user-bob", "user-created").await;
    let event = next_event(&mut subscription).await;
    assert_eq!(event.get_original_event().stream_id(), "user-bob");
    assert_eq!(
        event.get_original_event().position.commit,
        live.last_position
    );

    // A subscription from a position starts after it.
    let after = kurrentdb::Position {
        commit: live.last_position,
        prepare: live.last_position,
    };
    let mut later = client
        .subscribe_to_all(
            &SubscribeToAllOptions::default().position(StreamPosition::Position(after)),
        )
        .await;
    let next = append("user-cy", "user-created").await;
    let event = next_event(&mut later).await;
    assert_eq!(
        event.get_original_event().position.commit,
        next.last_position
    );
    let event = next_event(&mut subscription).await;
    assert_eq!(event.get_original_event().stream_id(), "user-cy");

    drop(subscription);
    drop(later);
    let status = served.stop().await;
    assert!(status.success(), "eventstore serve exited with {status}");
    db.drop_database().await;
}

#[tokio::test]
async fn a_stream_subscription_starts_after_its_revision_and_follows_the_stream() {
    let (db, served, client) = serve().await;
    for n in 0..3 {
        client
            .append_to_stream(
                "order-9",
                &AppendToStreamOptions::default(),
                event("order-note", json!({"n": n})),
            )
            .await
            .unwrap();
    }
    let mut from_one = client
        .subscribe_to_stream(
            "order-9",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Position(1)),
        )
        .await;
    assert_eq!(
        next_event(&mut from_one)
            .await
            .get_original_event()
            .revision,
        2
    );
    let mut from_start = client
        .subscribe_to_stream(
            "order-9",
            &SubscribeToStreamOptions::default().start_from(StreamPosition::Start),
        )
        .await;
    for revision in 0..3 {
        assert_eq!(
            next_event(&mut from_start)
                .await
                .get_original_event()
                .revision,
            revision
        );
    }
    client
        .append_to_stream(
            "order-9",
            &AppendToStreamOptions::default(),
            event("order-note", json!({"n": 3})),
        )
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut from_one)
            .await
            .get_original_event()
            .revision,
        3
    );
    assert_eq!(
        next_event(&mut from_start)
            .await
            .get_original_event()
            .revision,
        3
    );

    // A subscription to a stream that does not exist yet (from its end, this client's
    // default) waits for it.
    let mut waiting = client
        .subscribe_to_stream("order-10", &SubscribeToStreamOptions::default())
        .await;
    confirmed(&mut waiting).await;
    client
        .append_to_stream(
            "order-10",
            &AppendToStreamOptions::default(),
            event("order-placed", json!({})),
        )
        .await
        .unwrap();
    let first = next_event(&mut waiting).await;
    assert_eq!(first.get_original_event().stream_id(), "order-10");

    // SIGTERM ends the open subscriptions and the server exits cleanly.
    let status = served.stop().await;
    assert!(status.success(), "eventstore serve exited with {status}");
    db.drop_database().await;
}

// Persistent subscriptions.

/// [`serve`] on a database that `eventstore migrate` set up for persistent subscriptions
/// too (the server's own migration set).
async fn serve_migrated() -> (TestDb, Served, Client) {
    let (db, served, client) = serve().await;
    pg_eventstore_tests::eventstore_migrate(&db.url()).await;
    (db, served, client)
}

/// The next event of a persistent subscription and its retry count, within [`PATIENCE`].
async fn next_delivery(subscription: &mut PersistentSubscription) -> (ResolvedEvent, usize) {
    loop {
        let next = tokio::time::timeout(PATIENCE, subscription.next_subscription_event())
            .await
            .expect("an event arrives in time")
            .expect("the subscription goes on");
        if let PersistentSubscriptionEvent::EventAppeared { event, retry_count } = next {
            return (event, retry_count);
        }
    }
}

fn revision(event: &ResolvedEvent) -> u64 {
    event.get_original_event().revision
}

async fn append_numbered(client: &Client, stream: &str, count: usize) {
    let events = (0..count)
        .map(|n| event("task-queued", json!({ "n": n })))
        .collect::<Vec<_>>();
    client
        .append_to_stream(stream, &AppendToStreamOptions::default(), events)
        .await
        .expect("append");
}

/// Waits until the group's info satisfies `done`, within [`PATIENCE`].
async fn info_until(
    client: &Client,
    stream: &str,
    group: &str,
    done: impl Fn(&PersistentSubscriptionInfo<u64>) -> bool,
) -> PersistentSubscriptionInfo<u64> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = client
            .get_persistent_subscription_info(stream, group, &Default::default())
            .await
            .expect("get info");
        if done(&info) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never got there: {:?}",
            info.stats
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn competing_consumers_share_a_stream_group_and_a_closed_connection_gives_its_events_back() {
    let (_db, _served, client) = serve_migrated().await;
    let stream = "task-1";
    append_numbered(&client, stream, 10).await;
    // Another stream of the same category: the group never delivers it.
    append_numbered(&client, "task-2", 3).await;
    let settings = PersistentSubscriptionOptions::default().start_from(StreamPosition::Start);
    client
        .create_persistent_subscription(stream, "workers", &settings)
        .await
        .expect("create");
    assert!(matches!(
        client
            .create_persistent_subscription(stream, "workers", &settings)
            .await,
        Err(kurrentdb::Error::ResourceAlreadyExists)
    ));

    let room = SubscribeToPersistentSubscriptionOptions::default().buffer_size(3);
    let mut first = client
        .subscribe_to_persistent_subscription(stream, "workers", &room)
        .await
        .expect("first consumer");
    let mut second = client
        .subscribe_to_persistent_subscription(stream, "workers", &room)
        .await
        .expect("second consumer");

    // The first consumer takes three, its whole buffer, and acks none of them.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (event, retry_count) = next_delivery(&mut first).await;
        assert_eq!(retry_count, 0);
        held.push(revision(&event));
    }
    // The second gets the other seven, acking as it goes: none of the first one's.
    let mut handled = Vec::new();
    for _ in 0..7 {
        let (event, retry_count) = next_delivery(&mut second).await;
        assert_eq!(retry_count, 0);
        assert_eq!(event.get_original_stream_id(), stream);
        handled.push(revision(&event));
        second.ack(&event).await.expect("ack");
    }
    let mut seen: Vec<u64> = held.iter().chain(&handled).copied().collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "held {held:?}, handled {handled:?}"
    );

    // Acks are sent without a reply: wait until the server has settled the second's seven.
    let info = info_until(&client, stream, "workers", |info| {
        info.connections
            .iter()
            .map(|c| c.in_flight_messages)
            .sum::<usize>()
            == 3
    })
    .await;
    assert_eq!(info.event_source, stream);
    assert_eq!(info.connections.len(), 2);

    // The first consumer goes away without acking: its three go to the second, as retries.
    drop(first);
    let mut retried = Vec::new();
    for _ in 0..3 {
        let (event, retry_count) = next_delivery(&mut second).await;
        assert_eq!(retry_count, 1);
        retried.push(revision(&event));
        second.ack(&event).await.expect("ack");
    }
    retried.sort_unstable();
    held.sort_unstable();
    assert_eq!(retried, held);
    let info = info_until(&client, stream, "workers", |info| {
        info.connections.len() == 1 && info.stats.outstanding_messages_count == 0
    })
    .await;
    assert_eq!(info.stats.parked_message_count, 0);
}

#[tokio::test]
async fn nacks_park_and_retry_parked_events_replay_and_a_deleted_group_is_gone() {
    let (_db, _served, client) = serve_migrated().await;
    let stream = "invoice-7";
    append_numbered(&client, stream, 3).await;
    let settings = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Start)
        .max_retry_count(1)
        .consumer_strategy_name(SystemConsumerStrategy::RoundRobin);
    client
        .create_persistent_subscription(stream, "billing", &settings)
        .await
        .expect("create");
    let mut subscription = client
        .subscribe_to_persistent_subscription(stream, "billing", &Default::default())
        .await
        .expect("subscribe");
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(next_delivery(&mut subscription).await.0);
    }
    assert_eq!(events.iter().map(revision).collect::<Vec<_>>(), [0, 1, 2]);
    subscription.ack(&events[0]).await.unwrap();
    subscription
        .nack(&events[1], NakAction::Park, "cannot bill")
        .await
        .unwrap();
    subscription
        .nack(&events[2], NakAction::Retry, "try later")
        .await
        .unwrap();
    let (again, retry_count) = next_delivery(&mut subscription).await;
    assert_eq!((revision(&again), retry_count), (2, 1));
    // Its second delivery was its last (max_retry_count 1): this nack parks it.
    subscription
        .nack(&again, NakAction::Retry, "still failing")
        .await
        .unwrap();
    let info = info_until(&client, stream, "billing", |info| {
        info.stats.parked_message_count == 2
    })
    .await;
    let settings = info.settings.expect("settings");
    assert_eq!(settings.max_retry_count, 1);
    assert_eq!(settings.start_from, StreamPosition::Start);
    assert_eq!(
        settings.consumer_strategy_name,
        SystemConsumerStrategy::RoundRobin
    );

    client
        .replay_parked_messages(stream, "billing", &Default::default())
        .await
        .expect("replay parked");
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let (event, _) = next_delivery(&mut subscription).await;
        replayed.push(revision(&event));
        subscription.ack(&event).await.unwrap();
    }
    replayed.sort_unstable();
    assert_eq!(replayed, [1, 2]);
    info_until(&client, stream, "billing", |info| {
        info.stats.parked_message_count == 0 && info.stats.outstanding_messages_count == 0
    })
    .await;

    let listed = client
        .list_persistent_subscriptions_for_stream(stream, &Default::default())
        .await
        .expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|i| i.group_name.as_str())
            .collect::<Vec<_>>(),
        ["billing"]
    );
    assert!(matches!(
        client
            .list_persistent_subscriptions_for_stream("invoice-8", &Default::default())
            .await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));

    client
        .delete_persistent_subscription(stream, "billing", &Default::default())
        .await
        .expect("delete");
    // The connection learns the group is gone on its next fetch.
    let ended = tokio::time::timeout(PATIENCE, subscription.next_subscription_event())
        .await
        .expect("the connection ends in time");
    assert!(
        matches!(ended, Err(kurrentdb::Error::ResourceNotFound)),
        "{ended:?}"
    );
    for result in [
        client
            .get_persistent_subscription_info(stream, "billing", &Default::default())
            .await
            .map(|_| ()),
        client
            .delete_persistent_subscription(stream, "billing", &Default::default())
            .await,
        client
            .subscribe_to_persistent_subscription(stream, "billing", &Default::default())
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(kurrentdb::Error::ResourceNotFound)),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn an_all_group_filters_limits_its_subscribers_and_drops_them_on_a_restart() {
    let (db, _served, client) = serve_migrated().await;
    client
        .append_to_stream(
            "cart-1",
            &AppendToStreamOptions::default(),
            vec![
                event("cart-opened", json!({})),
                event("payment-made", json!({"amount": 3})),
            ],
        )
        .await
        .unwrap();
    let settings = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .filter(SubscriptionFilter::on_event_type().add_prefix("payment-"))
        .max_subscriber_count(1);
    client
        .create_persistent_subscription_to_all("payments", &settings)
        .await
        .expect("create");
    let mut subscription = client
        .subscribe_to_persistent_subscription_to_all("payments", &Default::default())
        .await
        .expect("subscribe");
    let (paid, _) = next_delivery(&mut subscription).await;
    assert_eq!(paid.get_original_event().event_type, "payment-made");
    subscription.ack(&paid).await.unwrap();
    client
        .append_to_stream(
            "cart-2",
            &AppendToStreamOptions::default(),
            vec![
                event("cart-opened", json!({})),
                event("payment-refunded", json!({"amount": 3})),
            ],
        )
        .await
        .unwrap();
    let (refunded, _) = next_delivery(&mut subscription).await;
    assert_eq!(
        (
            refunded.get_original_stream_id(),
            refunded.get_original_event().event_type.as_str()
        ),
        ("cart-2", "payment-refunded")
    );
    subscription.ack(&refunded).await.unwrap();

    match client
        .subscribe_to_persistent_subscription_to_all("payments", &Default::default())
        .await
    {
        Err(kurrentdb::Error::Grpc { code, .. }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition)
        }
        other => panic!("expected the subscriber limit, got {:?}", other.map(|_| ())),
    }
    let all = client
        .list_all_persistent_subscriptions(&Default::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].event_source, "$all");
    let info = client
        .get_persistent_subscription_info_to_all("payments", &Default::default())
        .await
        .expect("info");
    assert_eq!(info.connections.len(), 1);
    // Every event of the log gets settled: the two delivered are acked, the others unseen.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT lag + in_flight FROM eventstore.groups WHERE group_name = '$all::payments'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} events stay unsettled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    client
        .restart_persistent_subscription_subsystem(&Default::default())
        .await
        .expect("restart");
    let ended = tokio::time::timeout(PATIENCE, subscription.next_subscription_event())
        .await
        .expect("the connection ends in time");
    assert!(
        matches!(ended, Err(kurrentdb::Error::IllegalStateError(_))),
        "{:?}",
        ended.map(|_| ())
    );
}

#[tokio::test]
async fn persistent_subscriptions_need_the_servers_migrations_and_bad_settings_are_refused() {
    let (db, _served, client) = serve().await;
    let settings = PersistentSubscriptionOptions::default();
    match client
        .create_persistent_subscription("order-1", "g", &settings)
        .await
    {
        Err(kurrentdb::Error::Grpc { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.contains("eventstore migrate"), "{message}");
        }
        other => panic!("expected a failed precondition, got {other:?}"),
    }
    // Nothing was left behind: the store's group went with the failed transaction.
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.groups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(groups, 0);
    drop((db, _served, client));

    let (db, _served, client) = serve_migrated().await;
    for bad in [
        PersistentSubscriptionOptions::default().max_retry_count(-1),
        PersistentSubscriptionOptions::default().message_timeout(Duration::ZERO),
    ] {
        match client
            .create_persistent_subscription("order-1", "g", &bad)
            .await
        {
            Err(kurrentdb::Error::Grpc { code, .. }) => {
                assert_eq!(code, tonic::Code::InvalidArgument)
            }
            other => panic!("expected invalid settings, got {other:?}"),
        }
    }
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.groups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(groups, 0);
}

// Seed 004's Node user service (tests/node/user-service), unchanged in what it asks of the
// store, against the server.

/// A plain HTTP/1.1 exchange with the service: the status and the body.
async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the service accepts connections");
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_owned())
}

/// GETs `path` until it answers 200 (within [`PATIENCE`]); returns the body as JSON.
async fn get_when_found(port: u16, path: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = http(port, "GET", path, None).await;
        match status {
            200 => return serde_json::from_str(&body).expect("a JSON body"),
            404 if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("GET {path}: {status} {body}"),
        }
    }
}

#[tokio::test]
async fn the_seed_user_service_runs_unchanged_against_the_server() {
    use tokio::io::AsyncBufReadExt;
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node/user-service");
    assert!(
        app.join("node_modules/@eventstore/db-client").is_dir(),
        "the service's packages are missing: run `npm ci --ignore-scripts` in {} \
         (scripts/test.sh does)",
        app.display()
    );
    let (db, served, client) = serve_migrated().await;
    let migration = std::fs::read_to_string(
        app.join("src/eventsourced/migrations/0001-initial_migrations.sql"),
    )
    .unwrap();
    sqlx::raw_sql(&migration).execute(&db.pool).await.unwrap();
    // A user registered before the service starts: its subscription catches up on it.
    client
        .append_to_stream(
            "user-ada",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            event(
                "user-created",
                json!({"username": "ada", "fullName": "Ada Lovelace",
                       "openedAt": "2023-07-14T01:47:35.070Z"}),
            ),
        )
        .await
        .unwrap();

    let mut service = tokio::process::Command::new(app.join("node_modules/.bin/ts-node"))
        .args([
            "-r",
            "tsconfig-paths/register",
            "./src/eventsourced/index.ts",
        ])
        .current_dir(&app)
        .env(
            "ESDB_CONNECTION_STRING",
            format!("{}&throwOnAppendFailure=false", served.esdb_url),
        )
        .env("DATABASE_URL", db.url())
        .env("PORT", "0")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the user service starts");
    let mut lines = tokio::io::BufReader::new(service.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("its stdout is readable") {
            if let Some(port) = line.strip_prefix("server up listening ") {
                return port.trim().parse().expect("a port");
            }
        }
        panic!("the user service exited before it listened");
    })
    .await
    .expect("the user service listens within two minutes");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let ada = get_when_found(port, "/users/ada").await;
    assert_eq!(ada["fullName"], "Ada Lovelace");
    assert_eq!(ada["createdAt"], "2023-07-14T01:47:35.070Z");

    let (status, body) = http(
        port,
        "POST",
        "/users",
        Some(r#"{"username":"donald-le","fullName":"Donald Le"}"#),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (201, r#"{"username":"donald-le"}"#)
    );
    let donald = get_when_found(port, "/users/donald-le").await;
    assert_eq!(donald["username"], "donald-le");
    assert_eq!(donald["fullName"], "Donald Le");
    assert!(donald["id"].is_number(), "{donald}");
    assert_eq!(http(port, "GET", "/users/nobody", None).await.0, 404);

    // The event as the store keeps it: JSON data, queryable.
    let (event_type, username): (String, String) = sqlx::query_as(
        "SELECT type, data->>'username' FROM eventstore.events \
         WHERE stream = 'user-donald-le' AND version = 0",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (event_type.as_str(), username.as_str()),
        ("user-created", "donald-le")
    );
    // Each user once: the subscription delivered each event once.
    let users: i64 = sqlx::query_scalar(r#"SELECT count(*) FROM eventsourcing."user""#)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 2);

    // The seed's SIGTERM handlers close its clients but leave its HTTP server up, so the
    // process would not exit on SIGTERM: end it outright.
    service.kill().await.expect("the user service is stopped");
    drop(served);
}

#[tokio::test]
async fn the_node_client_creates_reads_acks_parks_and_replays_a_persistent_subscription() {
    let app = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("node/user-service");
    assert!(
        app.join("node_modules/@eventstore/db-client").is_dir(),
        "the Node packages are missing: run `npm ci --ignore-scripts` in {} \
         (scripts/test.sh does)",
        app.display()
    );
    let (db, served, _client) = serve_migrated().await;
    let run = tokio::process::Command::new("node")
        .arg("checks/persistent.js")
        .current_dir(&app)
        .env("ESDB_CONNECTION_STRING", &served.esdb_url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the Node checks finish within three minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Node checks failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a result line")).unwrap();
    assert_eq!(seen["seen"], json!([[1, 0], [2, 0], [3, 0], [2, 0]]));
    // The group went with the subscription.
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.groups")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(groups, 0);
}

#[tokio::test]
async fn a_pinned_category_group_keeps_each_streams_order_and_a_parked_event_holds_its_stream_back()
{
    let (db, _served, client) = serve_migrated().await;
    append_numbered(&client, "acct-a", 3).await;
    append_numbered(&client, "acct-b", 3).await;
    // Another category: the $ce-acct group never sees it.
    append_numbered(&client, "other-c", 2).await;
    let settings = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Start)
        .consumer_strategy_name(SystemConsumerStrategy::Pinned);
    client
        .create_persistent_subscription("$ce-acct", "ledger", &settings)
        .await
        .expect("create");
    let (ordered, categories): (bool, Vec<String>) = sqlx::query_as(
        "SELECT ordered_by_stream, categories FROM eventstore.groups \
         WHERE group_name = '$ce-acct::ledger'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(ordered);
    assert_eq!(categories, ["acct"]);

    // One event in flight at a time, so that what a park holds back is not yet handed out.
    let mut subscription = client
        .subscribe_to_persistent_subscription(
            "$ce-acct",
            "ledger",
            &SubscribeToPersistentSubscriptionOptions::default().buffer_size(1),
        )
        .await
        .expect("subscribe");
    // Park acct-a's revision 1: acct-a's revision 2 waits behind it; acct-b goes on.
    let mut deliveries = Vec::new();
    let mut parked = false;
    while deliveries.iter().filter(|(s, _)| s == "acct-b").count() < 3 {
        let (event, _) = next_delivery(&mut subscription).await;
        let key = (event.get_original_stream_id().to_owned(), revision(&event));
        if key == ("acct-a".to_owned(), 1) && !parked {
            parked = true;
            subscription
                .nack(&event, NakAction::Park, "hold the stream")
                .await
                .unwrap();
        } else {
            subscription.ack(&event).await.unwrap();
        }
        deliveries.push(key);
    }
    assert!(parked, "{deliveries:?}");
    info_until(&client, "$ce-acct", "ledger", |info| {
        info.stats.parked_message_count == 1
    })
    .await;
    client
        .replay_parked_messages("$ce-acct", "ledger", &Default::default())
        .await
        .expect("replay parked");
    while deliveries.iter().filter(|(s, _)| s == "acct-a").count() < 4 {
        let (event, _) = next_delivery(&mut subscription).await;
        subscription.ack(&event).await.unwrap();
        deliveries.push((event.get_original_stream_id().to_owned(), revision(&event)));
    }
    let of = |stream: &str| -> Vec<u64> {
        deliveries
            .iter()
            .filter(|(s, _)| s == stream)
            .map(|(_, r)| *r)
            .collect()
    };
    assert_eq!(of("acct-b"), [0, 1, 2], "{deliveries:?}");
    // acct-a's revision 2 came only after its parked revision 1 was replayed.
    assert_eq!(of("acct-a"), [0, 1, 1, 2], "{deliveries:?}");
    assert!(of("other-c").is_empty());
}

// TLS.

/// A self-signed certificate for 127.0.0.1 and its key, made with `openssl`, in `dir`.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    )
}

#[tokio::test]
async fn over_tls_calls_run_as_the_callers_role_and_bad_tls_options_stop_the_server() {
    let dir = std::env::temp_dir().join(format!("es-tls-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = self_signed(&dir);
    let db = TestDb::new(4).await;
    let writer = pg_eventstore_tests::role_with_password(&db, "eventstore_writer").await;
    let reader = pg_eventstore_tests::role_with_password(&db, "eventstore_reader").await;
    let served = Served::start_with(&db.url(), &["--tls-cert", &cert, "--tls-key", &key]).await;
    assert!(
        served.esdb_url.ends_with("?tls=true"),
        "{}",
        served.esdb_url
    );
    let client_as = |credentials: &str| {
        let url = served
            .esdb_url
            .replacen("esdb://", &format!("esdb://{credentials}"), 1);
        let settings: ClientSettings = format!("{url}&tlsVerifyCert=false")
            .parse()
            .expect("a connection string");
        Client::new(settings).expect("a client")
    };
    let placed = || event("order-placed", json!({"total": 5}));

    // No credentials, a wrong password, a role that does not exist: UNAUTHENTICATED, which
    // the client reports as access denied, and nothing is written.
    for credentials in [
        String::new(),
        format!("{writer}:wrong@"),
        format!("nobody_here:{}@", pg_eventstore_tests::PASSWORD),
    ] {
        let refused = client_as(&credentials)
            .append_to_stream("order-9", &AppendToStreamOptions::default(), placed())
            .await;
        assert!(
            matches!(refused, Err(kurrentdb::Error::AccessDenied)),
            "{credentials:?}: {refused:?}"
        );
    }
    assert_eq!(stored_count(&db, "order-9").await, 0);

    // A writer appends and reads, as its own role.
    let client = client_as(&format!("{writer}:{}@", pg_eventstore_tests::PASSWORD));
    client
        .append_to_stream(
            "order-9",
            &AppendToStreamOptions::default().stream_state(StreamState::NoStream),
            placed(),
        )
        .await
        .expect("an append over TLS");
    let read = read_stream(&client, "order-9", &ReadStreamOptions::default()).await;
    assert_eq!(revisions(&read), [0]);
    assert_eq!(stored_count(&db, "order-9").await, 1);
    let runs_as: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1",
    )
    .bind(&writer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(runs_as >= 1, "the calls ran on {writer}'s connections");

    // A reader reads, and its append is refused by PostgreSQL's privileges.
    let as_reader = client_as(&format!("{reader}:{}@", pg_eventstore_tests::PASSWORD));
    let read = read_stream(&as_reader, "order-9", &ReadStreamOptions::default()).await;
    assert_eq!(revisions(&read), [0]);
    let refused = as_reader
        .append_to_stream("order-9", &AppendToStreamOptions::default(), placed())
        .await;
    assert!(
        matches!(refused, Err(kurrentdb::Error::AccessDenied)),
        "{refused:?}"
    );
    assert_eq!(stored_count(&db, "order-9").await, 1);

    // A cleartext client gets no answer from a TLS server.
    let plain: ClientSettings = served
        .esdb_url
        .replace("tls=true", "tls=false")
        .parse()
        .unwrap();
    let plain = Client::new(plain).unwrap();
    let refused = tokio::time::timeout(
        PATIENCE,
        plain.append_to_stream(
            "order-9",
            &AppendToStreamOptions::default(),
            event("order-paid", json!({})),
        ),
    )
    .await
    .expect("the cleartext client gives up in time");
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(stored_count(&db, "order-9").await, 1);
    drop(served);
    for role in [writer, reader] {
        // The server's pools of the role are gone with it; a lingering one ends here.
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1")
            .bind(&role)
            .execute(&db.pool)
            .await
            .unwrap();
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }

    // A key that is not one, a file that is missing, a certificate without its key: the
    // server says so and exits before it listens.
    std::fs::write(dir.join("bad.pem"), "not a key").unwrap();
    let bad = dir.join("bad.pem").to_string_lossy().into_owned();
    let missing = dir.join("missing.pem").to_string_lossy().into_owned();
    for (args, says) in [
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", bad.as_str()],
            "TLS",
        ),
        (
            vec!["--tls-cert", missing.as_str(), "--tls-key", key.as_str()],
            "missing.pem",
        ),
        (vec!["--tls-cert", cert.as_str()], "--tls-key"),
    ] {
        let run = tokio::process::Command::new(pg_eventstore_tests::eventstore_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(&args)
            .env("DATABASE_URL", db.url())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(PATIENCE, run)
            .await
            .expect("the server exits in time")
            .expect("the server runs");
        assert!(!output.status.success(), "{args:?} served");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!stdout.contains("serving"), "{args:?}: {stdout}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
