//! Rust client for pg_eventstore, an event store inside PostgreSQL: typed appends with
//! optimistic concurrency, paged reads of streams and of the global log, subscriptions woken
//! by `LISTEN eventstore`, competing consumers on persistent subscription groups, and a
//! projection framework ([`projection`]).
//!
//! # Quick start
//!
//! ```no_run
//! use futures_util::TryStreamExt;
//! use pg_eventstore_client::{EventData, EventStore, ExpectedVersion, ReadStreamOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct UserCreated {
//!     username: String,
//!     #[serde(rename = "fullName")]
//!     full_name: String,
//! }
//!
//! # async fn run() -> Result<(), pg_eventstore_client::Error> {
//! let store = EventStore::connect("postgres://postgres@127.0.0.1:5432/shop").await?;
//! store.migrate().await?; // CREATE EXTENSION pg_eventstore, and the projection checkpoints
//!
//! let created = UserCreated { username: "ada".into(), full_name: "Ada Lovelace".into() };
//! store
//!     .append("user-ada", ExpectedVersion::NoStream, [EventData::new("user-created", &created)?])
//!     .await?;
//!
//! let history: Vec<_> = store
//!     .read_stream("user-ada", ReadStreamOptions::forwards())
//!     .try_collect()
//!     .await?;
//! let first: UserCreated = history[0].decode()?;
//! assert_eq!(first.full_name, "Ada Lovelace");
//!
//! // Appending again as if the stream were new fails with both versions.
//! match store
//!     .append("user-ada", ExpectedVersion::NoStream, [EventData::new("user-created", &created)?])
//!     .await
//! {
//!     Err(pg_eventstore_client::Error::WrongExpectedVersion { actual, .. }) => assert_eq!(actual, Some(0)),
//!     other => panic!("expected a conflict, got {other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Subscriptions
//!
//! [`EventStore::subscribe_to_all`], [`EventStore::subscribe_to_category`] and
//! [`EventStore::subscribe_to_stream`] return a [`Subscription`], an async stream that
//! catches up from a checkpoint and then follows new events. Wake-ups come from
//! `LISTEN eventstore`; the subscription re-reads from its checkpoint after each one, after
//! every reconnect and on a timer, so nothing is lost when a notification is.
//!
//! ```no_run
//! # use futures_util::StreamExt;
//! # use pg_eventstore_client::{EventStore, SubscriptionOptions};
//! # async fn run(store: EventStore, checkpoint: u64) -> Result<(), pg_eventstore_client::Error> {
//! let mut users = store.subscribe_to_category(
//!     "user",
//!     SubscriptionOptions::default().after(checkpoint).event_types(["user-created"]),
//! );
//! while let Some(event) = users.next().await {
//!     let event = event?;
//!     println!("{} {} at {}", event.event_type, event.stream, event.position);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Transactions
//!
//! Appends, reads and the consumer's group calls (fetch, ack, nack, park) also run on the
//! caller's connection or transaction (the `*_in` functions), so events, acks and other
//! writes commit together:
//!
//! ```no_run
//! # use pg_eventstore_client::{EventData, EventStore, ExpectedVersion};
//! # async fn run(store: EventStore) -> Result<(), pg_eventstore_client::Error> {
//! let mut tx = store.pool().begin().await?;
//! EventStore::append_in(&mut *tx, "order-7", ExpectedVersion::NoStream,
//!     [EventData::json("order-placed", serde_json::json!({"username": "ada"}))]).await?;
//! sqlx::query("INSERT INTO audit (note) VALUES ('order 7 placed')").execute(&mut *tx).await?;
//! tx.commit().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod event;
mod expected_version;
mod group;
mod health;
mod migrations;
pub mod notifier;
pub mod portable;
pub mod projection;
mod read;
mod retry;
mod store;
mod subscription;

pub use error::{Error, Result};
pub use event::{AppendResult, EventData, RecordedEvent, CAUSATION_ID, CORRELATION_ID};
pub use expected_version::ExpectedVersion;
pub use group::{
    ConsumerOptions, ConsumerStats, GroupConsumer, GroupEvent, GroupInfo, GroupSettings,
    HandlerError, ParkedEvent, StatsHandle,
};
pub use health::{Health, InFlightTransaction};
pub use migrations::{AppliedMigration, Form, Install, Switched, HISTORY_TABLE};
pub use read::{EventStream, ReadAllOptions, ReadStreamOptions, MAX_PAGE_SIZE};
pub use store::{pool_options, EventStore};
pub use subscription::{Subscription, SubscriptionOptions, WakeUps, CHANNEL};

/// How this process names itself where a name is needed and none is given (a projection's
/// owner, a group's consumers): `host:pid`.
pub(crate) fn process_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}
