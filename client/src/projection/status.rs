//! Where each projection is: checkpoint, backlog, owner and failure.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{failure_of, to_i64, to_u64, Projection, ProjectionFailure, LOCK_KEY_SQL};
use crate::{EventStore, Result};

/// One projection's checkpoint and health.
#[derive(Clone, Debug)]
pub struct ProjectionStats {
    /// Its name.
    pub name: String,
    /// Its checkpoint: every event through this position is applied.
    pub position: u64,
    /// Events applied since it last started from zero.
    pub events_applied: u64,
    /// Events after the checkpoint it has still to apply (of its types, when the projection
    /// was passed to [`status`]; of any type otherwise).
    pub events_behind: u64,
    /// How long ago the oldest of those was recorded (zero when there is none).
    pub lag: Duration,
    /// The daemon running it now (`None` when no session holds its lock).
    pub owner: Option<String>,
    /// When its checkpoint last moved.
    pub updated_at: DateTime<Utc>,
    /// The event it is stopped at, if any.
    pub failure: Option<ProjectionFailure>,
    /// How many times in a row that event failed.
    pub failures: i32,
}

/// Every projection with a checkpoint in this database, by name. `known` supplies the event
/// types of the projections this program runs, so their backlog counts only the events they
/// apply (the backlog of the others counts every event).
pub async fn status(store: &EventStore, known: &[&dyn Projection]) -> Result<Vec<ProjectionStats>> {
    let mut connection = store.pool().acquire().await?;
    let checkpoints = sqlx::query(&format!(
        "SELECT name, position, events_applied, updated_at, failures, failed_position, \
                    failed_stream, failed_version, failed_type, failed_event_id, error, \
                    CASE WHEN EXISTS ( \
                        SELECT FROM pg_locks AS l \
                        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                          AND l.database = (SELECT oid FROM pg_database \
                                            WHERE datname = current_database()) \
                          AND (l.classid::int8 << 32 | l.objid::int8) = {key}) \
                    THEN owner END AS owner \
             FROM projections.checkpoints ORDER BY name",
        key = LOCK_KEY_SQL.replace("$1", "name")
    ))
    .fetch_all(&mut *connection)
    .await?;
    let mut projection_stats = Vec::with_capacity(checkpoints.len());
    for row in &checkpoints {
        let name: String = row.try_get("name")?;
        let position = to_u64(row.try_get("position")?);
        let types = known
            .iter()
            .find(|p| p.name() == name)
            .map(|p| p.event_types());
        let behind = sqlx::query(
            "SELECT count(*) AS behind, \
                    extract(epoch FROM clock_timestamp() - min(recorded_at))::float8 AS lag \
             FROM eventstore.events \
             WHERE position > $1 AND position <= eventstore.head_position() \
               AND ($2::text[] IS NULL OR type = ANY($2))",
        )
        .bind(to_i64(position))
        .bind(types)
        .fetch_one(&mut *connection)
        .await?;
        let lag: Option<f64> = behind.try_get("lag")?;
        projection_stats.push(ProjectionStats {
            failure: failure_of(&name, row)?,
            position,
            events_applied: to_u64(row.try_get("events_applied")?),
            events_behind: to_u64(behind.try_get("behind")?),
            lag: Duration::from_secs_f64(lag.unwrap_or_default().max(0.0)),
            owner: row.try_get("owner")?,
            updated_at: row.try_get("updated_at")?,
            failures: row.try_get("failures")?,
            name,
        });
    }
    Ok(projection_stats)
}
