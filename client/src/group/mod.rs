//! Persistent subscription groups: competing consumers over the global log.
//!
//! A group (`eventstore.create_group`) reads the log once; consumers fetch batches of events
//! leased to them, ack what they handled and nack what failed. The SQL functions are the
//! contract (any language can use them); [`EventStore::group_consumer`] runs workers on
//! them with a handler.
//!
//! - this module: the group's settings, the admin calls and parked events;
//! - `lease`: the consumer's calls, fetch, ack, nack and park, also on the caller's
//!   connection or transaction (so a handler can commit its writes with its ack);
//! - `consumer`: [`GroupConsumer`], a pool of workers running a handler.

mod consumer;
mod lease;

pub use consumer::{ConsumerOptions, ConsumerStats, GroupConsumer, HandlerError, StatsHandle};

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::PgRow;
use sqlx::Row;

use crate::error::on_group;
use crate::{Error, EventStore, RecordedEvent, Result};

/// How a group is set up; see `eventstore.create_group`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSettings {
    /// Only events of these categories (`None`: all).
    pub categories: Option<Vec<String>>,
    /// Only events of these types (`None`: all).
    pub event_types: Option<Vec<String>>,
    /// The group starts after this position (0: the whole log).
    pub from_position: u64,
    /// Deliveries of an event before it is parked.
    pub max_attempts: u32,
    /// How long a fetched event stays leased to its consumer.
    pub lease_timeout: Duration,
    /// Events of one stream go to one consumer at a time, in version order.
    pub ordered_by_stream: bool,
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            categories: None,
            event_types: None,
            from_position: 0,
            max_attempts: 5,
            lease_timeout: Duration::from_secs(30),
            ordered_by_stream: false,
        }
    }
}

impl GroupSettings {
    /// Only events of these categories.
    pub fn categories<I: IntoIterator<Item = S>, S: Into<String>>(mut self, categories: I) -> Self {
        self.categories = Some(categories.into_iter().map(Into::into).collect());
        self
    }

    /// Only events of these types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Start after this position.
    pub fn from_position(mut self, position: u64) -> Self {
        self.from_position = position;
        self
    }

    /// Park an event after this many deliveries.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Lease fetched events for this long.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// Hand each stream's events to one consumer at a time, in order.
    pub fn ordered_by_stream(mut self, ordered: bool) -> Self {
        self.ordered_by_stream = ordered;
        self
    }
}

/// A row of the view `eventstore.groups`.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// Every event of the group up to this position is acked or parked.
    pub position: u64,
    /// Events leased to consumers now.
    pub in_flight: u64,
    /// Parked events.
    pub parked: u64,
    /// Events not handled yet and not in flight.
    pub lag: u64,
    /// Consumers holding leases.
    pub consumers: u64,
    /// Events waiting behind a parked event of their stream (groups ordered by stream).
    pub held_back: u64,
    /// The group's options.
    pub settings: GroupSettings,
}

/// An event leased to a consumer.
#[derive(Clone, Debug)]
pub struct GroupEvent {
    /// The event.
    pub event: RecordedEvent,
    /// Its delivery: 1 the first time.
    pub attempt: u32,
}

/// A parked event of a group.
#[derive(Clone, Debug)]
pub struct ParkedEvent {
    /// The event.
    pub event: RecordedEvent,
    /// How many times it was delivered.
    pub attempt: u32,
    /// Why it was parked (the last failure).
    pub reason: Option<String>,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
}

pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::InvalidArgument(format!("{what} {value} is too large")))
}

pub(crate) fn positions_arg(positions: &[u64]) -> Result<Vec<i64>> {
    positions.iter().map(|p| to_i64(*p, "position")).collect()
}

pub(crate) fn count(value: i32) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

pub(crate) fn group_event(row: &PgRow) -> Result<GroupEvent> {
    let attempt: i32 = row.try_get("attempt")?;
    Ok(GroupEvent {
        event: RecordedEvent::from_row(row)?,
        attempt: u32::try_from(attempt).unwrap_or_default(),
    })
}

impl EventStore {
    /// Creates a persistent subscription group; [`Error::GroupExists`] when the name is taken.
    pub async fn create_group(&self, group: &str, settings: &GroupSettings) -> Result<()> {
        let result = sqlx::query("SELECT eventstore.create_group($1, $2, $3, $4, $5, $6, $7)")
            .bind(group)
            .bind(&settings.categories)
            .bind(&settings.event_types)
            .bind(to_i64(settings.from_position, "from_position")?)
            .bind(i32::try_from(settings.max_attempts).unwrap_or(i32::MAX))
            .bind(settings.lease_timeout)
            .bind(settings.ordered_by_stream)
            .execute(self.pool())
            .await;
        result.map(|_| ()).map_err(on_group(group))
    }

    /// Deletes a group with its leases and parked events; [`Error::GroupNotFound`] when
    /// there is none.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        sqlx::query("SELECT eventstore.delete_group($1)")
            .bind(group)
            .execute(self.pool())
            .await
            .map_err(on_group(group))?;
        Ok(())
    }

    /// The groups with their position, in-flight, parked and lag counts, by name.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let rows = sqlx::query(
            "SELECT group_name, position, in_flight, parked, lag, consumers, categories, \
                    event_types, max_attempts, \
                    extract(epoch FROM lease_timeout)::float8 AS lease_seconds, \
                    ordered_by_stream, from_position, held_back \
             FROM eventstore.groups ORDER BY group_name",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let number = |column: &str| -> Result<u64> {
                    Ok(u64::try_from(row.try_get::<i64, _>(column)?).unwrap_or_default())
                };
                Ok(GroupInfo {
                    name: row.try_get("group_name")?,
                    position: number("position")?,
                    in_flight: number("in_flight")?,
                    parked: number("parked")?,
                    lag: number("lag")?,
                    consumers: number("consumers")?,
                    held_back: number("held_back")?,
                    settings: GroupSettings {
                        categories: row.try_get("categories")?,
                        event_types: row.try_get("event_types")?,
                        from_position: number("from_position")?,
                        max_attempts: count(row.try_get("max_attempts")?) as u32,
                        lease_timeout: Duration::from_secs_f64(row.try_get("lease_seconds")?),
                        ordered_by_stream: row.try_get("ordered_by_stream")?,
                    },
                })
            })
            .collect()
    }

    /// The parked events of `group`, in position order.
    pub async fn parked(&self, group: &str) -> Result<Vec<ParkedEvent>> {
        let rows = sqlx::query("SELECT * FROM eventstore.parked($1)")
            .bind(group)
            .fetch_all(self.pool())
            .await
            .map_err(on_group(group))?;
        rows.iter()
            .map(|row| {
                let GroupEvent { event, attempt } = group_event(row)?;
                Ok(ParkedEvent {
                    event,
                    attempt,
                    reason: row.try_get("reason")?,
                    parked_at: row.try_get("parked_at")?,
                })
            })
            .collect()
    }

    /// Returns parked events (all, or those at `positions`) to the group; returns how many.
    pub async fn replay_parked(&self, group: &str, positions: Option<&[u64]>) -> Result<u64> {
        self.parked_action("replay_parked", group, positions).await
    }

    /// Deletes parked events (all, or those at `positions`); returns how many.
    pub async fn drop_parked(&self, group: &str, positions: Option<&[u64]>) -> Result<u64> {
        self.parked_action("drop_parked", group, positions).await
    }

    async fn parked_action(
        &self,
        function: &str,
        group: &str,
        positions: Option<&[u64]>,
    ) -> Result<u64> {
        let positions = positions.map(positions_arg).transpose()?;
        let done: i32 = sqlx::query_scalar(&format!("SELECT eventstore.{function}($1, $2)"))
            .bind(group)
            .bind(positions)
            .fetch_one(self.pool())
            .await
            .map_err(on_group(group))?;
        Ok(count(done))
    }
}
