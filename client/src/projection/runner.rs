//! The projection daemon: one runner per projection across all daemons, catch-up in
//! batches, then live through wake-ups; failures stop a projection at the event, visibly.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::batch::{apply_or_locate, Applied, Attempt, BatchTarget};
use super::{
    ensure_checkpoint, qualified_tables, to_i64, transient, ApplyError, Projection,
    ProjectionFailure, ProjectionState, StateChanges, Stored, LOCK_KEY_SQL,
};
use crate::read::{check_page_size, read_all_with_head};
use crate::retry::{sleep_or_stop, wait_for_events, Backoff};
use crate::subscription::Hint;
use crate::{Error, EventStore, RecordedEvent, Result};

/// How often a runner with nothing to apply still writes its checkpoint forward over events
/// of other types, so a restart does not scan them again.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// The changed rows that make a catching-up runner write at once. A write is one
/// transaction, and while it runs it holds back every reader of the global log in the
/// cluster (events after its transaction id are not readable until it ends), so it must
/// stay short (100,000 rows took about two seconds here). Smaller writes also leave less to
/// write after the last page of a catch-up, the one write the runner waits for.
const WRITE_ROWS: usize = 25_000;
/// Longest wait between retries of an event that fails.
const LAST_FAILURE_RETRY: Duration = Duration::from_secs(60);
/// How often a catching-up runner logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The default of [`DaemonOptions::state_rows`].
const STATE_ROWS: usize = 250_000;

/// How a [`Daemon`] runs its projections.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    pub(crate) batch_size: u32,
    pub(crate) state_rows: usize,
    pub(crate) write_every: Duration,
    pub(crate) takeover_interval: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) retry_interval: Duration,
    pub(crate) owner: String,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            batch_size: 5_000,
            state_rows: STATE_ROWS,
            write_every: Duration::from_secs(5),
            takeover_interval: Duration::from_secs(2),
            poll_interval: Duration::from_secs(1),
            retry_interval: Duration::from_secs(5),
            owner: crate::process_name(),
        }
    }
}

impl DaemonOptions {
    /// Events read per round trip, 1 to 100,000; for a projection without a
    /// [`ProjectionState`], also the events applied per transaction. Default: 5,000.
    #[must_use]
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// The rows a catching-up runner keeps in a projection's [`ProjectionState`] (see
    /// [`Projection::state`]): past this it writes them and starts afresh. It bounds the
    /// memory of a catch-up. Default: 250,000.
    #[must_use]
    pub fn state_rows(mut self, rows: usize) -> Self {
        self.state_rows = rows;
        self
    }

    /// How long a runner that is catching up folds pages of events into its projection's
    /// [`ProjectionState`] before it writes them, with the checkpoint, in one transaction:
    /// the read model moves in steps this far apart while a backlog is applied. Zero writes
    /// after every page. A runner that has caught up writes at once. Default: 5 seconds.
    #[must_use]
    pub fn write_every(mut self, interval: Duration) -> Self {
        self.write_every = interval;
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
    let mut runner =
        Runner::start(&mut connection, store.pool().clone(), projection, options).await?;
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

/// Whether the projection's tables hold no row (false for a projection without tables,
/// whose state keeps its rows somewhere this cannot see).
async fn tables_empty(connection: &mut PgConnection, projection: &dyn Projection) -> Result<bool> {
    let tables = qualified_tables(projection);
    if tables.is_empty() {
        return Ok(false);
    }
    let probes = tables
        .iter()
        .map(|table| format!("NOT EXISTS (SELECT FROM {table})"))
        .collect::<Vec<_>>()
        .join(" AND ");
    Ok(sqlx::query_scalar(&format!("SELECT {probes}"))
        .persistent(false)
        .fetch_one(connection)
        .await?)
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
    /// Where pages are read ahead.
    pool: PgPool,
    projection: &'a dyn Projection,
    types: Arc<[String]>,
    batch_size: u32,
    state_rows: usize,
    write_every: Duration,
    /// The checkpoint as last written (or read) by this runner.
    pub(crate) stored: u64,
    /// Everything up to here is applied, folded, or of no interest.
    cursor: u64,
    last_write: Instant,
    /// Events this runner has committed.
    pub(crate) applied: u64,
    /// The next page, read while the current one is applied.
    read_ahead: Option<ReadAhead>,
    /// The projection's state with the events folded into it since the last write.
    folding: Option<Folding>,
    /// The last write of the state's changes, on a connection of the pool, while folding
    /// goes on: the checkpoint is at `stored` until it is settled.
    writing: Option<Writing>,
    /// Events up to here are applied batch by batch, not folded: folding or writing them
    /// failed, and [`apply_or_locate`] finds the event that fails.
    plain_through: u64,
    /// The tables hold no row that `folding` does not: they were empty when this runner
    /// took the projection, or a rebuild just emptied them.
    pub(crate) emptied: bool,
    /// A rebuild runs this runner: its readers see emptied tables until it is done, so the
    /// runner writes only when the state is big enough, not every `write_every`.
    pub(crate) rebuilding: bool,
}

/// A page being read on a connection of the pool.
struct ReadAhead {
    after: u64,
    task: JoinHandle<Result<(Vec<RecordedEvent>, u64)>>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A write of a state's changes and the checkpoint, in a transaction of its own.
struct Writing {
    /// The checkpoint it moves to.
    through: u64,
    /// The events it applies.
    events: u64,
    task: JoinHandle<Result<Written>>,
}

/// How a [`Writing`] ended.
enum Written {
    Committed,
    /// The checkpoint was not where the runner left it (a rebuild moved it): rolled back.
    Moved(u64),
    /// The projection's write failed: rolled back.
    Failed(ApplyError),
}

struct Folding {
    state: Box<dyn ProjectionState>,
    /// Events folded since the last write.
    events: u64,
    /// When the first of them was folded.
    since: Instant,
}

impl<'a> Runner<'a> {
    /// Loads the checkpoint (creating it if missing).
    pub(crate) async fn start(
        connection: &'a mut PgConnection,
        pool: PgPool,
        projection: &'a dyn Projection,
        options: &DaemonOptions,
    ) -> Result<Runner<'a>> {
        check_page_size(options.batch_size)?;
        ensure_checkpoint(connection, projection.name()).await?;
        let stored = load_position(connection, projection.name()).await?;
        // The caller holds the projection's lock, so nobody else fills the tables: found
        // empty, they hold no row a state folded from here would not hold, and a first
        // catch-up folds without looking rows up (a write still in flight of a previous
        // owner loses its checkpoint check against this runner's, or wins it and moves
        // this runner on).
        let emptied = tables_empty(connection, projection).await?;
        Ok(Runner {
            connection,
            pool,
            projection,
            types: projection.event_types().into(),
            batch_size: options.batch_size,
            state_rows: options.state_rows,
            write_every: options.write_every,
            stored,
            cursor: stored,
            last_write: Instant::now(),
            applied: 0,
            read_ahead: None,
            folding: None,
            writing: None,
            plain_through: 0,
            emptied,
            rebuilding: false,
        })
    }

    /// Events folded and not yet written (or not yet committed).
    pub(crate) fn pending(&self) -> u64 {
        self.folding.as_ref().map_or(0, |folding| folding.events)
            + self.writing.as_ref().map_or(0, |writing| writing.events)
    }

    /// Applies batches until caught up, then waits for wake-ups (or the poll interval);
    /// returns when `stop` is set, with the batch in hand applied.
    async fn follow(
        &mut self,
        hints: &mut watch::Receiver<Hint>,
        options: &DaemonOptions,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<()> {
        let name = self.projection.name().to_owned();
        let mut failure_backoff = Backoff::new(options.retry_interval, LAST_FAILURE_RETRY);
        let mut backoff = Backoff::TRANSIENT;
        let mut progress = (Instant::now(), self.stored);
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            // Take the wake-up state before reading, so a wake-up during the read is not
            // mistaken for one already handled.
            hints.borrow_and_update();
            let step = self.step(None).await?;
            match step {
                Step::Applied { full: true } | Step::Moved => {
                    failure_backoff.reset();
                    backoff.reset();
                    if progress.0.elapsed() >= PROGRESS_EVERY {
                        tracing::info!(projection = %name, position = self.cursor, "catching up");
                        progress = (Instant::now(), self.cursor);
                    }
                    continue;
                }
                Step::Applied { full: false } | Step::Idle => {
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

    /// Reads one page after the cursor and applies it (or folds it), with the checkpoint,
    /// stopping at `until` when given.
    pub(crate) async fn step(&mut self, until: Option<u64>) -> Result<Step> {
        let (mut events, head) = self.read_page().await?;
        let full = events.len() == self.batch_size as usize;
        // A full page ends at its last event; a short one covers everything up to the head
        // of the snapshot it was read in.
        let mut through = match (full, events.last()) {
            (true, Some(last)) => last.position,
            (_, last) => head.max(last.map_or(0, |e| e.position)),
        };
        if let Some(until) = until {
            events.retain(|event| event.position <= until);
            through = through.min(until);
        }
        let full = full && until.is_none_or(|until| through < until);
        if full {
            self.read_ahead_from(through);
        }
        if events.is_empty() || self.cursor < self.plain_through {
            // What follows reads the checkpoint or writes past it.
            if let Some(step) = self.settle().await? {
                return Ok(step);
            }
        }
        if events.is_empty() {
            if self.pending() > 0 {
                self.cursor = self.cursor.max(through);
                return self.write_folded(false).await;
            }
            // Only the events skipped: check that no one (a rebuild) moved the checkpoint,
            // and write the cursor forward now and then.
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
        if self.cursor >= self.plain_through {
            if let Some(step) = self.fold(&events, through, full).await? {
                return Ok(step);
            }
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
                self.applied += count as u64;
                self.last_write = Instant::now();
                Ok(Step::Applied { full })
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

    /// The page after the cursor: the one read ahead if it starts there.
    async fn read_page(&mut self) -> Result<(Vec<RecordedEvent>, u64)> {
        if let Some(mut ahead) = self.read_ahead.take() {
            if ahead.after == self.cursor {
                if let Ok(page) = (&mut ahead.task).await {
                    return page;
                }
            }
        }
        read_all_with_head(
            &mut *self.connection,
            self.cursor,
            self.batch_size,
            Some(&self.types),
            None,
        )
        .await
    }

    fn read_ahead_from(&mut self, after: u64) {
        let (pool, types, batch_size) = (self.pool.clone(), self.types.clone(), self.batch_size);
        let task = tokio::spawn(async move {
            read_all_with_head(&pool, after, batch_size, Some(&types), None).await
        });
        self.read_ahead = Some(ReadAhead { after, task });
    }

    /// Folds `events` into the projection's state, and writes it when caught up, when it
    /// holds too many rows, or when the first event folded since the last write is
    /// `write_every` old. `None` when the projection has no state.
    async fn fold(
        &mut self,
        events: &[RecordedEvent],
        through: u64,
        full: bool,
    ) -> Result<Option<Step>> {
        if self.folding.is_none() {
            let Some(state) = self.projection.state() else {
                return Ok(None);
            };
            // A fresh state reads the rows it needs from the tables: the last write must be
            // in them.
            if let Some(step) = self.settle().await? {
                return Ok(Some(step));
            }
            self.folding = Some(Folding {
                state,
                events: 0,
                since: Instant::now(),
            });
        }
        let folding = self.folding.as_mut().expect("a state to fold into");
        if folding.events == 0 {
            folding.since = Instant::now();
        }
        let stored = if self.emptied {
            Stored::Held
        } else {
            Stored::In(&mut *self.connection)
        };
        let schema = self.projection.schema();
        if let Err(error) = folding.state.fold(stored, schema, events).await {
            if let Some(step) = self.settle().await? {
                return Ok(Some(step));
            }
            return Ok(Some(self.fall_back(through, error)));
        }
        folding.events += events.len() as u64;
        self.cursor = through;
        let due = !full
            || folding.state.rows() >= self.state_rows
            || folding.state.changed() >= WRITE_ROWS
            // A rebuild's reader sees emptied tables until it is done anyway.
            || (!self.rebuilding && folding.since.elapsed() >= self.write_every);
        if due {
            if let Some(step) = self.settle().await? {
                return Ok(Some(step));
            }
            if full {
                if let Some(step) = self.start_writing() {
                    return Ok(Some(step));
                }
            }
            return self.write_folded(full).await.map(Some);
        }
        Ok(Some(Step::Applied { full }))
    }

    /// Takes the folded changes out of the state and writes them, with the checkpoint, on
    /// a connection of the pool while the runner goes on folding; `None` when the state
    /// cannot hand its changes over (then the caller writes them and waits). Only while
    /// catching up, with no write in flight: a runner that has caught up waits for its write.
    fn start_writing(&mut self) -> Option<Step> {
        debug_assert!(self.writing.is_none());
        let folding = self.folding.as_mut().expect("a state to write");
        let changes = folding.state.take_changes()?;
        let events = std::mem::take(&mut folding.events);
        let forget = folding.state.rows() >= self.state_rows;
        let (pool, name, schema) = (
            self.pool.clone(),
            self.projection.name().to_owned(),
            self.projection.schema().to_owned(),
        );
        let (from, through) = (self.stored, self.cursor);
        let task = tokio::spawn(async move {
            write_changes(&pool, &name, &schema, changes, from, through, events).await
        });
        self.writing = Some(Writing {
            through,
            events,
            task,
        });
        if forget {
            // The next state reads its rows from the tables, once this write is in them.
            let forgotten = self.folding.take();
            tokio::task::spawn_blocking(move || drop(forgotten));
            self.emptied = false;
        }
        Some(Step::Applied { full: true })
    }

    /// Waits for the write in flight, if any. `None` when there was none or it committed
    /// (the checkpoint is then at its end); otherwise what the runner does next, with the
    /// state discarded: its changes since `stored` are not in the tables.
    async fn settle(&mut self) -> Result<Option<Step>> {
        let Some(writing) = self.writing.take() else {
            return Ok(None);
        };
        // The task is never aborted: it failed only by panicking, as the write would have here.
        let written = writing
            .task
            .await
            .unwrap_or_else(|join| std::panic::resume_unwind(join.into_panic()));
        match written {
            Ok(Written::Committed) => {
                self.stored = writing.through;
                self.applied += writing.events;
                self.last_write = Instant::now();
                Ok(None)
            }
            Ok(Written::Moved(position)) => Ok(Some(self.moved_to(position))),
            Ok(Written::Failed(error)) => Ok(Some(self.fall_back(writing.through, error))),
            Err(error) => {
                self.discard();
                Err(error)
            }
        }
    }

    /// Writes the folded state and moves the checkpoint to the cursor, in one transaction.
    /// Forgets the state afterwards when caught up (`!full`) or holding too many rows. An
    /// error discards it: its rows may count as stored though their transaction failed.
    async fn write_folded(&mut self, full: bool) -> Result<Step> {
        let written = self.try_write_folded(full).await;
        if written.is_err() {
            self.discard();
        }
        written
    }

    async fn try_write_folded(&mut self, full: bool) -> Result<Step> {
        let folding = self.folding.as_mut().expect("a state to write");
        let mut tx = self.connection.begin().await?;
        if let Err(error) = folding.state.write(&mut tx, self.projection.schema()).await {
            tx.rollback().await?;
            let through = self.cursor;
            return Ok(self.fall_back(through, error));
        }
        let events = folding.events;
        let moved = !advance_checkpoint(
            &mut tx,
            self.projection.name(),
            self.stored,
            self.cursor,
            events,
        )
        .await?;
        if moved {
            tx.rollback().await?;
            let position = load_position(self.connection, self.projection.name()).await?;
            return Ok(self.moved_to(position));
        }
        tx.commit().await?;
        self.stored = self.cursor;
        self.applied += events;
        self.last_write = Instant::now();
        folding.events = 0;
        if !full || folding.state.rows() >= self.state_rows {
            // Freeing many rows takes a while: not on this task.
            let forgotten = self.folding.take();
            tokio::task::spawn_blocking(move || drop(forgotten));
            self.emptied = false;
        }
        Ok(Step::Applied { full })
    }

    /// Folding or writing failed: discards the state; a transient failure is retried,
    /// any other makes the events since the last write, through `through`, go through
    /// [`apply_or_locate`] batch by batch, which finds the one that fails.
    fn fall_back(&mut self, through: u64, error: ApplyError) -> Step {
        self.discard();
        if transient(&error) {
            return Step::Retry(error);
        }
        tracing::warn!(projection = %self.projection.name(), %error, "folding events failed; applying them batch by batch");
        self.plain_through = through;
        Step::Applied { full: true }
    }

    /// Forgets what was folded and not written: the cursor goes back to the checkpoint.
    fn discard(&mut self) {
        self.folding = None;
        self.emptied = false;
        self.cursor = self.stored;
    }

    /// Continues from `position`, where another session (a rebuild) moved the checkpoint.
    fn moved_to(&mut self, position: u64) -> Step {
        tracing::info!(projection = %self.projection.name(), from = self.stored, to = position, "checkpoint moved by another session (a rebuild); continuing from there");
        self.discard();
        self.stored = position;
        self.cursor = position;
        self.applied = 0;
        Step::Moved
    }

    /// Writes what was folded, and the cursor back as the checkpoint if it moved past it
    /// over skipped events.
    pub(crate) async fn flush(&mut self) -> Result<()> {
        if let Some(Step::Retry(error)) = self.settle().await? {
            tracing::warn!(projection = %self.projection.name(), %error, "writing folded events failed; they are applied again");
        }
        if self.pending() > 0 {
            self.write_folded(false).await?;
        }
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
    /// Applied (or folded) a page; `full`: there may be more right away.
    Applied { full: bool },
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
        let events = u64::try_from(events.len()).unwrap_or(u64::MAX);
        if !advance_checkpoint(
            &mut tx,
            self.projection.name(),
            self.stored,
            through,
            events,
        )
        .await?
        {
            tx.rollback().await?;
            let position = load_position(self.connection, self.projection.name()).await?;
            return Ok(Attempt::Moved(position));
        }
        tx.commit().await?;
        self.stored = through;
        Ok(Attempt::Applied)
    }
}

/// Moves the checkpoint of `name` from `from` to `to`, counting `events` applied and
/// clearing a recorded failure; false when it is not at `from` (a rebuild reset it).
async fn advance_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    from: u64,
    to: u64,
    events: u64,
) -> Result<bool> {
    let updated = sqlx::query(
        "UPDATE projections.checkpoints \
         SET position = $3, events_applied = events_applied + $4, updated_at = now(), \
             failed_position = NULL, failed_stream = NULL, failed_version = NULL, \
             failed_type = NULL, failed_event_id = NULL, error = NULL, failed_at = NULL, \
             failures = 0 \
         WHERE name = $1 AND position = $2",
    )
    .bind(name)
    .bind(to_i64(from))
    .bind(to_i64(to))
    .bind(i64::try_from(events).unwrap_or(i64::MAX))
    .execute(tx)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// One transaction on a connection of `pool`: writes `changes` and moves the checkpoint of
/// `name` from `from` to `through`.
async fn write_changes(
    pool: &PgPool,
    name: &str,
    schema: &str,
    changes: Box<dyn StateChanges>,
    from: u64,
    through: u64,
    events: u64,
) -> Result<Written> {
    let mut tx = pool.begin().await?;
    if let Err(error) = changes.write(&mut tx, schema).await {
        tx.rollback().await?;
        return Ok(Written::Failed(error));
    }
    if !advance_checkpoint(&mut tx, name, from, through, events).await? {
        tx.rollback().await?;
        let mut connection = pool.acquire().await?;
        return Ok(Written::Moved(load_position(&mut connection, name).await?));
    }
    tx.commit().await?;
    Ok(Written::Committed)
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
