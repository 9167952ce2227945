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
    /// hold it back.
    pub async fn health(&self) -> Result<Health> {
        let mut connection = self.pool().acquire().await?;
        // Events past the head are committed but not readable yet (rows of transactions
        // still running are not visible here at all).
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM eventstore.events WHERE version = 0) AS streams, \
                    (SELECT count(*) FROM eventstore.events) AS events, h.head, \
                    (SELECT count(*) FROM eventstore.events WHERE position > h.head) AS held_back \
             FROM (SELECT eventstore.head_position() AS head) AS h",
        )
        .fetch_one(&mut *connection)
        .await?;
        let oldest = sqlx::query(
            "SELECT pid, datname, application_name, state, xact_start, \
                    extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age, \
                    left(query, 200) AS query \
             FROM pg_stat_activity \
             WHERE backend_xid IS NOT NULL \
             ORDER BY age(backend_xid) DESC LIMIT 1",
        )
        .fetch_optional(&mut *connection)
        .await?
        .map(|row| -> Result<InFlightTransaction> {
            let age: Option<f64> = row.try_get("age")?;
            Ok(InFlightTransaction {
                pid: row.try_get("pid")?,
                database: row.try_get("datname")?,
                application_name: row.try_get("application_name")?,
                state: row.try_get("state")?,
                started_at: row.try_get("xact_start")?,
                age: Duration::from_secs_f64(age.unwrap_or_default().max(0.0)),
                query: row.try_get("query")?,
            })
        })
        .transpose()?;
        Ok(Health {
            streams: count(row.try_get("streams")?),
            events: count(row.try_get("events")?),
            head_position: count(row.try_get("head")?),
            held_back_events: count(row.try_get("held_back")?),
            oldest_transaction: oldest,
        })
    }
}
