//! The coalescing notifier: wake-ups for the portable form, which has no background worker.
//!
//! The extension wakes subscribers from a background worker that sends at most one
//! `NOTIFY eventstore, '<head>'` per few milliseconds. The portable form cannot start one, and
//! its appends do not notify (a NOTIFY per transaction serializes every notifying commit), so
//! `eventstore.wakeup_mode()` is `notifier` there: a client process polls the readable head
//! every interval and sends one `NOTIFY eventstore, '<head>'` when it moved, the same channel
//! and payload as the worker's. `eventstore notify` runs it alone; `eventstore run` runs it
//! beside the projections.
//!
//! Any number may run: they hold a session advisory lock ([`NOTIFIER_LOCK`]) on one
//! connection each, and only the holder notifies. The others try again every second, so one
//! of them takes over within about a second after the holder's connection ends.
//!
//! Subscribers also poll on their own timer, so nothing is lost while no notifier runs: they
//! see new events after at most their poll interval instead of a few milliseconds.

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgConnection;

use crate::{EventStore, Result};

/// The key of the session advisory lock that the notifier of a database holds
/// (`pg_advisory_lock(bigint)`, in pg_locks with objid 1163087439 and objsubid 1): "ESNO".
pub const NOTIFIER_LOCK: i64 = 0x4553_4e4f;

/// How often the notifier reads the head, unless told otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(5);

/// How long a notifier that does not hold the lock waits before trying again, and how long
/// one waits after losing its connection.
const STANDBY_RETRY: Duration = Duration::from_secs(1);

/// Whether this database's wake-ups need the notifier: true for the portable form
/// (`wakeup_mode()` is `notifier`), false where the extension sends them itself.
pub async fn needed(store: &EventStore) -> Result<bool> {
    let mode: String = sqlx::query_scalar("SELECT eventstore.wakeup_mode()")
        .fetch_one(store.pool())
        .await?;
    Ok(mode == "notifier")
}

/// Runs the notifier of `store`'s database until `shutdown` completes: waits for the
/// notifier lock, then polls the head every `interval` and sends `NOTIFY eventstore,
/// '<head>'` when it moved. Connection failures are logged and retried; it returns only when
/// shut down.
pub async fn run(store: &EventStore, interval: Duration, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            outcome = notify_while_holding(store, interval) => {
                if let Err(error) = outcome {
                    tracing::warn!(%error, "the notifier lost its connection; reconnecting");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(STANDBY_RETRY) => {}
        }
    }
}

/// Takes the lock on a connection of its own (waiting while another notifier holds it) and
/// notifies until the connection fails.
async fn notify_while_holding(store: &EventStore, interval: Duration) -> Result<()> {
    let mut connection = store.pool().acquire().await?.detach();
    let mut waiting_logged = false;
    while !try_lock(&mut connection).await? {
        if !waiting_logged {
            tracing::info!("another notifier holds this database's notifier lock; standing by");
            waiting_logged = true;
        }
        tokio::time::sleep(STANDBY_RETRY).await;
    }
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "notifier started"
    );
    // The first poll notifies whatever is readable (the head of an empty log is 0):
    // subscribers that were waiting for events committed while no notifier ran re-read now.
    let mut notified: i64 = 0;
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let head: i64 = sqlx::query_scalar("SELECT eventstore.head_position()")
            .fetch_one(&mut connection)
            .await?;
        if head > notified {
            sqlx::query("SELECT pg_notify('eventstore', $1)")
                .bind(head.to_string())
                .execute(&mut connection)
                .await?;
            tracing::trace!(head, "notified");
            notified = head;
        }
    }
}

async fn try_lock(connection: &mut PgConnection) -> Result<bool> {
    Ok(sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(NOTIFIER_LOCK)
        .fetch_one(connection)
        .await?)
}
