//! Subscriptions against a real server: coalesced wake-ups, exact delivery under concurrent
//! writers with rollbacks, filters, and recovery from killed connections.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use pg_eventstore_client::{
    EventData, EventStore, ExpectedVersion, ReadAllOptions, RecordedEvent, Subscription,
    SubscriptionOptions,
};
use pg_eventstore_tests::{eventually, settled, TestDb, PATIENCE};
use rand::Rng;
use sqlx::postgres::PgListener;
use sqlx::Acquire;
use uuid::Uuid;

/// Long enough that only wake-ups, not the timer, can explain prompt delivery.
const NO_POLLING: Duration = Duration::from_secs(3600);

fn event(event_type: &str, id: Uuid) -> EventData {
    EventData::json(event_type, serde_json::json!({ "id": id })).id(id)
}

/// Collects what `subscription` yields into a shared vector, in the background.
fn collect(
    mut subscription: Subscription,
) -> (Arc<Mutex<Vec<RecordedEvent>>>, tokio::task::JoinHandle<()>) {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    let task = tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            sink.lock()
                .unwrap()
                .push(event.expect("the subscription does not fail"));
        }
    });
    (received, task)
}

async fn wait_for(received: &Mutex<Vec<RecordedEvent>>, count: usize) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while received.lock().unwrap().len() < count {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "received {} of {count} events",
        received.lock().unwrap().len()
    );
}

async fn whole_log(store: &EventStore) -> Vec<RecordedEvent> {
    store
        .read_all(ReadAllOptions::default())
        .try_collect()
        .await
        .unwrap()
}

fn positions(events: &[RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.position).collect()
}

/// Appends `sentinel` to `stream` once everything else is written, and waits until
/// `received` holds it. A subscription delivers in log order, and the sentinel's
/// transaction is younger than every earlier one, so everything before it has arrived by
/// then: the events before it are all there is to check, with no time given for extras.
/// Returns them, after checking that nothing was delivered out of order (a repeat would be).
async fn up_to_sentinel(
    store: &EventStore,
    received: &Mutex<Vec<RecordedEvent>>,
    stream: &str,
    sentinel: EventData,
) -> Vec<RecordedEvent> {
    let appended = store
        .append(stream, ExpectedVersion::Any, [sentinel])
        .await
        .unwrap();
    let waited = tokio::time::timeout(PATIENCE, async {
        while !received
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.position == appended.last_position)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the sentinel did not arrive");
    let mut events = received.lock().unwrap().clone();
    assert!(
        events.windows(2).all(|w| w[0].position < w[1].position),
        "delivered in log order, nothing twice"
    );
    assert_eq!(
        events.pop().map(|e| e.position),
        Some(appended.last_position)
    );
    events
}

#[tokio::test]
async fn wakeups_are_coalesced_and_carry_a_readable_head() {
    let db = TestDb::new(4).await;
    let mode: String = sqlx::query_scalar("SELECT eventstore.wakeup_mode()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    // The extension's worker (the test cluster preloads the library), or the portable
    // form's notifier, which the harness runs beside each test database.
    let expected = match pg_eventstore_tests::install() {
        pg_eventstore_tests::Install::Extension => "coalesced",
        pg_eventstore_tests::Install::Portable => "notifier",
    };
    assert_eq!(mode, expected);
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen("eventstore").await.unwrap();
    let store = EventStore::from_pool(db.pool.clone());
    let appended = store
        .append(
            "order-1",
            ExpectedVersion::NoStream,
            [event("order-placed", Uuid::now_v7())],
        )
        .await
        .unwrap();
    let notification = tokio::time::timeout(PATIENCE, listener.recv())
        .await
        .expect("a wake-up arrives")
        .unwrap();
    let head: u64 = notification
        .payload()
        .parse()
        .expect("the payload is a position");
    assert_eq!(head, appended.last_position);
    let readable: Vec<RecordedEvent> = store
        .read_all(ReadAllOptions::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(positions(&readable), vec![head]);
    drop(listener);
    db.drop_database().await;
}

#[tokio::test]
async fn a_subscriber_following_eight_writers_with_rollbacks_gets_exactly_the_committed_events_in_log_order(
) {
    let db = TestDb::new(16).await;
    let store = EventStore::from_pool(db.pool.clone());
    let (received, reader) =
        collect(store.subscribe_to_all(SubscriptionOptions::default().poll_interval(NO_POLLING)));

    let committed = Arc::new(Mutex::new(HashSet::new()));
    let mut writers = Vec::new();
    for writer in 0..8 {
        let pool = db.pool.clone();
        let committed = committed.clone();
        writers.push(tokio::spawn(async move {
            for _ in 0..60 {
                let (streams, rollback, savepoint_rollback) = {
                    let mut rng = rand::thread_rng();
                    let streams: Vec<String> = (0..rng.gen_range(1..=3))
                        .map(|_| format!("order-{}", rng.gen_range(0..24)))
                        .collect();
                    (streams, rng.gen_bool(0.2), rng.gen_bool(0.15))
                };
                let mut tx = pool.begin().await.unwrap();
                let mut ids = Vec::new();
                let mut failed = false;
                for (i, stream) in streams.iter().enumerate() {
                    let id = Uuid::now_v7();
                    let result = if i == 1 && savepoint_rollback {
                        let mut savepoint = tx.begin().await.unwrap();
                        let result = EventStore::append_in(
                            &mut *savepoint,
                            stream,
                            ExpectedVersion::Any,
                            [event("order-noted", id)],
                        )
                        .await;
                        savepoint.rollback().await.unwrap();
                        result.map(|_| ())
                    } else {
                        let result = EventStore::append_in(
                            &mut *tx,
                            stream,
                            ExpectedVersion::Any,
                            [event("order-noted", id)],
                        )
                        .await;
                        if result.is_ok() {
                            ids.push(id);
                        }
                        result.map(|_| ())
                    };
                    if let Err(error) = result {
                        // Only the out-of-order refusal (40001) can fail here; retrying is the
                        // caller's business, this writer just moves on.
                        assert!(error.is_transient(), "writer {writer}: {error}");
                        failed = true;
                        break;
                    }
                }
                if rollback || failed {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed.lock().unwrap().extend(ids);
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let committed = committed.lock().unwrap().clone();
    assert!(committed.len() > 300, "{} committed", committed.len());
    wait_for(&received, committed.len()).await;
    let received = up_to_sentinel(
        &store,
        &received,
        "order-sentinel",
        event("order-noted", Uuid::now_v7()),
    )
    .await;
    reader.abort();
    let ids: Vec<Uuid> = received.iter().map(|e| e.id).collect();
    assert_eq!(
        ids.len(),
        committed.len(),
        "nothing extra, nothing repeated"
    );
    assert_eq!(ids.iter().copied().collect::<HashSet<_>>(), committed);
    let mut log = whole_log(&store).await;
    log.pop();
    assert_eq!(positions(&received), positions(&log));
    db.drop_database().await;
}

#[tokio::test]
async fn category_stream_and_type_subscriptions_catch_up_then_go_live() {
    let db = TestDb::new(8).await;
    let store = EventStore::from_pool(db.pool.clone());
    for n in 0..20 {
        let stream = format!("order-{}", n % 4);
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                [event(
                    if n % 2 == 0 {
                        "order-placed"
                    } else {
                        "order-paid"
                    },
                    Uuid::now_v7(),
                )],
            )
            .await
            .unwrap();
        store
            .append(
                &format!("user-{n}"),
                ExpectedVersion::NoStream,
                [event("user-created", Uuid::now_v7())],
            )
            .await
            .unwrap();
    }
    let (paid, paid_task) = collect(
        store.subscribe_to_category(
            "order",
            SubscriptionOptions::default()
                .event_types(["order-paid"])
                .page_size(3)
                .poll_interval(NO_POLLING),
        ),
    );
    let (order_1, order_1_task) = collect(
        store.subscribe_to_stream(
            "order-1",
            SubscriptionOptions::default()
                .from_version(2)
                .poll_interval(NO_POLLING),
        ),
    );
    let (users, users_task) = collect(
        store.subscribe_to_all(
            SubscriptionOptions::default()
                .event_types(["user-created"])
                .poll_interval(NO_POLLING),
        ),
    );
    wait_for(&paid, 10).await;
    wait_for(&order_1, 3).await;
    wait_for(&users, 20).await;

    // Live: new events arrive through wake-ups.
    store
        .append(
            "order-1",
            ExpectedVersion::Exact(4),
            [event("order-paid", Uuid::now_v7())],
        )
        .await
        .unwrap();
    store
        .append(
            "user-live",
            ExpectedVersion::NoStream,
            [event("user-created", Uuid::now_v7())],
        )
        .await
        .unwrap();
    wait_for(&paid, 11).await;
    wait_for(&order_1, 4).await;
    wait_for(&users, 21).await;
    let paid = up_to_sentinel(
        &store,
        &paid,
        "order-sentinel",
        event("order-paid", Uuid::now_v7()),
    )
    .await;
    let order_1 = Mutex::new(
        up_to_sentinel(
            &store,
            &order_1,
            "order-1",
            event("order-noted", Uuid::now_v7()),
        )
        .await,
    );
    let users = Mutex::new(
        up_to_sentinel(
            &store,
            &users,
            "user-sentinel",
            event("user-created", Uuid::now_v7()),
        )
        .await,
    );
    for task in [paid_task, order_1_task, users_task] {
        task.abort();
    }

    assert_eq!(paid.len(), 11);
    assert!(paid
        .iter()
        .all(|e| e.event_type == "order-paid" && e.category() == "order"));
    assert!(paid.windows(2).all(|w| w[0].position < w[1].position));
    let versions: Vec<u64> = order_1.lock().unwrap().iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![2, 3, 4, 5]);
    let users = users.lock().unwrap().clone();
    assert_eq!(users.len(), 21);
    assert_eq!(users.last().unwrap().stream, "user-live");
    db.drop_database().await;
}

#[tokio::test]
async fn a_subscription_resumes_exactly_after_its_connections_are_killed() {
    let db = TestDb::new(8).await;
    let subscriber_pool = db.pool_named("es-test-subscriber", 3).await;
    let subscriber_sessions = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'es-test-subscriber'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    let subscriber = EventStore::from_pool(subscriber_pool);
    let (received, reader) = collect(
        subscriber.subscribe_to_all(
            SubscriptionOptions::default()
                .page_size(7)
                .poll_interval(Duration::from_millis(500)),
        ),
    );
    let writer = EventStore::from_pool(db.pool.clone());
    let mut appended = 0;
    let mut killed = 0;
    for round in 0..40 {
        let events: Vec<EventData> = (0..5)
            .map(|_| event("order-noted", Uuid::now_v7()))
            .collect();
        writer
            .append(
                &format!("order-{}", round % 7),
                ExpectedVersion::Any,
                events,
            )
            .await
            .unwrap();
        appended += 5;
        if round % 8 == 3 {
            // Once the subscriber is connected again (its listener reconnects by itself).
            eventually(PATIENCE, "the subscriber is connected", || async {
                subscriber_sessions().await > 0
            })
            .await;
            killed += db.terminate("es-test-subscriber").await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        killed >= 5,
        "the listener and reader connections were killed ({killed})"
    );
    wait_for(&received, appended).await;
    let received = up_to_sentinel(
        &writer,
        &received,
        "order-sentinel",
        event("order-noted", Uuid::now_v7()),
    )
    .await;
    reader.abort();
    let mut log = whole_log(&writer).await;
    log.pop();
    assert_eq!(positions(&received), positions(&log));
    db.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_of_one_store_share_its_reader_and_each_gets_exactly_its_events() {
    let db = TestDb::new(16).await;
    let store = EventStore::from_pool(db.pool.clone());
    // Some history first, so the subscriptions from 0 catch up on their own before they
    // join the store's reader.
    for n in 0..40 {
        let stream = format!("{}-{}", ["order", "user"][n % 2], n % 7);
        store
            .append(
                &stream,
                ExpectedVersion::Any,
                [event("noted", Uuid::now_v7())],
            )
            .await
            .unwrap();
    }
    let options = || SubscriptionOptions::default().poll_interval(NO_POLLING);
    let middle = store.head_position().await.unwrap();
    let subscriptions = [
        ("all", store.subscribe_to_all(options())),
        (
            "all, pages of 7",
            store.subscribe_to_all(options().page_size(7)),
        ),
        (
            "all after the history",
            store.subscribe_to_all(options().after(middle)),
        ),
        (
            "category order",
            store.subscribe_to_category("order", options()),
        ),
        (
            "category user",
            store.subscribe_to_category("user", options().page_size(3)),
        ),
        (
            "type paid",
            store.subscribe_to_all(options().event_types(["paid"])),
        ),
    ];
    let collected: Vec<_> = subscriptions
        .into_iter()
        .map(|(name, subscription)| (name, collect(subscription)))
        .collect();

    let mut writers = Vec::new();
    for writer in 0..6 {
        let pool = db.pool.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..50 {
                let (stream, event_type, rollback) = {
                    let mut rng = rand::thread_rng();
                    (
                        format!(
                            "{}-{}",
                            ["order", "user"][rng.gen_range(0..2)],
                            rng.gen_range(0..9)
                        ),
                        ["noted", "paid"][rng.gen_range(0..2)],
                        rng.gen_bool(0.2),
                    )
                };
                let mut tx = pool.begin().await.unwrap();
                let appended = EventStore::append_in(
                    &mut *tx,
                    &stream,
                    ExpectedVersion::Any,
                    [event(event_type, Uuid::now_v7())],
                )
                .await;
                match appended {
                    Ok(_) if !rollback => tx.commit().await.unwrap(),
                    Ok(_) => tx.rollback().await.unwrap(),
                    Err(error) => {
                        assert!(error.is_transient(), "writer {writer}, append {n}: {error}");
                        tx.rollback().await.unwrap();
                    }
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    // Sentinels of type paid in both categories: the last event of every subscription.
    for stream in ["order-sentinel", "user-sentinel"] {
        store
            .append(
                stream,
                ExpectedVersion::NoStream,
                [event("paid", Uuid::now_v7())],
            )
            .await
            .unwrap();
    }
    // Other tests' transactions may hold the readable horizon back for a moment.
    settled(&db.pool).await;
    let log = whole_log(&store).await;
    for (name, (received, reader)) in collected {
        let expected: Vec<u64> = log
            .iter()
            .filter(|e| match name {
                "all after the history" => e.position > middle,
                "category order" => e.category() == "order",
                "category user" => e.category() == "user",
                "type paid" => e.event_type == "paid",
                _ => true,
            })
            .map(|e| e.position)
            .collect();
        let last = *expected.last().expect("a sentinel");
        eventually(
            PATIENCE,
            &format!("subscription {name} has its sentinel"),
            || {
                let received = received.clone();
                async move {
                    received
                        .lock()
                        .unwrap()
                        .last()
                        .is_some_and(|e| e.position >= last)
                }
            },
        )
        .await;
        reader.abort();
        assert_eq!(
            positions(&received.lock().unwrap()),
            expected,
            "subscription {name}: exactly its events, in log order"
        );
    }
}
