//! [`GroupConsumer`]: workers that fetch batches of a group, run a handler on each event in
//! order, and ack, nack or park what it did.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;

use super::GroupEvent;
use crate::retry::{sleep_or_stop, wait_for_events, Backoff};
use crate::subscription::Hint;
use crate::{Error, EventStore, Result};

impl EventStore {
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
        ConsumerOptions {
            workers: 1,
            batch_size: 100,
            name: crate::process_name(),
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
        Backoff::new(self.first_retry, self.max_retry).after_attempt(attempt)
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
                        failure.get_or_insert(Error::TaskFailed(format!("a worker of group {:?} failed: {join}", self.group)));
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
            "SELECT ordered_by_stream FROM eventstore.groups WHERE group_name = $1",
        )
        .bind(&self.group)
        .fetch_optional(self.store.pool())
        .await?;
        ordered.ok_or_else(|| Error::GroupNotFound(self.group.clone()))
    }
}

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
        let mut backoff = Backoff::TRANSIENT;
        // The handled events of the last batch: their ack goes out with the next fetch.
        let mut handled = Vec::new();
        while !*self.stop.borrow() {
            self.hints.borrow_and_update();
            // Side by side on two pooled connections: the ack waits for its WAL flush while
            // the next batch is leased.
            let (acked, fetched) = tokio::join!(
                self.ack(std::mem::take(&mut handled)),
                self.store
                    .fetch_unflushed(&self.group, &self.consumer, self.options.batch_size)
            );
            acked?;
            let batch = match fetched {
                Ok(batch) => batch,
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, consumer = %self.consumer, "fetch failed; retrying");
                    sleep_or_stop(backoff.next_wait(), &mut self.stop).await;
                    continue;
                }
                Err(error) => return Err(error),
            };
            backoff.reset();
            if batch.is_empty() {
                let poll = self.options.poll_interval;
                wait_for_events(&mut self.hints, None, poll, Some(&mut self.stop)).await;
                continue;
            }
            handled = self.handle(batch, handler).await?;
        }
        self.ack(handled).await
    }

    /// Handles a batch in order, nacking or parking the failures; returns the positions
    /// handled, to be acked.
    async fn handle<H, Fut>(&self, batch: Vec<GroupEvent>, handler: &H) -> Result<Vec<u64>>
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
        Ok(done)
    }

    /// Acks the handled events `done` (nothing to do when empty).
    async fn ack(&self, done: Vec<u64>) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
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
        Ok(())
    }

    /// Runs `call` until it succeeds or fails with an error that retrying cannot fix.
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut backoff = Backoff::TRANSIENT;
        loop {
            match call().await {
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, consumer = %self.consumer, "call failed; retrying");
                    tokio::time::sleep(backoff.next_wait()).await;
                }
                other => return other,
            }
        }
    }
}
