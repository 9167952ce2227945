//! The store's health: what `eventstore stats` and monitoring read first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::{EventStore, Result};

/// Streams, events, and what holds the global log back.
#[derive(Clone, Debug)]
pub struct Health {
    /// Streams with at least one event.
    pub streams: u64,
    /// Events stored.
    pub events: u64,
    /// The newest position `read_all` hands out now.
    pub head_position: u64,
    /// Committed events not readable yet because an older transaction is still running
    /// (see [`Health::oldest_transaction`]).
    pub held_back_events: u64,
    /// The oldest transaction of the cluster that holds a transaction id: while it runs,
    /// no event appended after it began can be read.
    pub oldest_transaction: Option<InFlightTransaction>,
}

/// A running transaction.
#[derive(Clone, Debug)]
pub struct InFlightTransaction {
    /// Its backend's process id (`pg_terminate_backend` takes it).
    pub pid: i32,
    /// Its database.
    pub database: Option<String>,
    /// Its session's `application_name`.
    pub application_name: Option<String>,
    /// `active`, `idle in transaction`, ...
    pub state: Option<String>,
    /// When the transaction began.
    pub started_at: Option<DateTime<Utc>>,
    /// How long it has been running.
    pub age: Duration,
    /// Its current or last statement (first 200 characters).
    pub query: Option<String>,
}

fn count(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

impl EventStore {
    /// Streams, events, the head of the global log, and the events and transaction that
    /// hold it back (`eventstore.health()`).
    pub async fn health(&self) -> Result<Health> {
        let row = sqlx::query(
            "SELECT streams, events, head_position, held_back_events, oldest_xact_pid, \
                    oldest_xact_database::text, oldest_xact_application, oldest_xact_state, \
                    oldest_xact_start, \
                    extract(epoch FROM oldest_xact_age)::float8 AS oldest_xact_seconds, \
                    oldest_xact_query \
             FROM eventstore.health()",
        )
        .fetch_one(self.pool())
        .await?;
        let pid: Option<i32> = row.try_get("oldest_xact_pid")?;
        let oldest = match pid {
            None => None,
            Some(pid) => {
                let age: Option<f64> = row.try_get("oldest_xact_seconds")?;
                Some(InFlightTransaction {
                    pid,
                    database: row.try_get("oldest_xact_database")?,
                    application_name: row.try_get("oldest_xact_application")?,
                    state: row.try_get("oldest_xact_state")?,
                    started_at: row.try_get("oldest_xact_start")?,
                    age: Duration::from_secs_f64(age.unwrap_or_default().max(0.0)),
                    query: row.try_get("oldest_xact_query")?,
                })
            }
        };
        Ok(Health {
            streams: count(row.try_get("streams")?),
            events: count(row.try_get("events")?),
            head_position: count(row.try_get("head_position")?),
            held_back_events: count(row.try_get("held_back_events")?),
            oldest_transaction: oldest,
        })
    }
}
