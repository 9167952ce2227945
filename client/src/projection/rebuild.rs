//! Operating projections: rebuild from zero, replay to a point into another schema.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Row};

use super::batch::{apply_or_locate, Applied, Attempt, BatchTarget};
use super::runner::{runner_connection, try_lock, Runner, Step};
use super::DaemonOptions;
use super::{
    ensure_checkpoint, failure_of, qualified_tables, quote_ident, to_i64, to_u64, ApplyError,
    Projection,
};
use crate::read::{check_page_size, read_all_with_head};
use crate::{Error, EventStore, RecordedEvent, Result};

/// How far a rebuild or replay has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Events applied so far.
    pub done: u64,
    /// Events to apply in all (counted when it started).
    pub total: u64,
    /// The global position reached.
    pub position: u64,
}

/// Events a rebuild applies per transaction unless told otherwise (`eventstore rebuild
/// --batch-size`, and the stream browser's Rebuild button).
pub const REBUILD_BATCH_SIZE: u32 = 5_000;

/// How often a rebuild that a daemon carries out looks at its checkpoint.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Empties the projection's tables and applies the log from zero, reporting progress.
/// Returns the number of events applied.
///
/// When no daemon runs the projection, the rebuild applies the events itself, up to the head
/// of the log when it started, holding the projection's lock meanwhile (a daemon started in
/// between waits, then continues from there). When a daemon runs it, the rebuild resets its
/// tables and checkpoint in one transaction (the daemon's batch in flight is rolled back by
/// its checkpoint check), and follows the daemon's progress until it is past that head.
pub async fn rebuild(
    store: &EventStore,
    projection: &dyn Projection,
    batch_size: u32,
    mut progress: impl FnMut(Progress),
) -> Result<u64> {
    check_page_size(batch_size)?;
    let name = projection.name();
    let mut connection = runner_connection(store, name).await?;
    ensure_checkpoint(&mut connection, name).await?;
    let owner = try_lock(&mut connection, name).await?;
    let target = head(&mut connection).await?;
    let total = count_events(&mut connection, &projection.event_types(), 0, target).await?;
    reset(&mut connection, projection).await?;
    tracing::info!(projection = %name, events = total, through = target, runner = if owner { "this process" } else { "a daemon" }, "rebuilding");
    progress(Progress {
        done: 0,
        total,
        position: 0,
    });
    let done = if owner {
        let options = DaemonOptions::default().batch_size(batch_size);
        let mut runner =
            Runner::start(&mut connection, store.pool().clone(), projection, &options).await?;
        // The reset just emptied the tables, and this session holds the lock: a state
        // folded from here holds every row there is.
        runner.emptied = true;
        runner.rebuilding = true;
        loop {
            match runner.step(Some(target)).await? {
                Step::Applied { .. } | Step::Idle | Step::Moved => {}
                Step::Failed(failure) => return Err(Error::Projection(failure)),
                Step::Retry(error) => {
                    tracing::warn!(projection = %name, %error, "batch failed for a transient reason; retrying");
                    tokio::time::sleep(WATCH_EVERY).await;
                }
            }
            progress(Progress {
                done: runner.applied + runner.pending(),
                total,
                position: runner.stored,
            });
            if runner.stored >= target {
                break;
            }
        }
        runner.applied
    } else {
        loop {
            tokio::time::sleep(WATCH_EVERY).await;
            let row = sqlx::query(
                "SELECT position, events_applied, failed_position, failed_stream, \
                        failed_version, failed_type, failed_event_id, error \
                 FROM projections.checkpoints WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&mut connection)
            .await?;
            let position = to_u64(row.try_get("position")?);
            let done = to_u64(row.try_get("events_applied")?);
            progress(Progress {
                done,
                total,
                position,
            });
            if let Some(failure) = failure_of(name, &row)? {
                return Err(Error::Projection(Box::new(failure)));
            }
            if position >= target {
                break done;
            }
        }
    };
    let _ = connection.close().await;
    Ok(done)
}

/// Empties the projection's tables and sets its checkpoint to zero, in one transaction.
async fn reset(connection: &mut PgConnection, projection: &dyn Projection) -> Result<()> {
    let tables = qualified_tables(projection).join(", ");
    let mut tx = connection.begin().await?;
    // Tables first: TRUNCATE waits for a daemon's batch in flight, whose checkpoint update
    // then precedes (and loses to) this one.
    if !tables.is_empty() {
        sqlx::query(&format!("TRUNCATE {tables}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE projections.checkpoints \
         SET position = 0, events_applied = 0, updated_at = now(), failed_position = NULL, \
             failed_stream = NULL, failed_version = NULL, failed_type = NULL, \
             failed_event_id = NULL, error = NULL, failed_at = NULL, failures = 0 \
         WHERE name = $1",
    )
    .bind(projection.name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    // Wake a daemon that runs the projection, so it notices the reset now.
    sqlx::query("SELECT pg_notify('eventstore', '')")
        .execute(connection)
        .await?;
    Ok(())
}

/// The point a replay stops at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayUntil {
    /// Through this global position.
    Position(u64),
    /// Through the last event, in global order, recorded at or before this time.
    Time(DateTime<Utc>),
}

/// What a replay built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// The schema holding the tables.
    pub schema: String,
    /// The global position they reflect: every event through it was applied.
    pub position: u64,
    /// Events applied.
    pub events: u64,
}

/// Builds the projection's tables into `schema` as they were at `until`: creates the schema
/// and empty copies of the tables (`LIKE ... INCLUDING ALL`), then applies the log from zero
/// through that point, one transaction per batch (a long transaction would hold back every
/// reader of the global log in the cluster). The schema's comment says whether the replay is
/// complete; a replay that fails drops its schema. The live tables and the checkpoint are not
/// touched.
///
/// An existing schema is an error unless `replace` is set, which drops it first. A position
/// past the head of the log stops at the head (the report says where).
pub async fn replay(
    store: &EventStore,
    projection: &dyn Projection,
    schema: &str,
    until: ReplayUntil,
    replace: bool,
    batch_size: u32,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport> {
    check_page_size(batch_size)?;
    if schema.is_empty() || schema.starts_with("pg_") || schema == "eventstore" {
        return Err(Error::InvalidArgument(format!(
            "cannot replay into schema {schema:?}"
        )));
    }
    if schema == projection.schema() {
        return Err(Error::InvalidArgument(format!(
            "schema {schema:?} holds the live tables of projection {}; replay into another one",
            projection.name()
        )));
    }
    let mut connection = runner_connection(store, &format!("{} replay", projection.name())).await?;
    let head = head(&mut connection).await?;
    let through = match until {
        ReplayUntil::Position(position) => position.min(head),
        ReplayUntil::Time(time) => {
            let position: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(position), 0) FROM eventstore.events \
                 WHERE recorded_at <= $1 AND position <= $2",
            )
            .bind(time)
            .bind(to_i64(head))
            .fetch_one(&mut connection)
            .await?;
            to_u64(position)
        }
    };
    let types = projection.event_types();
    let total = count_events(&mut connection, &types, 0, through).await?;
    let target = quote_ident(schema);
    let mut tx = connection.begin().await?;
    if replace {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {target} CASCADE"))
            .execute(&mut *tx)
            .await?;
    }
    if let Err(error) = sqlx::query(&format!("CREATE SCHEMA {target}"))
        .execute(&mut *tx)
        .await
    {
        if error
            .as_database_error()
            .and_then(|db| db.code())
            .as_deref()
            == Some("42P06")
        {
            return Err(Error::InvalidArgument(format!(
                "schema {schema:?} exists; drop it or replay with replace"
            )));
        }
        return Err(error.into());
    }
    for table in projection.tables() {
        sqlx::query(&format!(
            "CREATE TABLE {target}.{table} (LIKE {live}.{table} INCLUDING ALL)",
            table = quote_ident(&table),
            live = quote_ident(projection.schema()),
        ))
        .execute(&mut *tx)
        .await?;
    }
    comment_schema(
        &mut tx,
        &target,
        &format!(
            "incomplete replay of projection {} through global position {through}",
            projection.name()
        ),
    )
    .await?;
    tx.commit().await?;
    // One transaction per batch: a transaction that holds a transaction id holds back every
    // reader of the global log in the cluster while it runs, so none may last long.
    let replayed = replay_batches(
        &mut connection,
        projection,
        schema,
        through,
        batch_size,
        |done, position| {
            progress(Progress {
                done,
                total,
                position,
            })
        },
    )
    .await;
    let done = match replayed {
        Ok(done) => done,
        Err(error) => {
            // Leave no half-built schema behind (best effort: the connection may be gone).
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {target} CASCADE"))
                .execute(&mut connection)
                .await;
            return Err(error);
        }
    };
    comment_schema(
        &mut connection,
        &target,
        &format!(
            "replay of projection {} through global position {through} ({done} events)",
            projection.name()
        ),
    )
    .await?;
    let _ = connection.close().await;
    Ok(ReplayReport {
        schema: schema.to_owned(),
        position: through,
        events: done,
    })
}

async fn comment_schema(connection: &mut PgConnection, schema: &str, text: &str) -> Result<()> {
    sqlx::query(&format!(
        "COMMENT ON SCHEMA {schema} IS {}",
        quote_literal(text)
    ))
    .execute(connection)
    .await?;
    Ok(())
}

/// Applies the projection's events through `through` to the tables in `schema`, a batch per
/// transaction; returns how many.
async fn replay_batches(
    connection: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    through: u64,
    batch_size: u32,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64> {
    let types = projection.event_types();
    let mut after = 0;
    let mut done = 0;
    progress(done, after);
    while after < through {
        let (mut events, _) =
            read_all_with_head(&mut *connection, after, batch_size, Some(&types), None).await?;
        let full = events.len() == batch_size as usize;
        events.retain(|event| event.position <= through);
        if let Some(last) = events.last() {
            after = last.position;
        }
        if !events.is_empty() {
            let mut tx = connection.begin().await?;
            let mut target = Savepoints {
                tx: &mut tx,
                projection,
                schema,
            };
            match apply_or_locate(&mut target, projection, &events, after).await? {
                Applied::Done => {}
                Applied::Failed(failure) => return Err(Error::Projection(failure)),
                Applied::Retry(error) => return Err(apply_error(error)),
                Applied::Moved(_) => unreachable!("a replay has no checkpoint to move"),
            }
            tx.commit().await?;
            done += events.len() as u64;
        }
        if !full || events.len() < batch_size as usize {
            after = through;
        }
        progress(done, after);
    }
    Ok(done)
}

/// A replay's attempts: each under a savepoint of the replay's transaction, into `schema`.
struct Savepoints<'c> {
    tx: &'c mut PgConnection,
    projection: &'c dyn Projection,
    schema: &'c str,
}

impl BatchTarget for Savepoints<'_> {
    async fn attempt(&mut self, events: &[RecordedEvent], _through: u64) -> Result<Attempt> {
        if events.is_empty() {
            return Ok(Attempt::Applied);
        }
        let mut savepoint = self.tx.begin().await?;
        match self
            .projection
            .apply(&mut savepoint, self.schema, events)
            .await
        {
            Ok(()) => {
                savepoint.commit().await?;
                Ok(Attempt::Applied)
            }
            Err(error) => {
                savepoint.rollback().await?;
                Ok(Attempt::Failed(error))
            }
        }
    }
}

/// A transient failure inside a projection's code, as the client's error.
fn apply_error(error: ApplyError) -> Error {
    match error.downcast::<Error>() {
        Ok(error) => *error,
        Err(error) => match error.downcast::<sqlx::Error>() {
            Ok(error) => Error::from(*error),
            Err(error) => Error::Application(error),
        },
    }
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

async fn head(connection: &mut PgConnection) -> Result<u64> {
    let head: i64 = sqlx::query_scalar("SELECT eventstore.head_position()")
        .fetch_one(connection)
        .await?;
    Ok(to_u64(head))
}

/// Events of `types` in `(after, through]`.
async fn count_events(
    connection: &mut PgConnection,
    types: &[String],
    after: u64,
    through: u64,
) -> Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events \
         WHERE type = ANY($1) AND position > $2 AND position <= $3",
    )
    .bind(types)
    .bind(to_i64(after))
    .bind(to_i64(through))
    .fetch_one(connection)
    .await?;
    Ok(to_u64(count))
}
