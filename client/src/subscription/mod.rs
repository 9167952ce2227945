//! Push subscriptions: catch up from a checkpoint, then follow the log as it grows.
//!
//! A notification on channel `eventstore` is only a wake-up. The subscription re-reads from
//! its own checkpoint after each wake-up, after each reconnect of the listening connection,
//! and every `poll_interval` regardless, so a lost notification only delays delivery. Reads
//! go through `read_all` / `read_stream`, which never skip or repeat a committed event.
//! Once caught up, global-log and category subscriptions take their events from the pages
//! of the store's one shared reader instead (`feed`), and read on their own again only when
//! they fall behind what it keeps.
//!
//! Back-pressure: a subscription reads (or takes) its next page only when its consumer has
//! taken the previous one, so a slow consumer holds at most one page in memory and never
//! slows the writers or the other subscriptions; wake-ups are folded into one "something may
//! be new" value, never queued.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod feed;

pub(crate) use feed::SharedFeed;
use feed::{Feed, FeedReader, Take};

use crate::read::{check_page_size, read_all_with_head, Cursor, Source};
use crate::retry::{wait_for_events, Backoff, Woken};
use crate::{EventStream, RecordedEvent, Result};

/// The channel appends wake subscribers on.
pub const CHANNEL: &str = "eventstore";

const FIRST_RECHECK: Duration = Duration::from_millis(2);

/// Where a subscription starts and what it delivers.
#[derive(Clone, Debug)]
pub struct SubscriptionOptions {
    after: u64,
    from_version: u64,
    event_types: Option<Vec<String>>,
    page_size: u32,
    poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            after: 0,
            from_version: 0,
            event_types: None,
            page_size: 1_000,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl SubscriptionOptions {
    /// Global log and category subscriptions: deliver events after this position (a
    /// checkpoint you stored). Default: 0, from the beginning.
    #[must_use]
    pub fn after(mut self, position: u64) -> Self {
        self.after = position;
        self
    }

    /// Stream subscriptions: deliver events from this version on. Default: 0.
    #[must_use]
    pub fn from_version(mut self, version: u64) -> Self {
        self.from_version = version;
        self
    }

    /// Deliver only events of these types. Default: all types.
    #[must_use]
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Events read per round trip while catching up, 1 to 100,000. Default: 1,000.
    #[must_use]
    pub fn page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size;
        self
    }

    /// How often to re-read without a wake-up. Default: 1 second.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }
}

/// What a subscription follows.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    All,
    Category(String),
    Stream(String),
}

/// The latest wake-up: `generation` counts them; `head` is the payload (a readable
/// position), `None` when the wake-up carried none (a reconnect, or a server that notifies
/// per transaction).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Hint {
    pub(crate) generation: u64,
    pub(crate) head: Option<u64>,
}

/// One `LISTEN eventstore` connection shared by an [`crate::EventStore`]'s subscriptions;
/// it stops when the last of them is dropped.
pub(crate) struct Listener {
    pub(crate) hints: watch::Receiver<Hint>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wake-ups on new events ([`crate::EventStore::wake_ups`]). A wake-up means only that
/// something may be new: read to see. Wake-ups are folded, never queued, so a slow waiter
/// never holds them back.
pub struct WakeUps {
    hints: watch::Receiver<Hint>,
    _listener: Arc<Listener>,
}

impl WakeUps {
    pub(crate) fn new(listener: Arc<Listener>) -> WakeUps {
        let mut hints = listener.hints.clone();
        hints.borrow_and_update();
        WakeUps {
            hints,
            _listener: listener,
        }
    }

    /// Waits for the next wake-up since the last wait (or since this was made), at most
    /// `timeout`; `true` on a wake-up, `false` when the time ran out. A notification lost
    /// with a dropped connection ends no wait early: poll with a timeout.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let woken = crate::retry::wait_for_events(&mut self.hints, None, timeout, None).await;
        woken == crate::retry::Woken::Hint
    }
}

impl std::fmt::Debug for WakeUps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakeUps")
    }
}

/// The listener of an event store, started on first use.
#[derive(Default)]
pub(crate) struct SharedListener(Mutex<Weak<Listener>>);

impl std::fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedListener")
    }
}

impl SharedListener {
    pub(crate) fn get(&self, pool: &PgPool) -> Arc<Listener> {
        let mut slot = self.0.lock().expect("listener lock is never poisoned");
        if let Some(listener) = slot.upgrade() {
            return listener;
        }
        let (sender, hints) = watch::channel(Hint::default());
        let task = tokio::spawn(listen(pool.clone(), sender));
        let listener = Arc::new(Listener { hints, task });
        *slot = Arc::downgrade(&listener);
        listener
    }
}

fn wake(hints: &watch::Sender<Hint>, head: Option<u64>) {
    hints.send_modify(|hint| {
        hint.generation += 1;
        hint.head = head;
    });
}

/// How often a listener on a hot standby checks whether the server was promoted.
const STANDBY_RECHECK: Duration = Duration::from_secs(30);

/// Whether `error` is the refusal of LISTEN during recovery (25006 on a hot standby).
fn is_standby_refusal(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "25006")
}

/// Keeps a `LISTEN eventstore` connection up and folds what it hears into `hints`.
async fn listen(pool: PgPool, hints: watch::Sender<Hint>) {
    let mut backoff = Backoff::TRANSIENT;
    let mut on_standby = false;
    while !hints.is_closed() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "subscription listener cannot connect; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            if is_standby_refusal(&error) {
                // A hot standby cannot LISTEN; subscriptions there follow by their timer
                // poll. Look again now and then, in case the server is promoted.
                if !on_standby {
                    tracing::info!(
                        "the server is a hot standby: subscriptions poll, without wake-ups"
                    );
                    on_standby = true;
                }
                tokio::time::sleep(STANDBY_RECHECK).await;
                continue;
            }
            tracing::warn!(%error, "LISTEN {CHANNEL} failed; retrying");
            tokio::time::sleep(backoff.next_wait()).await;
            continue;
        }
        on_standby = false;
        // Listening (again): whatever was missed meanwhile is caught up by re-reading.
        wake(&hints, None);
        backoff.reset();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => wake(&hints, notification.payload().parse().ok()),
                // The connection dropped and was re-established, LISTEN included.
                Ok(None) => wake(&hints, None),
                Err(error) => {
                    tracing::warn!(%error, "subscription listener lost its connection");
                    break;
                }
            }
            if hints.is_closed() {
                return;
            }
        }
    }
}

/// A live feed of events: an async [`Stream`] that catches up from its starting point, then
/// waits for new events, forever. It yields an error only for a failure that retrying
/// cannot fix (for example a missing extension), and ends after it; lost connections and
/// server restarts are retried with backoff, resuming exactly after the last event yielded.
pub struct Subscription {
    events: EventStream<'static>,
}

impl Subscription {
    pub(crate) fn start(
        pool: PgPool,
        listener: Arc<Listener>,
        feed: Option<Arc<Feed>>,
        target: Target,
        options: SubscriptionOptions,
    ) -> Self {
        let follow = Follow::new(pool, listener, feed, &target, &options);
        let events = futures_util::stream::unfold(follow, |mut follow| async move {
            let item = follow.next().await?;
            Some((item, follow))
        });
        Subscription {
            events: Box::pin(events),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.events.as_mut().poll_next(cx)
    }
}

struct Follow {
    pool: PgPool,
    _listener: Arc<Listener>,
    hints: watch::Receiver<Hint>,
    cursor: Cursor,
    /// Global-log reads with filters: an empty page also moves the checkpoint, to the head.
    filtered: bool,
    /// Stream subscriptions filter types here, as they page by version.
    stream_types: Option<Vec<String>>,
    page_size: u32,
    poll_interval: Duration,
    buffer: VecDeque<RecordedEvent>,
    /// After a wake-up without a head found nothing: when to look again, doubling, since the
    /// events may become readable when an older transaction ends.
    recheck: Option<Backoff>,
    /// The wake-up generation the re-checks are for.
    recheck_for: u64,
    failed: bool,
    /// The store's shared reader, for global-log targets: once caught up, events come from
    /// its pages instead of reads of their own.
    feed: Option<FeedReader>,
    /// The last read of its own found the head (a page that was not full), and the feed
    /// has not turned out to be behind the checkpoint since: the feed may serve the next
    /// events.
    on_feed: bool,
    /// The last read found the head (a page that was not full), with the wake-up state
    /// taken before it: the next read waits for a wake-up past it, instead of reading again
    /// at once. A follower at the head then reads once per wake-up (the notifier coalesces
    /// commits over its interval), not in a loop that finds a few events each time.
    at_head: Option<Hint>,
}

impl Follow {
    fn new(
        pool: PgPool,
        listener: Arc<Listener>,
        feed: Option<Arc<Feed>>,
        target: &Target,
        options: &SubscriptionOptions,
    ) -> Follow {
        let hints = listener.hints.clone();
        let (cursor, filtered) = match target {
            Target::All => (
                Cursor::All {
                    after: options.after,
                    event_types: options.event_types.clone(),
                    categories: None,
                },
                options.event_types.is_some(),
            ),
            Target::Category(category) => (
                Cursor::All {
                    after: options.after,
                    event_types: options.event_types.clone(),
                    categories: Some(vec![category.clone()]),
                },
                true,
            ),
            Target::Stream(stream) => (
                Cursor::Stream {
                    stream: stream.clone(),
                    next: Some(options.from_version),
                    backwards: false,
                },
                false,
            ),
        };
        let feed = feed.filter(|_| !matches!(target, Target::Stream(_)));
        Follow {
            pool,
            _listener: listener,
            hints,
            cursor,
            filtered,
            stream_types: match target {
                Target::Stream(_) => options.event_types.clone(),
                _ => None,
            },
            page_size: options.page_size,
            poll_interval: options.poll_interval,
            buffer: VecDeque::new(),
            recheck: None,
            recheck_for: 0,
            failed: false,
            feed: feed.as_ref().map(Feed::reader),
            on_feed: false,
            at_head: None,
        }
    }

    async fn next(&mut self) -> Option<Result<RecordedEvent>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            match self.refill().await? {
                Ok(()) => {}
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// Reads (or takes from the feed) until the buffer holds events, waiting for wake-ups
    /// in between; `None` after a failure was reported.
    async fn refill(&mut self) -> Option<Result<()>> {
        if self.failed {
            return None;
        }
        if let Err(error) = check_page_size(self.page_size) {
            self.failed = true;
            return Some(Err(error));
        }
        let mut backoff = Backoff::TRANSIENT;
        loop {
            if !self.buffer.is_empty() {
                return Some(Ok(()));
            }
            if self.on_feed {
                if let Some(taken) = self.take_from_feed().await {
                    if taken {
                        continue;
                    }
                    // Nothing new from the feed for a poll interval: read directly, in
                    // case its reader is gone.
                }
                self.at_head = None;
            } else if let Some(seen) = self.at_head.take() {
                self.wait(seen).await;
            }
            // Take the wake-up state before reading, so a wake-up during the read is not
            // mistaken for one already handled.
            let seen = *self.hints.borrow_and_update();
            match self.fetch().await {
                Ok(0) => {}
                Ok(read) => {
                    backoff.reset();
                    self.recheck = None;
                    if read < self.page_size as usize {
                        self.at_head = Some(seen);
                    }
                    continue;
                }
                Err(error) if error.is_transient() => {
                    let wait = backoff.next_wait();
                    tracing::warn!(%error, ?wait, "subscription read failed; retrying");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
            if !self.on_feed {
                self.wait(seen).await;
            }
        }
    }

    /// Takes the events after the checkpoint from the feed, waiting up to the poll interval
    /// for its next page: `Some(true)` when the checkpoint moved or a page arrived,
    /// `Some(false)` when nothing came, `None` when the feed does not reach back to the
    /// checkpoint (reads of its own then catch up, and come back to the feed).
    async fn take_from_feed(&mut self) -> Option<bool> {
        let Some(feed) = &mut self.feed else {
            self.on_feed = false;
            return None;
        };
        let Cursor::All {
            after,
            event_types,
            categories,
        } = &mut self.cursor
        else {
            unreachable!("the feed serves global-log targets");
        };
        let keep = |event: &RecordedEvent| {
            event_types
                .as_ref()
                .is_none_or(|types| types.contains(&event.event_type))
                && categories
                    .as_ref()
                    .is_none_or(|categories| categories.iter().any(|c| c == event.category()))
        };
        match feed.take(*after, self.page_size as usize, keep) {
            Take::Events(events, checkpoint) => {
                *after = checkpoint;
                self.buffer.extend(events);
                Some(true)
            }
            Take::Behind => {
                self.on_feed = false;
                None
            }
            Take::Nothing => {
                match tokio::time::timeout(self.poll_interval, feed.next_page()).await {
                    Ok(true) => Some(true),
                    Ok(false) => {
                        // The feed's reader stopped (an error retrying cannot fix): read on
                        // our own from now on, which reports it.
                        self.feed = None;
                        self.on_feed = false;
                        None
                    }
                    Err(_) => Some(false),
                }
            }
        }
    }

    /// Waits until there may be something new: a wake-up past the checkpoint, a due
    /// re-check, or the poll interval.
    async fn wait(&mut self, seen: Hint) {
        if seen.generation > 0 && seen.head.is_none() && seen.generation != self.recheck_for {
            // The last wake-up carried no head and this read found nothing (yet): look again
            // soon, less often each time, until the poll interval takes over.
            self.recheck_for = seen.generation;
            self.recheck = Some(Backoff::new(FIRST_RECHECK, self.poll_interval));
        }
        let timeout = match self.recheck.as_mut().map(Backoff::next_wait) {
            Some(recheck) if recheck < self.poll_interval => recheck,
            _ => {
                self.recheck = None;
                self.poll_interval
            }
        };
        let checkpoint = self.checkpoint();
        if wait_for_events(&mut self.hints, checkpoint, timeout, None).await == Woken::Hint {
            self.recheck = None;
        }
    }

    /// The global position everything up to which was read, for global-log targets.
    fn checkpoint(&self) -> Option<u64> {
        match &self.cursor {
            Cursor::All { after, .. } | Cursor::Category { after, .. } => Some(*after),
            Cursor::Stream { .. } | Cursor::AllBackwards { .. } => None,
        }
    }

    /// Reads the next page into the buffer; returns how many events it read.
    async fn fetch(&mut self) -> Result<usize> {
        let page_size = self.page_size;
        if self.filtered {
            return self.fetch_filtered().await;
        }
        let mut source = Source::Pool(self.pool.clone());
        let page = self.cursor.next_page(&mut source, page_size).await?;
        let read = page.len();
        self.on_feed = self.feed.is_some() && read < page_size as usize;
        match &self.stream_types {
            Some(types) => self
                .buffer
                .extend(page.into_iter().filter(|e| types.contains(&e.event_type))),
            None => self.buffer.extend(page),
        }
        Ok(read)
    }

    /// A filtered global-log read that also returns the head from the same snapshot: when
    /// the page is not full, nothing else exists up to the head, so the checkpoint moves
    /// there and the next read does not scan the skipped events again.
    async fn fetch_filtered(&mut self) -> Result<usize> {
        let Cursor::All {
            after,
            event_types,
            categories,
        } = &mut self.cursor
        else {
            unreachable!("filtered subscriptions read the global log");
        };
        let (page, head) = read_all_with_head(
            &self.pool,
            *after,
            self.page_size,
            event_types.as_deref(),
            categories.as_deref(),
        )
        .await?;
        let read = page.len();
        if let Some(last) = page.last() {
            *after = last.position;
        }
        self.buffer.extend(page);
        if read < self.page_size as usize {
            *after = (*after).max(head);
            self.on_feed = self.feed.is_some();
        }
        Ok(read)
    }
}
