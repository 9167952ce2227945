//! A live subscription across a restart of the server. Alone in its test binary, because it
//! restarts the cluster the other tests use.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use pg_eventstore_client::{
    Error, EventData, EventStore, ExpectedVersion, ReadAllOptions, RecordedEvent,
    SubscriptionOptions,
};
use pg_eventstore_tests::{TestDb, PATIENCE};
use uuid::Uuid;

fn restart_server() {
    let data = std::env::var("EVENTSTORE_TEST_PGDATA").expect(
        "EVENTSTORE_TEST_PGDATA must name the test cluster's data folder; \
         scripts/test.sh sets it",
    );
    let pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl";
    let args = ["-D", &data, "-m", "fast", "-w", "-t", "60", "restart"];
    let running_as_postgres = std::env::var("USER").is_ok_and(|u| u == "postgres");
    let status = if running_as_postgres {
        Command::new(pg_ctl).args(args).status()
    } else {
        Command::new("sudo")
            .args(["-u", "postgres", "--", pg_ctl])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
    }
    .expect("pg_ctl runs");
    assert!(status.success(), "pg_ctl restart failed");
}

/// Appends one event, retrying while the server is down. The event keeps its id across the
/// retries, so one whose reply was lost in the restart is not appended twice.
async fn append_retrying(store: &EventStore, stream: &str) -> u64 {
    let event = EventData::json("order-noted", serde_json::json!({})).id(Uuid::now_v7());
    loop {
        match store
            .append(stream, ExpectedVersion::Any, [event.clone()])
            .await
        {
            Ok(result) => return result.last_position,
            Err(Error::Connection(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => panic!("{error}"),
        }
    }
}

#[tokio::test]
async fn a_live_subscription_survives_a_server_restart_without_loss_or_repeats() {
    let db = TestDb::new(4).await;
    let store = EventStore::from_pool(db.pool.clone());
    let mut subscription = store
        .subscribe_to_all(SubscriptionOptions::default().poll_interval(Duration::from_millis(500)));
    let received = Arc::new(Mutex::new(Vec::<RecordedEvent>::new()));
    let sink = received.clone();
    let reader = tokio::spawn(async move {
        while let Some(event) = subscription.next().await {
            sink.lock()
                .unwrap()
                .push(event.expect("the subscription does not fail"));
        }
    });

    for n in 0..30 {
        append_retrying(&store, &format!("order-{}", n % 3)).await;
    }
    restart_server();
    for n in 0..30 {
        append_retrying(&store, &format!("order-{}", n % 3)).await;
    }
    let waited = tokio::time::timeout(PATIENCE, async {
        while received.lock().unwrap().len() < 60 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "received {} of 60",
        received.lock().unwrap().len()
    );
    // One more, appended after all the others: once it has arrived, everything before it
    // has, and any repeat would have come before it.
    let last = append_retrying(&store, "order-sentinel").await;
    let waited = tokio::time::timeout(PATIENCE, async {
        while !received.lock().unwrap().iter().any(|e| e.position == last) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "the last event did not arrive");
    reader.abort();

    let log: Vec<u64> = store
        .read_all(ReadAllOptions::default())
        .map_ok(|e| e.position)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(log.len(), 61);
    let got: Vec<u64> = received
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(got, log);
    db.drop_database().await;
}
