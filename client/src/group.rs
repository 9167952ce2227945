//! Persistent subscription groups: competing consumers over the global log.
//!
//! A group (`eventstore.create_group`) reads the log once; consumers fetch batches of events
//! leased to them, ack what they handled and nack what failed. The SQL functions are the
//! contract (any language can use them); [`EventStore::group_consumer`] runs workers on
//! them with a handler, and the other methods here manage groups and parked events.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::sync::watch;

use crate::subscription::Hint;
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

fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::InvalidArgument(format!("{what} {value} is too large")))
}

fn positions_arg(positions: &[u64]) -> Result<Vec<i64>> {
    positions.iter().map(|p| to_i64(*p, "position")).collect()
}

fn count(value: i32) -> u64 {
    u64::try_from(value).unwrap_or_default()
}

fn group_event(row: &PgRow) -> Result<GroupEvent> {
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
        match result.map_err(Error::from) {
            Ok(_) => Ok(()),
            Err(Error::DuplicateEventId { .. }) => Err(Error::GroupExists(group.to_owned())),
            Err(error) => Err(error),
        }
    }

    /// Deletes a group with its leases and parked events.
    pub async fn delete_group(&self, group: &str) -> Result<()> {
        sqlx::query("SELECT eventstore.delete_group($1)")
            .bind(group)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The groups with their position, in-flight, parked and lag counts, by name.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>> {
        let rows = sqlx::query(
            "SELECT v.group_name, v.position, v.in_flight, v.parked, v.lag, v.consumers, \
                    v.categories, v.event_types, v.max_attempts, \
                    extract(epoch FROM v.lease_timeout)::float8 AS lease_seconds, \
                    v.ordered_by_stream, s.from_position \
             FROM eventstore.groups AS v \
             JOIN eventstore.subscription_groups AS s USING (group_name) \
             ORDER BY v.group_name",
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

    /// Leases up to `max_count` events of `group` to `consumer` (`eventstore.fetch`).
    pub async fn fetch(
        &self,
        group: &str,
        consumer: &str,
        max_count: u32,
    ) -> Result<Vec<GroupEvent>> {
        let rows = sqlx::query("SELECT * FROM eventstore.fetch($1, $2, $3)")
            .bind(group)
            .bind(consumer)
            .bind(i32::try_from(max_count).unwrap_or(i32::MAX))
            .fetch_all(self.pool())
            .await?;
        rows.iter().map(group_event).collect()
    }

    /// Acks events `consumer` holds; returns how many were acked (a lease that ran out and
    /// went to another consumer is not).
    pub async fn ack(&self, group: &str, consumer: &str, positions: &[u64]) -> Result<u64> {
        let acked: i32 = sqlx::query_scalar("SELECT eventstore.ack($1, $2, $3)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .fetch_one(self.pool())
            .await?;
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
        let nacked: i32 = sqlx::query_scalar("SELECT eventstore.nack($1, $2, $3, $4, $5)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .bind(retry_after)
            .bind(reason)
            .fetch_one(self.pool())
            .await?;
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
        let parked: i32 = sqlx::query_scalar("SELECT eventstore.park($1, $2, $3, $4)")
            .bind(group)
            .bind(consumer)
            .bind(positions_arg(positions)?)
            .bind(reason)
            .fetch_one(self.pool())
            .await?;
        Ok(count(parked))
    }

    /// The parked events of `group`, in position order.
    pub async fn parked(&self, group: &str) -> Result<Vec<ParkedEvent>> {
        let rows = sqlx::query("SELECT * FROM eventstore.parked($1)")
            .bind(group)
            .fetch_all(self.pool())
            .await?;
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
            .await?;
        Ok(count(done))
    }

    /// Competing consumers on `group`: see [`GroupConsumer::run`].
    pub fn group_consumer(&self, group: &str, options: ConsumerOptions) -> GroupConsumer {
        GroupConsumer {
            store: self.clone(),
            group: group.to_owned(),
            options,
            stats: Arc::default(),
        }
    }
}

/// Why a handler did not handle an event.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again later: the event is nacked with a backoff and parked once out of attempts.
    Retry(String),
    /// The event can never be handled (invalid input): it is parked at once with the reason.
    Park(String),
}

impl HandlerError {
    /// An event that can never be handled.
    pub fn park(reason: impl Into<String>) -> Self {
        HandlerError::Park(reason.into())
    }
}

impl<E: std::error::Error> From<E> for HandlerError {
    fn from(error: E) -> Self {
        HandlerError::Retry(error.to_string())
    }
}

/// How [`GroupConsumer::run`] works the group.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Concurrent workers, each a consumer of its own (`{name}-{n}`).
    pub workers: usize,
    /// Events fetched per batch.
    pub batch_size: u32,
    /// The consumers' name prefix; the default is `host:pid`.
    pub name: String,
    /// Retry delay after a handler's first failure of an event, doubling per attempt.
    pub first_retry: Duration,
    /// Longest retry delay.
    pub max_retry: Duration,
    /// Look for events this often when no wake-up comes (retries that became due, lost
    /// notifications).
    pub poll_interval: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        ConsumerOptions {
            workers: 1,
            batch_size: 100,
            name: format!("{host}:{}", std::process::id()),
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl ConsumerOptions {
    /// Run `workers` workers.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Fetch `batch_size` events at a time.
    pub fn batch_size(mut self, batch_size: u32) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// Name the consumers `{name}-{n}`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Retry a failed event after `first`, doubling per attempt up to `max`.
    pub fn retry_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_retry = first;
        self.max_retry = max;
        self
    }

    /// Look for events at least this often.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    fn retry_after(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(20);
        self.first_retry
            .saturating_mul(1 << doublings)
            .min(self.max_retry)
    }
}

/// What a [`GroupConsumer`]'s workers did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Events the handler succeeded on.
    pub handled: u64,
    /// Events acked (the server confirmed the lease was still held).
    pub acked: u64,
    /// Events given back for a retry (or parked by the server, out of attempts).
    pub nacked: u64,
    /// Events the handler parked at once.
    pub parked: u64,
    /// Events handled whose lease had run out and gone to another consumer before the ack.
    pub lost_leases: u64,
}

#[derive(Default)]
struct Counters {
    handled: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    parked: AtomicU64,
    lost_leases: AtomicU64,
}

/// Workers on one group, each fetching a batch, handling its events one by one in position
/// order, then acking the successes in one call. Build with [`EventStore::group_consumer`].
pub struct GroupConsumer {
    store: EventStore,
    group: String,
    options: ConsumerOptions,
    stats: Arc<Counters>,
}

/// A handle on a running consumer's counters.
#[derive(Clone)]
pub struct StatsHandle(Arc<Counters>);

impl StatsHandle {
    /// The counters now.
    pub fn get(&self) -> ConsumerStats {
        let c = &self.0;
        ConsumerStats {
            handled: c.handled.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            nacked: c.nacked.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            lost_leases: c.lost_leases.load(Ordering::Relaxed),
        }
    }
}

impl GroupConsumer {
    /// The consumer's counters, readable while it runs.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle(self.stats.clone())
    }

    /// Runs the workers until `stop` completes or a worker meets an error it cannot retry
    /// (a missing group, for example). A handler's `Ok` acks the event, `Err(Retry)` nacks
    /// it with a backoff of `first_retry * 2^(attempt-1)` (parked by the server after
    /// `max_attempts`), `Err(Park)` parks it at once, and a panic counts as `Retry`.
    /// In a group ordered by stream, a failed event's later events of the same stream in
    /// the batch are not handled; the server gives them back untried.
    ///
    /// On stop, each worker finishes the batch in hand and acks it before returning.
    /// Lost connections are retried with backoff.
    pub async fn run<H, Fut>(
        self,
        handler: H,
        stop: impl Future<Output = ()>,
    ) -> Result<ConsumerStats>
    where
        H: Fn(GroupEvent) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send,
    {
        if self.options.workers == 0 || self.options.batch_size == 0 {
            return Err(Error::InvalidArgument(
                "a consumer needs at least one worker and a batch size of at least 1".to_owned(),
            ));
        }
        let ordered = self.ordered().await?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let handler = Arc::new(handler);
        let listener = self.store.listener();
        let mut workers = tokio::task::JoinSet::new();
        for n in 0..self.options.workers {
            let worker = Worker {
                store: self.store.clone(),
                group: self.group.clone(),
                consumer: format!("{}-{n}", self.options.name),
                options: self.options.clone(),
                ordered,
                stats: self.stats.clone(),
                hints: listener.hints.clone(),
                stop: stop_rx.clone(),
            };
            let handler = handler.clone();
            workers.spawn(async move { worker.run(&*handler).await });
        }
        let mut stop = std::pin::pin!(stop);
        let mut failure = None;
        loop {
            tokio::select! {
                () = &mut stop, if !*stop_tx.borrow() => {
                    stop_tx.send_replace(true);
                }
                done = workers.join_next() => match done {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(error))) => {
                        stop_tx.send_replace(true);
                        failure.get_or_insert(error);
                    }
                    Some(Err(join)) => {
                        stop_tx.send_replace(true);
                        failure.get_or_insert(Error::InvalidArgument(format!("a worker failed: {join}")));
                    }
                },
            }
        }
        drop(listener);
        match failure {
            Some(error) => Err(error),
            None => Ok(self.stats().get()),
        }
    }

    async fn ordered(&self) -> Result<bool> {
        let ordered: Option<bool> = sqlx::query_scalar(
            "SELECT ordered_by_stream FROM eventstore.subscription_groups WHERE group_name = $1",
        )
        .bind(&self.group)
        .fetch_optional(self.store.pool())
        .await?;
        ordered.ok_or_else(|| Error::InvalidEvent {
            message: format!("subscription group \"{}\" does not exist", self.group),
        })
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LAST_BACKOFF: Duration = Duration::from_secs(5);

struct Worker {
    store: EventStore,
    group: String,
    consumer: String,
    options: ConsumerOptions,
    ordered: bool,
    stats: Arc<Counters>,
    hints: watch::Receiver<Hint>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    async fn run<H, Fut>(mut self, handler: &H) -> Result<()>
    where
        H: Fn(GroupEvent) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        while !*self.stop.borrow() {
            self.hints.borrow_and_update();
            let batch = match self
                .store
                .fetch(&self.group, &self.consumer, self.options.batch_size)
                .await
            {
                Ok(batch) => batch,
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, consumer = %self.consumer, "fetch failed; retrying");
                    self.sleep(backoff).await;
                    backoff = (backoff * 2).min(LAST_BACKOFF);
                    continue;
                }
                Err(error) => return Err(error),
            };
            backoff = FIRST_BACKOFF;
            if batch.is_empty() {
                self.wait_for_events().await;
                continue;
            }
            self.handle(batch, handler).await?;
        }
        Ok(())
    }

    /// Handles a batch in order, then acks the successes.
    async fn handle<H, Fut>(&self, batch: Vec<GroupEvent>, handler: &H) -> Result<()>
    where
        H: Fn(GroupEvent) -> Fut,
        Fut: Future<Output = Result<(), HandlerError>>,
    {
        let mut done = Vec::with_capacity(batch.len());
        let mut failed_streams: Vec<String> = Vec::new();
        for event in batch {
            if self.ordered && failed_streams.contains(&event.event.stream) {
                continue;
            }
            let position = event.event.position;
            let one = [position];
            let stream = event.event.stream.clone();
            let attempt = event.attempt;
            let outcome = AssertUnwindSafe(handler(event))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    Err(HandlerError::Retry(format!(
                        "the handler panicked: {message}"
                    )))
                });
            match outcome {
                Ok(()) => {
                    self.stats.handled.fetch_add(1, Ordering::Relaxed);
                    done.push(position);
                }
                Err(HandlerError::Retry(reason)) => {
                    let retry_after = self.options.retry_after(attempt);
                    tracing::debug!(position, attempt, %reason, ?retry_after, "handler failed; nack");
                    let n = self
                        .retrying(|| {
                            self.store
                                .nack(&self.group, &self.consumer, &one, retry_after, &reason)
                        })
                        .await?;
                    self.stats.nacked.fetch_add(n, Ordering::Relaxed);
                    failed_streams.push(stream);
                }
                Err(HandlerError::Park(reason)) => {
                    tracing::info!(position, %reason, consumer = %self.consumer, "parking event");
                    let n = self
                        .retrying(|| self.store.park(&self.group, &self.consumer, &one, &reason))
                        .await?;
                    self.stats.parked.fetch_add(n, Ordering::Relaxed);
                    failed_streams.push(stream);
                }
            }
        }
        if !done.is_empty() {
            let acked = self
                .retrying(|| self.store.ack(&self.group, &self.consumer, &done))
                .await?;
            self.stats.acked.fetch_add(acked, Ordering::Relaxed);
            let lost = done.len() as u64 - acked;
            if lost > 0 {
                self.stats.lost_leases.fetch_add(lost, Ordering::Relaxed);
                tracing::warn!(
                    consumer = %self.consumer,
                    lost,
                    "leases ran out before the ack; those events went to another consumer \
                     (raise lease_timeout above the time a batch takes)"
                );
            }
        }
        Ok(())
    }

    /// Runs `call` until it succeeds or fails with an error that retrying cannot fix.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match call().await {
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, consumer = %self.consumer, "call failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(LAST_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// Waits for a wake-up, the poll interval or the stop.
    async fn wait_for_events(&mut self) {
        tokio::select! {
            changed = self.hints.changed() => {
                if changed.is_err() {
                    self.sleep(self.options.poll_interval).await;
                }
            }
            () = tokio::time::sleep(self.options.poll_interval) => {}
            _ = self.stop.changed() => {}
        }
    }

    async fn sleep(&mut self, duration: Duration) {
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            _ = self.stop.changed() => {}
        }
    }
}
