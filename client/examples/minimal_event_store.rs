//! The seed article's minimal event store interface (`IEventStore`: dispatch, events of an
//! aggregate, subscribe and unsubscribe by event type) implemented on pg_eventstore.
//!
//! Unlike the article's in-memory fan-out, handlers here are fed by a subscription to the
//! global log, so they also see events dispatched by other processes, in commit order, and
//! only once they are committed.
//!
//! Run against a database (the extension is created by the migrations if missing):
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/shop cargo run -p pg_eventstore_client --example minimal_event_store`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use pg_eventstore_client::{
    EventData, EventStore, ExpectedVersion, ReadStreamOptions, RecordedEvent, Result,
    SubscriptionOptions,
};
use serde_json::Value;

/// The article's `IEvent`: the aggregate it belongs to, a type, data and a timestamp.
#[derive(Clone, Debug)]
pub struct Event {
    /// The aggregate's id, used as the stream name (`user-123`).
    pub aggregate_id: String,
    /// The event type (`UserCreated`).
    pub event_type: String,
    /// The event's data.
    pub data: Value,
    /// When it was stored (set by the store; ignored on dispatch).
    pub timestamp: DateTime<Utc>,
}

impl Event {
    fn from_recorded(event: &RecordedEvent) -> Result<Self> {
        Ok(Event {
            aggregate_id: event.stream.clone(),
            event_type: event.event_type.clone(),
            data: event.decode()?,
            timestamp: event.recorded_at,
        })
    }
}

/// A handler registered with [`MinimalEventStore::subscribe`].
pub type Handler = Arc<dyn Fn(&Event) + Send + Sync>;

/// Identifies a registered handler, for [`MinimalEventStore::unsubscribe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandlerId(u64);

type Handlers = Arc<Mutex<HashMap<String, Vec<(HandlerId, Handler)>>>>;

/// The article's interface over pg_eventstore.
pub struct MinimalEventStore {
    store: EventStore,
    handlers: Handlers,
    next_id: AtomicU64,
    follower: tokio::task::JoinHandle<()>,
}

impl MinimalEventStore {
    /// Connects, applies the migrations and starts following the log from its current end.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = EventStore::connect(url).await?;
        store.migrate().await?;
        let handlers: Handlers = Arc::default();
        let mut subscription = store
            .subscribe_to_all(SubscriptionOptions::default().after(store.head_position().await?));
        let fan_out = handlers.clone();
        let follower = tokio::spawn(async move {
            while let Some(recorded) = subscription.next().await {
                let event = match recorded.and_then(|r| Event::from_recorded(&r)) {
                    Ok(event) => event,
                    Err(error) => {
                        eprintln!("subscription stopped: {error}");
                        return;
                    }
                };
                let handlers: Vec<Handler> = fan_out
                    .lock()
                    .expect("handlers lock")
                    .get(&event.event_type)
                    .map(|list| list.iter().map(|(_, h)| h.clone()).collect())
                    .unwrap_or_default();
                for handler in handlers {
                    handler(&event);
                }
            }
        });
        Ok(MinimalEventStore {
            store,
            handlers,
            next_id: AtomicU64::new(0),
            follower,
        })
    }

    /// Stores `event` at the end of its aggregate's stream.
    pub async fn dispatch(&self, event: Event) -> Result<()> {
        self.store
            .append(
                &event.aggregate_id,
                ExpectedVersion::Any,
                [EventData::json(event.event_type, event.data)],
            )
            .await?;
        Ok(())
    }

    /// Every event of one aggregate, oldest first.
    pub async fn events_for(&self, aggregate_id: &str) -> Result<Vec<Event>> {
        self.store
            .read_stream(aggregate_id, ReadStreamOptions::forwards())
            .and_then(|recorded| async move { Event::from_recorded(&recorded) })
            .try_collect()
            .await
    }

    /// Calls `handler` for every committed event of `event_type` from now on.
    pub fn subscribe(&self, event_type: &str, handler: Handler) -> HandlerId {
        let id = HandlerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        self.handlers
            .lock()
            .expect("handlers lock")
            .entry(event_type.to_owned())
            .or_default()
            .push((id, handler));
        id
    }

    /// Removes a handler; false when it was not registered for `event_type`.
    pub fn unsubscribe(&self, event_type: &str, id: HandlerId) -> bool {
        let mut handlers = self.handlers.lock().expect("handlers lock");
        let Some(list) = handlers.get_mut(event_type) else {
            return false;
        };
        let before = list.len();
        list.retain(|(registered, _)| *registered != id);
        before != list.len()
    }
}

impl Drop for MinimalEventStore {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn user_created(aggregate_id: &str, name: &str) -> Event {
    Event {
        aggregate_id: aggregate_id.to_owned(),
        event_type: "UserCreated".to_owned(),
        data: serde_json::json!({ "userId": aggregate_id, "userName": name }),
        timestamp: Utc::now(),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the database");
    let store = MinimalEventStore::connect(&url).await?;

    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handler: Handler = Arc::new(move |event: &Event| {
        let _ = seen_tx.send(
            event.data["userName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    });
    let id = store.subscribe("UserCreated", handler);

    let user = format!("user-{}", uuid::Uuid::now_v7().simple());
    store.dispatch(user_created(&user, "Kacper")).await?;
    store.dispatch(user_created(&user, "Kacper W.")).await?;

    let history = store.events_for(&user).await?;
    assert_eq!(history.len(), 2);
    println!("events for {user}:");
    for event in &history {
        println!("  {} {} {}", event.timestamp, event.event_type, event.data);
    }

    for expected in ["Kacper", "Kacper W."] {
        let got = tokio::time::timeout(Duration::from_secs(10), seen_rx.recv())
            .await
            .expect("the handler is called within 10 s")
            .expect("handler channel open");
        assert_eq!(got, expected);
        println!("handler saw UserCreated for {got}");
    }

    assert!(store.unsubscribe("UserCreated", id));
    store
        .dispatch(user_created(&user, "after unsubscribe"))
        .await?;
    // The removed handler owned the channel's sender: the channel closes without a message.
    let quiet = tokio::time::timeout(Duration::from_millis(500), seen_rx.recv()).await;
    assert!(
        matches!(quiet, Err(_) | Ok(None)),
        "no handler runs after unsubscribe"
    );
    println!("unsubscribed handler is no longer called; minimal event store example ok");
    Ok(())
}
