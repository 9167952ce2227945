//! A consumer's calls on a group: fetch leases events, ack / nack / park settle them. Each
//! has an `*_in` form on the caller's connection or transaction, so a handler's writes and
//! its ack commit together: exactly-once effects for competing consumers.

use std::time::Duration;

use sqlx::PgExecutor;

use super::{count, group_event, positions_arg, GroupEvent};
use crate::error::on_group;
use crate::{EventStore, Result};

impl EventStore {
    /// Leases up to `max_count` events of `group` to `consumer` (`eventstore.fetch`). Here
    /// and in the other group calls, a missing group is [`crate::Error::GroupNotFound`].
    pub async fn fetch(
        &self,
        group: &str,
        consumer: &str,
        max_count: u32,
    ) -> Result<Vec<GroupEvent>> {
        Self::fetch_in(self.pool(), group, consumer, max_count).await
    }

    /// [`EventStore::fetch`] on `executor`: the pool, a connection or a transaction.
    pub async fn fetch_in<'e>(
        executor: impl PgExecutor<'e>,
        group: &str,
        consumer: &str,
        max_count: u32,
    ) -> Result<Vec<GroupEvent>> {
        let rows = sqlx::query("SELECT * FROM eventstore.fetch($1, $2, $3)")
            .bind(group)
            .bind(consumer)
            .bind(i32::try_from(max_count).unwrap_or(i32::MAX))
            .fetch_all(executor)
            .await
            .map_err(on_group(group))?;
        rows.iter().map(group_event).collect()
    }

    /// [`EventStore::fetch`] for [`crate::GroupConsumer`]'s workers, whose fetch is a
    /// statement of its own: its commit does not wait for the WAL flush
    /// (`synchronous_commit = off` for that transaction alone). A fetch lost in a server
    /// crash loses only its leases, and those events are delivered again, as they would be
    /// after the lease ran out; the acks stay durable. The group's row stays locked until
    /// the fetch commits, so the next consumer's fetch no longer waits for that flush too.
    pub(crate) async fn fetch_unflushed(
        &self,
        group: &str,
        consumer: &str,
        max_count: u32,
    ) -> Result<Vec<GroupEvent>> {
        let rows = sqlx::query(
            "SELECT f.* FROM eventstore.fetch($1, $2, $3) AS f \
             WHERE (SELECT pg_catalog.set_config('synchronous_commit', 'off', true)) = 'off'",
        )
        .bind(group)
        .bind(consumer)
        .bind(i32::try_from(max_count).unwrap_or(i32::MAX))
        .fetch_all(self.pool())
        .await
        .map_err(on_group(group))?;
        rows.iter().map(group_event).collect()
    }

    /// Acks events `consumer` holds; returns how many were acked (a lease that ran out and
    /// went to another consumer is not).
    pub async fn ack(&self, group: &str, consumer: &str, positions: &[u64]) -> Result<u64> {
        Self::ack_in(self.pool(), group, consumer, positions).await
    }

    /// [`EventStore::ack`] on `executor`. In the transaction that holds a handler's own
    /// writes, the ack commits with them: when it returns fewer events than were handled,
    /// some lease ran out and went to another consumer, and the handler rolls the
    /// transaction back, so each event's effect lands exactly once.
    pub async fn ack_in<'e>(
        executor: impl PgExecutor<'e>,
        group: &str,
        consumer: &str,
        positions: &[u64],
    ) -> Result<u64> {
        let acked: i32 = sqlx::query_scalar("SELECT eventstore.ack($1, $2, $3)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .fetch_one(executor)
            .await
            .map_err(on_group(group))?;
        Ok(count(acked))
    }

    /// Gives events back for a retry after `retry_after`; returns how many. Events out of
    /// attempts are parked with `reason`.
    pub async fn nack(
        &self,
        group: &str,
        consumer: &str,
        positions: &[u64],
        retry_after: Duration,
        reason: &str,
    ) -> Result<u64> {
        Self::nack_in(self.pool(), group, consumer, positions, retry_after, reason).await
    }

    /// [`EventStore::nack`] on `executor`.
    pub async fn nack_in<'e>(
        executor: impl PgExecutor<'e>,
        group: &str,
        consumer: &str,
        positions: &[u64],
        retry_after: Duration,
        reason: &str,
    ) -> Result<u64> {
        let nacked: i32 = sqlx::query_scalar("SELECT eventstore.nack($1, $2, $3, $4, $5)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .bind(retry_after)
            .bind(reason)
            .fetch_one(executor)
            .await
            .map_err(on_group(group))?;
        Ok(count(nacked))
    }

    /// Parks events at once with `reason`; returns how many.
    pub async fn park(
        &self,
        group: &str,
        consumer: &str,
        positions: &[u64],
        reason: &str,
    ) -> Result<u64> {
        Self::park_in(self.pool(), group, consumer, positions, reason).await
    }

    /// [`EventStore::park`] on `executor`.
    pub async fn park_in<'e>(
        executor: impl PgExecutor<'e>,
        group: &str,
        consumer: &str,
        positions: &[u64],
        reason: &str,
    ) -> Result<u64> {
        let parked: i32 = sqlx::query_scalar("SELECT eventstore.park($1, $2, $3, $4)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .bind(reason)
            .fetch_one(executor)
            .await
            .map_err(on_group(group))?;
        Ok(count(parked))
    }
}
