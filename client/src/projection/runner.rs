//! The projection daemon: one runner per projection across all daemons, catch-up in
//! batches, then live through wake-ups; failures stop a projection at the event, visibly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::watch;

use super::batch::{apply_or_locate, Applied, Attempt, BatchTarget};
use super::{ensure_checkpoint, to_i64, ApplyError, Projection, ProjectionFailure, LOCK_KEY_SQL};
use crate::read::{check_page_size, read_all_with_head};
use crate::retry::{sleep_or_stop, wait_for_events, Backoff};
use crate::subscription::Hint;
use crate::{Error, EventStore, RecordedEvent, Result};

/// How often a runner with nothing to apply still writes its checkpoint forward over events
/// of other types, so a restart does not scan them again.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait between retries of an event that fails.
const LAST_FAILURE_RETRY: Duration = Duration::from_secs(60);
/// How often a catching-up runner logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How a [`Daemon`] runs its projections.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub(crate) batch_size: u32,
    pub(crate) takeover_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) owner: String,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            batch_size: 5_000,
            takeover_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(5),
            owner: crate::process_name(),
        }
    }
}

impl DaemonOptions {
    /// Events applied per transaction, 1 to 100,000. Default: 5,000.
    #[must_use]
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How often a daemon that does not run a projection checks whether its runner is
    /// gone, and takes over. Default: 2 seconds.
    #[must_use]
    pub fn takeover_interval(mut self, interval: Duration) -> Self {
        self.takeover_interval = interval;
        self
    }

    /// How often a runner re-reads the log without a wake-up. Default: 1 second.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a projection stopped at a failing event waits before trying it again; the
    /// wait doubles after each failure, up to a minute. Default: 5 seconds.
    #[must_use]
    pub fn retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval;
        self
    }

    /// The name this daemon records as the owner of the projections it runs. Default:
    /// `hostname:pid`.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }
}

/// Runs projections until shut down. See the [module documentation](super).
pub struct Daemon {
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    options: DaemonOptions,
}

impl Daemon {
    /// A daemon without projections yet.
    pub fn new(store: EventStore, options: DaemonOptions) -> Self {
        Daemon {
            store,
            projections: Vec::new(),
            options,
        }
    }

    /// Adds a projection to run.
    #[must_use]
    pub fn with(mut self, projection: impl Projection) -> Self {
        self.projections.push(Arc::new(projection));
        self
    }

    /// Adds a shared projection to run.
    #[must_use]
    pub fn with_shared(mut self, projection: Arc<dyn Projection>) -> Self {
        self.projections.push(projection);
        self
    }

    /// Runs every projection until `shutdown` completes, then lets each finish the batch in
    /// hand, writes its checkpoint and releases it to other daemons.
    ///
    /// Fails at once if the checkpoint table is missing (run the migrations first) or two
    /// projections share a name; later errors (lost connections, a failing event) are
    /// logged and retried, never fatal.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        check_page_size(self.options.batch_size)?;
        let mut names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(Error::InvalidArgument(format!(
                "two projections are named {:?}",
                pair[0]
            )));
        }
        {
            let mut connection = self.store.pool().acquire().await?;
            for projection in &self.projections {
                ensure_checkpoint(&mut connection, projection.name()).await?;
            }
        }
        let (stop, stopping) = watch::channel(false);
        let tasks: Vec<_> = self
            .projections
            .iter()
            .map(|projection| {
                tokio::spawn(supervise(
                    self.store.clone(),
                    Arc::clone(projection),
                    self.options.clone(),
                    stopping.clone(),
                ))
            })
            .collect();
        shutdown.await;
        tracing::info!("stopping: finishing the batches in hand");
        let _ = stop.send(true);
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a projection runner panicked");
            }
        }
        Ok(())
    }
}

/// What ended a turn as a projection's (would-be) runner.
enum Turn {
    Stopped,
    NotOwner,
}

/// Keeps trying to be the runner of `projection` until the daemon stops.
async fn supervise(
    store: EventStore,
    projection: Arc<dyn Projection>,
    options: DaemonOptions,
    mut stop: watch::Receiver<bool>,
) {
    let name = projection.name().to_owned();
    let mut backoff = Backoff::TRANSIENT;
    let mut waiting_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let wait = match take_turn(&store, &*projection, &options, &mut stop).await {
            Ok(Turn::Stopped) => return,
            Ok(Turn::NotOwner) => {
                if !waiting_logged {
                    tracing::info!(projection = %name, "another daemon runs this projection; standing by");
                    waiting_logged = true;
                }
                backoff.reset();
                options.takeover_interval
            }
            Err(error) => {
                let wait = backoff.next_wait();
                tracing::warn!(projection = %name, %error, ?wait, "projection runner failed; retrying");
                waiting_logged = false;
                wait
            }
        };
        if sleep_or_stop(wait, &mut stop).await {
            return;
        }
    }
}

/// A connection of its own for a projection's runner: the advisory lock lives as long as
/// this session, and the runner's transactions run on it, so a runner that loses its
/// connection loses its lock and its transaction in flight at once.
pub(crate) async fn runner_connection(store: &EventStore, name: &str) -> Result<PgConnection> {
    let options = store
        .pool()
        .connect_options()
        .as_ref()
        .clone()
        .application_name(&format!("eventstore projection {name}"));
    Ok(options.connect().await?)
}

/// Takes the projection's lock if free, and runs it until stopped.
async fn take_turn(
    store: &EventStore,
    projection: &dyn Projection,
    options: &DaemonOptions,
    stop: &mut watch::Receiver<bool>,
) -> Result<Turn> {
    let name = projection.name();
    let mut connection = runner_connection(store, name).await?;
    if !try_lock(&mut connection, name).await? {
        let _ = connection.close().await;
        return Ok(Turn::NotOwner);
    }
    sqlx::query(
        "UPDATE projections.checkpoints SET owner = $2, owner_since = now() WHERE name = $1",
    )
    .bind(name)
    .bind(&options.owner)
    .execute(&mut connection)
    .await?;
    let mut runner = Runner::start(&mut connection, projection, options.batch_size).await?;
    tracing::info!(projection = %name, owner = %options.owner, position = runner.stored, "running projection");
    let listener = store.listener();
    let mut hints = listener.hints.clone();
    runner.follow(&mut hints, options, stop).await?;
    runner.flush().await?;
    sqlx::query("UPDATE projections.checkpoints SET owner = NULL WHERE name = $1 AND owner = $2")
        .bind(name)
        .bind(&options.owner)
        .execute(&mut connection)
        .await?;
    tracing::info!(projection = %name, "projection stopped");
    let _ = connection.close().await;
    Ok(Turn::Stopped)
}

/// `pg_try_advisory_lock` on the projection's key, for this session.
pub(crate) async fn try_lock(connection: &mut PgConnection, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar(&format!("SELECT pg_try_advisory_lock({LOCK_KEY_SQL})"))
            .bind(name)
            .fetch_one(connection)
            .await?,
    )
}

/// A projection's runner, holding its lock on `connection`.
pub(crate) struct Runner<'a> {
    connection: &'a mut PgConnection,
    projection: &'a dyn Projection,
    types: Vec<String>,
    batch_size: u32,
    /// The checkpoint as stored.
    pub(crate) stored: u64,
    /// Where the next read starts: at or past `stored` (past it over events of other types
    /// not written back yet).
    cursor: u64,
    last_write: Instant,
}

impl<'a> Runner<'a> {
    pub(crate) async fn start(
        connection: &'a mut PgConnection,
        projection: &'a dyn Projection,
        batch_size: u32,
    ) -> Result<Runner<'a>> {
        check_page_size(batch_size)?;
        ensure_checkpoint(connection, projection.name()).await?;
        let stored = load_position(connection, projection.name()).await?;
        Ok(Runner {
            connection,
            projection,
            types: projection.event_types(),
            batch_size,
            stored,
            cursor: stored,
            last_write: Instant::now(),
        })
    }

    /// Follows the log until `stop`: reads a batch after the cursor, applies it, and waits
    /// for a wake-up when there is nothing more.
    async fn follow(
        &mut self,
        hints: &mut watch::Receiver<Hint>,
        options: &DaemonOptions,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let name = self.projection.name().to_owned();
        // A failing event is retried after retry_interval, doubling up to a minute.
        let mut failure_backoff = Backoff::new(options.retry_interval, LAST_FAILURE_RETRY);
        let mut backoff = Backoff::TRANSIENT;
        let mut progress = (Instant::now(), self.stored);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            hints.borrow_and_update();
            let step = self.step(None).await?;
            match step {
                Step::Applied { full: true, .. } | Step::Moved => {
                    failure_backoff.reset();
                    backoff.reset();
                    if progress.0.elapsed() >= PROGRESS_EVERY {
                        tracing::info!(projection = %name, position = self.stored, "catching up");
                        progress = (Instant::now(), self.stored);
                    }
                    continue;
                }
                Step::Applied { full: false, .. } | Step::Idle => {
                    failure_backoff.reset();
                    backoff.reset();
                }
                Step::Failed(failure) => {
                    let wait = failure_backoff.next_wait();
                    tracing::error!(projection = %name, error = %failure, ?wait, "projection stopped at an event it cannot apply; retrying it later");
                    if sleep_or_stop(wait, stop).await {
                        return Ok(());
                    }
                    continue;
                }
                Step::Retry(error) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(projection = %name, %error, ?wait, "batch failed for a transient reason; retrying");
                    if sleep_or_stop(wait, stop).await {
                        return Ok(());
                    }
                    continue;
                }
            }
            wait_for_events(hints, Some(self.cursor), options.poll_interval, Some(stop)).await;
        }
    }

    /// Reads and applies one batch, at most through position `until`.
    pub(crate) async fn step(&mut self, until: Option<u64>) -> Result<Step> {
        let (mut events, head) = read_all_with_head(
            &mut *self.connection,
            self.cursor,
            self.batch_size,
            Some(&self.types),
            None,
        )
        .await?;
        let full = events.len() == self.batch_size as usize;
        // Everything matching up to `head` has been read once the page is not full.
        let mut through = match (full, events.last()) {
            (true, Some(last)) => last.position,
            (_, last) => head.max(last.map_or(0, |e| e.position)),
        };
        if let Some(until) = until {
            events.retain(|event| event.position <= until);
            through = through.min(until);
        }
        let full = full && until.is_none_or(|until| through < until);
        if events.is_empty() {
            // Idle: nothing applied would notice a rebuild that reset the checkpoint.
            let position = load_position(self.connection, self.projection.name()).await?;
            if position != self.stored {
                return Ok(self.moved_to(position));
            }
            self.cursor = self.cursor.max(through);
            if self.cursor > self.stored
                && (until.is_some() || self.last_write.elapsed() >= CHECKPOINT_EVERY)
            {
                self.flush().await?;
            }
            return Ok(Step::Idle);
        }
        let count = events.len();
        let mut target = Checkpointed {
            connection: &mut *self.connection,
            projection: self.projection,
            stored: self.stored,
        };
        match apply_or_locate(&mut target, self.projection, &events, through).await? {
            Applied::Done => {
                self.stored = through;
                self.cursor = through;
                self.last_write = Instant::now();
                Ok(Step::Applied { full, count })
            }
            Applied::Moved(position) => Ok(self.moved_to(position)),
            Applied::Failed(failure) => {
                // The events before the failing one were applied, one transaction each.
                self.stored = load_position(self.connection, self.projection.name()).await?;
                self.cursor = self.stored;
                record_failure(self.connection, &failure).await?;
                Ok(Step::Failed(failure))
            }
            Applied::Retry(error) => Ok(Step::Retry(error)),
        }
    }

    /// Continues from `position`, where another session (a rebuild) moved the checkpoint.
    fn moved_to(&mut self, position: u64) -> Step {
        tracing::info!(projection = %self.projection.name(), from = self.stored, to = position, "checkpoint moved by another session (a rebuild); continuing from there");
        self.stored = position;
        self.cursor = position;
        Step::Moved
    }

    /// Writes the cursor back as the checkpoint if it moved past it over skipped events.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if self.cursor <= self.stored {
            return Ok(());
        }
        let updated = sqlx::query(
            "UPDATE projections.checkpoints SET position = $3, updated_at = now() \
             WHERE name = $1 AND position = $2",
        )
        .bind(self.projection.name())
        .bind(to_i64(self.stored))
        .bind(to_i64(self.cursor))
        .execute(&mut *self.connection)
        .await?;
        if updated.rows_affected() == 1 {
            self.stored = self.cursor;
        } else {
            self.stored = load_position(self.connection, self.projection.name()).await?;
            self.cursor = self.stored;
        }
        self.last_write = Instant::now();
        Ok(())
    }
}

/// What one [`Runner::step`] did.
pub(crate) enum Step {
    /// Applied `count` events; `full`: there may be more right away.
    Applied { full: bool, count: usize },
    /// Nothing new.
    Idle,
    /// The checkpoint was moved by someone else; the runner continues from there.
    Moved,
    /// Stopped at a failing event.
    Failed(Box<ProjectionFailure>),
    /// A transient failure; nothing applied.
    Retry(ApplyError),
}

pub(crate) async fn load_position(connection: &mut PgConnection, name: &str) -> Result<u64> {
    let position: Option<i64> =
        sqlx::query_scalar("SELECT position FROM projections.checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(connection)
            .await?;
    Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or_default()))
}

/// The daemon's attempts: one transaction each, the projection's writes and the checkpoint
/// from `stored` to the attempt's end; `stored` follows each applied attempt.
struct Checkpointed<'c> {
    connection: &'c mut PgConnection,
    projection: &'c dyn Projection,
    stored: u64,
}

impl BatchTarget for Checkpointed<'_> {
    async fn attempt(&mut self, events: &[RecordedEvent], through: u64) -> Result<Attempt> {
        let mut tx = self.connection.begin().await?;
        if !events.is_empty() {
            if let Err(error) = self
                .projection
                .apply(&mut tx, self.projection.schema(), events)
                .await
            {
                tx.rollback().await?;
                return Ok(Attempt::Failed(error));
            }
        }
        // The checkpoint only moves from where this runner last left it: a rebuild that
        // reset it meanwhile makes this update match nothing, and the batch is rolled back.
        let updated = sqlx::query(
            "UPDATE projections.checkpoints \
             SET position = $3, events_applied = events_applied + $4, updated_at = now(), \
                 failed_position = NULL, failed_stream = NULL, failed_version = NULL, \
                 failed_type = NULL, failed_event_id = NULL, error = NULL, failed_at = NULL, \
                 failures = 0 \
             WHERE name = $1 AND position = $2",
        )
        .bind(self.projection.name())
        .bind(to_i64(self.stored))
        .bind(to_i64(through))
        .bind(i64::try_from(events.len()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            tx.rollback().await?;
            let position = load_position(self.connection, self.projection.name()).await?;
            return Ok(Attempt::Moved(position));
        }
        tx.commit().await?;
        self.stored = through;
        Ok(Attempt::Applied)
    }
}

async fn record_failure(connection: &mut PgConnection, failure: &ProjectionFailure) -> Result<()> {
    sqlx::query(
        "UPDATE projections.checkpoints \
         SET failed_position = $2, failed_stream = $3, failed_version = $4, failed_type = $5, \
             failed_event_id = $6, error = $7, failed_at = now(), failures = failures + 1 \
         WHERE name = $1",
    )
    .bind(&failure.projection)
    .bind(to_i64(failure.position))
    .bind(&failure.stream)
    .bind(to_i64(failure.version))
    .bind(&failure.event_type)
    .bind(failure.event_id)
    .bind(&failure.message)
    .execute(connection)
    .await?;
    Ok(())
}
