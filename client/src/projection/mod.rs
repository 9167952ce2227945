//! Projections: read-model tables kept current from the event log, exactly once.
//!
//! A [`Projection`] names itself, lists the event types it wants (the global log is filtered
//! on them in SQL) and applies a batch of events inside a transaction. The transaction also
//! moves the projection's checkpoint (`projections.checkpoints`), so each event's effect
//! lands exactly once whatever instant the process dies at.
//!
//! [`Daemon`] runs projections: each catches up in batches, then follows the log through
//! `LISTEN eventstore` wake-ups. Several daemons may run at once; a session advisory lock per
//! projection makes one of them its runner, and when that one dies, its lock goes with its
//! connection and another daemon takes over. [`rebuild`] empties a projection's tables and
//! replays the log from zero; [`replay`] builds the tables as they were at a position or a
//! time into a separate schema, leaving the live ones alone. [`status`] reports each one's
//! position, backlog, lag, owner and failure.

mod batch;
mod rebuild;
mod runner;
mod status;

use futures_util::future::BoxFuture;
use sqlx::{PgConnection, Row};

use crate::error::sqlx_is_transient;
use crate::{Error, RecordedEvent, Result};

pub use rebuild::{rebuild, replay, Progress, ReplayReport, ReplayUntil, REBUILD_BATCH_SIZE};
pub use runner::{Daemon, DaemonOptions};
pub use status::{status, ProjectionStats};

/// Why applying a batch failed: whatever the projection's code returns.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// A read model built from events.
///
/// Implementations must be deterministic: the tables after applying a sequence of events
/// depend on those events only (use [`RecordedEvent::recorded_at`], never the clock), so a
/// rebuild or a replay reproduces them.
pub trait Projection: Send + Sync + 'static {
    /// Stable name, the key of the checkpoint. Renaming it starts the projection from zero.
    fn name(&self) -> &str;

    /// The event types applied; the others are filtered out by the server.
    fn event_types(&self) -> Vec<String>;

    /// The schema of the live tables.
    fn schema(&self) -> &str;

    /// The tables in [`Projection::schema`] this projection owns: a rebuild empties them, a
    /// replay creates empty copies of them in its own schema.
    fn tables(&self) -> Vec<String>;

    /// Applies `events` (in global order, a batch of one or more) to the tables in `schema`
    /// (the live schema, or a replay's) within the transaction `tx`. An error rolls the
    /// batch back; the runner then applies the events one at a time to find the one that
    /// fails, and stops there.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, std::result::Result<(), ApplyError>>;

    /// Optional: the projection's rows held in memory across batches, so that a runner that
    /// is catching up (a daemon behind the log, a rebuild) folds many pages of events into
    /// them and writes each changed row once per write instead of once per batch. `None`
    /// (the default): every batch goes through [`Projection::apply`].
    ///
    /// Folding must have the same effect as applying: after folding events and writing,
    /// the tables must be what [`Projection::apply`] of the same events would have made.
    fn state(&self) -> Option<Box<dyn ProjectionState>> {
        None
    }
}

/// Where a [`ProjectionState`] finds the rows it does not hold.
pub enum Stored<'a> {
    /// In the tables, read through this connection (outside any transaction: only the
    /// projection's runner writes them, and all it wrote is committed, but for a write still
    /// in flight of rows the state holds).
    In(&'a mut PgConnection),
    /// Nowhere: the tables hold no row that the state does not hold (they were empty when
    /// the runner took the projection, or a rebuild emptied them, and the state has held
    /// every row written since).
    Held,
}

/// A projection's rows in memory, kept across batches by a runner that is catching up: see
/// [`Projection::state`].
///
/// The runner folds pages of events into it, then writes it, together with the checkpoint,
/// in one transaction; a failure at any point discards the state, and the events since the
/// last write are applied again through [`Projection::apply`], which also finds the event
/// that fails. So the state never needs to undo anything.
pub trait ProjectionState: Send {
    /// Applies `events` (in global order) to the rows held, reading the rows it needs and
    /// does not hold from `stored`. Writes nothing.
    fn fold<'a>(
        &'a mut self,
        stored: Stored<'a>,
        schema: &'a str,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, std::result::Result<(), ApplyError>>;

    /// Rows held, changed or not. A runner writes and then forgets them all once this
    /// passes its limit ([`crate::projection::DaemonOptions::state_rows`]).
    fn rows(&self) -> usize;

    /// Rows changed since the last write.
    fn changed(&self) -> usize;

    /// Writes the rows changed since the last write to the tables in `schema` within `tx`;
    /// afterwards they count as stored and unchanged.
    fn write<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), ApplyError>>;

    /// Optional: takes the rows changed since the last write out of the state, as a write
    /// of their own, after which they count as stored and unchanged, as after
    /// [`ProjectionState::write`]. A runner that is catching up then writes them on another
    /// connection while it folds the next pages into the state, instead of waiting for the
    /// write; it waits for one write before it starts the next, and discards the state when
    /// one fails. `None` (the default): the runner calls [`ProjectionState::write`] and waits.
    fn take_changes(&mut self) -> Option<Box<dyn StateChanges>> {
        None
    }
}

/// Rows taken out of a [`ProjectionState`] by [`ProjectionState::take_changes`], to be
/// written while the state folds on.
pub trait StateChanges: Send + 'static {
    /// Writes the rows to the tables in `schema` within `tx`.
    fn write<'a>(
        self: Box<Self>,
        tx: &'a mut PgConnection,
        schema: &'a str,
    ) -> BoxFuture<'a, std::result::Result<(), ApplyError>>;
}

/// The event a projection is stopped at, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProjectionFailure {
    /// The projection.
    pub projection: String,
    /// The event's global position.
    pub position: u64,
    /// Its stream.
    pub stream: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its type.
    pub event_type: String,
    /// Its id.
    pub event_id: uuid::Uuid,
    /// What applying it reported.
    pub message: String,
}

impl ProjectionFailure {
    /// `projection` failed to apply `event` with `error`.
    pub(crate) fn at(
        projection: &dyn Projection,
        event: &RecordedEvent,
        error: &ApplyError,
    ) -> Box<ProjectionFailure> {
        Box::new(ProjectionFailure {
            projection: projection.name().to_owned(),
            position: event.position,
            stream: event.stream.clone(),
            version: event.version,
            event_type: event.event_type.clone(),
            event_id: event.id,
            message: error.to_string(),
        })
    }
}

impl std::fmt::Display for ProjectionFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "projection {} stopped at position {} ({} {}@{}, id {}): {}",
            self.projection,
            self.position,
            self.event_type,
            self.stream,
            self.version,
            self.event_id,
            self.message
        )
    }
}

/// `name` as a quoted SQL identifier, for the schema a projection's [`Projection::apply`]
/// is given (a replay's schema is the user's choice).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The projection's tables ([`Projection::tables`]), each qualified with its schema and
/// quoted.
pub(crate) fn qualified_tables(projection: &dyn Projection) -> Vec<String> {
    let schema = quote_ident(projection.schema());
    projection
        .tables()
        .iter()
        .map(|table| format!("{schema}.{}", quote_ident(table)))
        .collect()
}

/// A transient database error inside an [`ApplyError`] (a lost connection, a conflict):
/// the batch is retried, not blamed on an event.
pub(crate) fn transient(error: &ApplyError) -> bool {
    if let Some(error) = error.downcast_ref::<Error>() {
        return error.is_transient();
    }
    if let Some(error) = error.downcast_ref::<sqlx::Error>() {
        return sqlx_is_transient(error);
    }
    false
}

/// Creates the checkpoint row of `name` if it is missing.
pub(crate) async fn ensure_checkpoint(connection: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("INSERT INTO projections.checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(connection)
        .await?;
    Ok(())
}

/// The advisory lock key that makes one session the runner of projection `name`.
pub(crate) const LOCK_KEY_SQL: &str = "hashtextextended('pg_eventstore projection ' || $1, 0)";

pub(crate) fn to_i64(position: u64) -> i64 {
    i64::try_from(position).expect("positions come from bigint columns")
}

pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

/// The failure recorded in a checkpoint row, if any.
pub(crate) fn failure_of(
    name: &str,
    row: &sqlx::postgres::PgRow,
) -> Result<Option<ProjectionFailure>> {
    let position: Option<i64> = row.try_get("failed_position")?;
    let Some(position) = position else {
        return Ok(None);
    };
    let version: Option<i64> = row.try_get("failed_version")?;
    Ok(Some(ProjectionFailure {
        projection: name.to_owned(),
        position: to_u64(position),
        stream: row
            .try_get::<Option<String>, _>("failed_stream")?
            .unwrap_or_default(),
        version: version.map_or(0, to_u64),
        event_type: row
            .try_get::<Option<String>, _>("failed_type")?
            .unwrap_or_default(),
        event_id: row
            .try_get::<Option<uuid::Uuid>, _>("failed_event_id")?
            .unwrap_or_default(),
        message: row
            .try_get::<Option<String>, _>("error")?
            .unwrap_or_default(),
    }))
}
