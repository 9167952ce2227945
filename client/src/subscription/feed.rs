//! One reader of the global log for all the subscriptions of an [`crate::EventStore`].
//!
//! A subscription that has caught up with the head no longer reads the log itself: it takes
//! the events after its checkpoint from the pages the feed's reader has just read, filtering
//! them by type and category on the client, and waits for the feed's next page instead of
//! the wake-ups. So N subscriptions that follow the log cost one read per wake-up, not N.
//!
//! The feed keeps the last pages it read, up to [`KEPT_EVENTS`] events. A subscription whose
//! checkpoint is older than the oldest of them (it was slow, or the feed started after it)
//! reads on its own until it has caught up again, so a slow subscriber never holds the
//! reader back, and the feed's memory stays bounded.
//!
//! Pages are contiguous: each one holds every event after the previous one's last, in
//! order. A subscription at checkpoint `c` may continue from any page that starts at or
//! before `c` (the events up to `c` are the ones it has seen), which is what makes joining
//! and leaving the feed lose and repeat nothing.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Follow, Listener, SubscriptionOptions, Target};
use crate::retry::Backoff;
use crate::RecordedEvent;

/// Events the feed keeps for subscriptions that are a little behind.
pub(crate) const KEPT_EVENTS: usize = 20_000;
/// Events per read of the feed's reader.
const PAGE: u32 = 1_000;

/// Events read in one go: every event after `after` up to the last of `events`.
struct Page {
    after: u64,
    events: Vec<RecordedEvent>,
}

impl Page {
    fn last(&self) -> u64 {
        self.events
            .last()
            .map_or(self.after, |event| event.position)
    }
}

#[derive(Default)]
struct Pages {
    /// Where the reader is: everything up to here was read. `None` until it started.
    cursor: Option<u64>,
    pages: VecDeque<Page>,
    events: usize,
}

/// What [`Feed::take`] found after a checkpoint.
pub(crate) enum Take {
    /// Events after the checkpoint that the filter keeps (maybe none), and the checkpoint
    /// to continue from: the last event looked at.
    Events(Vec<RecordedEvent>, u64),
    /// Nothing after the checkpoint yet: wait for the next page.
    Nothing,
    /// The feed does not reach back to the checkpoint: read the log directly.
    Behind,
}

/// The shared reader and the pages it read; it stops when the last subscription using it
/// is dropped.
pub(crate) struct Feed {
    pages: Arc<Mutex<Pages>>,
    published: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Feed {
    /// A view of the feed for one subscription.
    pub(crate) fn reader(feed: &Arc<Feed>) -> FeedReader {
        FeedReader {
            feed: Arc::clone(feed),
            published: feed.published.clone(),
        }
    }
}

/// One subscription's view of the feed: its pages, and the last publication it has seen.
pub(crate) struct FeedReader {
    feed: Arc<Feed>,
    published: watch::Receiver<u64>,
}

impl FeedReader {
    /// Up to `max` events after `after` that `keep` keeps, from the pages kept. What is
    /// published from here on counts as new for [`FeedReader::next_page`].
    pub(crate) fn take(
        &mut self,
        after: u64,
        max: usize,
        keep: impl Fn(&RecordedEvent) -> bool,
    ) -> Take {
        self.published.borrow_and_update();
        self.feed
            .pages
            .lock()
            .expect("feed lock is never poisoned")
            .take(after, max, keep)
    }

    /// Waits for a page published since the last take; false when the feed's reader has
    /// stopped (on an error that retrying cannot fix).
    pub(crate) async fn next_page(&mut self) -> bool {
        self.published.changed().await.is_ok()
    }
}

impl Pages {
    fn take(&self, after: u64, max: usize, keep: impl Fn(&RecordedEvent) -> bool) -> Take {
        let Some(cursor) = self.cursor else {
            return Take::Behind;
        };
        let starts = self.pages.front().map_or(cursor, |page| page.after);
        if after < starts {
            return Take::Behind;
        }
        if after >= cursor {
            return Take::Nothing;
        }
        let mut taken = Vec::new();
        let mut checkpoint = after;
        // The first page that holds events after the checkpoint.
        let first = self.pages.partition_point(|page| page.last() <= after);
        'pages: for page in self.pages.range(first..) {
            let from = page.events.partition_point(|event| event.position <= after);
            for event in &page.events[from..] {
                if taken.len() == max {
                    break 'pages;
                }
                if keep(event) {
                    taken.push(event.clone());
                }
                checkpoint = event.position;
            }
        }
        Take::Events(taken, checkpoint)
    }

    /// Adds a page read after the last one, dropping the oldest beyond [`KEPT_EVENTS`].
    fn push(&mut self, page: Page) {
        self.cursor = Some(page.last());
        self.events += page.events.len();
        self.pages.push_back(page);
        while self.events > KEPT_EVENTS && self.pages.len() > 1 {
            let dropped = self.pages.pop_front().expect("more than one page");
            self.events -= dropped.events.len();
        }
    }
}

/// The feed of an event store, started on first use.
#[derive(Default)]
pub(crate) struct SharedFeed(Mutex<Weak<Feed>>);

impl std::fmt::Debug for SharedFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedFeed")
    }
}

impl SharedFeed {
    pub(crate) fn get(&self, pool: &PgPool, listener: Arc<Listener>) -> Arc<Feed> {
        let mut slot = self.0.lock().expect("feed lock is never poisoned");
        if let Some(feed) = slot.upgrade() {
            return feed;
        }
        let pages = Arc::new(Mutex::new(Pages::default()));
        let (sender, published) = watch::channel(0);
        let task = tokio::spawn(read(pool.clone(), listener, pages.clone(), sender));
        let feed = Arc::new(Feed {
            pages,
            published,
            task,
        });
        *slot = Arc::downgrade(&feed);
        feed
    }
}

/// The reader: follows the log from the head at its start, as a subscription does (wake-ups,
/// re-checks, the timer poll, retries), publishing each page it reads.
async fn read(
    pool: PgPool,
    listener: Arc<Listener>,
    pages: Arc<Mutex<Pages>>,
    published: watch::Sender<u64>,
) {
    let mut backoff = Backoff::TRANSIENT;
    let head = loop {
        match sqlx::query_scalar::<_, i64>("SELECT eventstore.head_position()")
            .fetch_one(&pool)
            .await
        {
            Ok(head) => break u64::try_from(head).unwrap_or_default(),
            Err(error) => {
                tracing::debug!(%error, "subscription feed cannot read the head; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    };
    let options = SubscriptionOptions::default().after(head).page_size(PAGE);
    let mut follow = Follow::new(pool, listener, None, &Target::All, &options);
    pages.lock().expect("feed lock is never poisoned").cursor = Some(head);
    loop {
        let after = follow.checkpoint().unwrap_or(head);
        match follow.refill().await {
            Some(Ok(())) => {}
            // Only errors that retrying cannot fix end a follow; the subscriptions read on
            // their own then, and report them.
            Some(Err(error)) => {
                tracing::warn!(%error, "subscription feed stopped");
                return;
            }
            None => return,
        }
        let events: Vec<RecordedEvent> = follow.buffer.drain(..).collect();
        pages
            .lock()
            .expect("feed lock is never poisoned")
            .push(Page { after, events });
        published.send_modify(|generation| *generation += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: u64, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: "order-1".into(),
            version: position,
            event_type: event_type.into(),
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            metadata: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            id: uuid::Uuid::nil(),
            recorded_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    fn taken(take: Take) -> Option<(Vec<u64>, u64)> {
        match take {
            Take::Events(events, checkpoint) => {
                Some((events.iter().map(|e| e.position).collect(), checkpoint))
            }
            Take::Nothing => Some((Vec::new(), 0)),
            Take::Behind => None,
        }
    }

    #[test]
    fn a_checkpoint_within_the_pages_continues_exactly_after_itself() {
        let mut pages = Pages::default();
        let all = |_: &RecordedEvent| true;
        assert!(
            taken(pages.take(0, 10, all)).is_none(),
            "not started: behind"
        );
        pages.cursor = Some(10);
        assert_eq!(
            taken(pages.take(10, 10, all)),
            Some((vec![], 0)),
            "at the head"
        );
        assert!(taken(pages.take(9, 10, all)).is_none(), "before the start");
        pages.push(Page {
            after: 10,
            events: vec![event(12, "a"), event(15, "b")],
        });
        pages.push(Page {
            after: 15,
            events: vec![event(16, "a"), event(20, "a")],
        });
        assert_eq!(
            taken(pages.take(10, 10, all)),
            Some((vec![12, 15, 16, 20], 20))
        );
        assert_eq!(taken(pages.take(13, 10, all)), Some((vec![15, 16, 20], 20)));
        assert_eq!(taken(pages.take(13, 2, all)), Some((vec![15, 16], 16)));
        assert_eq!(taken(pages.take(20, 10, all)), Some((vec![], 0)));
        // Filtered events move the checkpoint too.
        let only_b = |e: &RecordedEvent| e.event_type == "b";
        assert_eq!(taken(pages.take(15, 10, only_b)), Some((vec![], 20)));
        assert!(taken(pages.take(9, 10, all)).is_none());
    }

    #[test]
    fn the_oldest_pages_go_beyond_the_kept_events() {
        let mut pages = Pages {
            cursor: Some(0),
            ..Pages::default()
        };
        let per_page = 1_000;
        for page in 0..(KEPT_EVENTS / per_page + 3) as u64 {
            let after = page * per_page as u64;
            let events = (1..=per_page as u64)
                .map(|n| event(after + n, "a"))
                .collect();
            pages.push(Page { after, events });
        }
        assert!(pages.events <= KEPT_EVENTS);
        let starts = pages.pages.front().unwrap().after;
        assert!(starts > 0);
        assert!(taken(pages.take(starts - 1, 10, |_| true)).is_none());
        assert_eq!(
            taken(pages.take(starts, 2, |_| true)),
            Some((vec![starts + 1, starts + 2], starts + 2))
        );
    }
}
