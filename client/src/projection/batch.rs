//! Applying a batch, and when it fails, finding the event that fails: one policy for the
//! daemon (one transaction per attempt, checkpoint included) and for replays (savepoints in
//! the replay's transaction).

use super::{transient, ApplyError, Projection, ProjectionFailure};
use crate::{RecordedEvent, Result};

/// How one attempt at applying events went.
pub(crate) enum Attempt {
    /// Applied (and, for the daemon, the checkpoint moved).
    Applied,
    /// Someone else moved the checkpoint (a rebuild reset it): nothing applied; here it is.
    Moved(u64),
    /// The projection's code failed; nothing of this attempt was applied.
    Failed(ApplyError),
}

/// Where a batch is applied: each attempt applies `events` and moves the applied point to
/// `through`, all or nothing. The outer error is the database's (the connection).
pub(crate) trait BatchTarget {
    async fn attempt(&mut self, events: &[RecordedEvent], through: u64) -> Result<Attempt>;
}

/// What applying a batch came to.
pub(crate) enum Applied {
    /// Everything applied through the batch's end.
    Done,
    /// The checkpoint was moved by someone else; nothing applied.
    Moved(u64),
    /// The events before `failure` were applied; the projection stops there.
    Failed(Box<ProjectionFailure>),
    /// A transient error (lost connection, conflict): nothing more applied, try again.
    Retry(ApplyError),
}

/// Applies `events` through `through` in one attempt; when that fails for a reason of the
/// projection's, applies them one at a time to find the one that fails.
pub(crate) async fn apply_or_locate(
    target: &mut impl BatchTarget,
    projection: &dyn Projection,
    events: &[RecordedEvent],
    through: u64,
) -> Result<Applied> {
    let error = match target.attempt(events, through).await? {
        Attempt::Applied => return Ok(Applied::Done),
        Attempt::Moved(position) => return Ok(Applied::Moved(position)),
        Attempt::Failed(error) if transient(&error) => return Ok(Applied::Retry(error)),
        Attempt::Failed(error) => error,
    };
    if let [event] = events {
        return Ok(Applied::Failed(ProjectionFailure::at(
            projection, event, &error,
        )));
    }
    tracing::warn!(projection = %projection.name(), %error, events = events.len(), "a batch failed; applying its events one at a time to find the one that fails");
    for event in events {
        match target
            .attempt(std::slice::from_ref(event), event.position)
            .await?
        {
            Attempt::Applied => {}
            Attempt::Moved(position) => return Ok(Applied::Moved(position)),
            Attempt::Failed(error) if transient(&error) => return Ok(Applied::Retry(error)),
            Attempt::Failed(error) => {
                return Ok(Applied::Failed(ProjectionFailure::at(
                    projection, event, &error,
                )))
            }
        }
    }
    // Each event applied on its own: the batch failed for a reason of its own (a deadlock,
    // say). Move the applied point the rest of the way.
    Ok(match target.attempt(&[], through).await? {
        Attempt::Applied => Applied::Done,
        Attempt::Moved(position) => Applied::Moved(position),
        Attempt::Failed(error) => Applied::Retry(error),
    })
}
