//! One retry policy for every loop of the client: exponential backoff, and the wait for
//! "a wake-up, the poll interval or a stop".

use std::time::Duration;

use tokio::sync::watch;

use crate::subscription::Hint;

/// Exponential backoff between `first` and `last`, doubling after each failure.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    first: Duration,
    last: Duration,
    next: Duration,
}

impl Backoff {
    /// After lost connections and transient errors: 50 ms doubling up to 5 s.
    pub(crate) const TRANSIENT: Backoff =
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5));

    /// Waits from `first`, doubling up to `last`.
    pub(crate) const fn new(first: Duration, last: Duration) -> Backoff {
        Backoff {
            first,
            last,
            next: first,
        }
    }

    /// The wait before the next try; the one after it is twice as long, up to the last.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.last);
        wait
    }

    /// The wait after `attempt` failures in a row (1: the first), without state.
    pub(crate) fn after_attempt(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1_u32 << doublings).min(self.last)
    }

    /// A success: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// Sleeps for `duration` unless `stop` turns true first; returns whether it did.
pub(crate) async fn sleep_or_stop(duration: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        () = tokio::time::sleep(duration) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// What ended a [`wait_for_events`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// A wake-up that may carry something past the checkpoint.
    Hint,
    /// The wait's time ran out.
    Timeout,
    /// `stop` turned true (or its sender is gone).
    Stop,
}

/// Waits until there may be something to read past `checkpoint`: a wake-up whose head is
/// beyond it (or that carries no head), `timeout`, or the stop. Wake-ups at or below the
/// checkpoint are skipped. Without a listener any more (the runtime shutting down), it waits
/// out the timeout.
pub(crate) async fn wait_for_events(
    hints: &mut watch::Receiver<Hint>,
    checkpoint: Option<u64>,
    timeout: Duration,
    mut stop: Option<&mut watch::Receiver<bool>>,
) -> Woken {
    let deadline = tokio::time::Instant::now() + timeout;
    let stopped = async |stop: &mut Option<&mut watch::Receiver<bool>>| match stop {
        Some(stop) => {
            let _ = stop.wait_for(|stop| *stop).await;
        }
        None => std::future::pending().await,
    };
    loop {
        tokio::select! {
            changed = hints.changed() => {
                if changed.is_err() {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => return Woken::Timeout,
                        () = stopped(&mut stop) => return Woken::Stop,
                    }
                }
                let hint = *hints.borrow();
                match (hint.head, checkpoint) {
                    (Some(head), Some(checkpoint)) if head <= checkpoint => continue,
                    _ => return Woken::Hint,
                }
            }
            () = tokio::time::sleep_until(deadline) => return Woken::Timeout,
            () = stopped(&mut stop) => return Woken::Stop,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_last_wait_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(100));
        assert_eq!(backoff.after_attempt(1), Duration::from_millis(100));
        assert_eq!(backoff.after_attempt(3), Duration::from_millis(400));
        assert_eq!(backoff.after_attempt(40), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_at_the_checkpoint_does_not_end_the_wait() {
        let (sender, mut hints) = watch::channel(Hint::default());
        let waiting = tokio::spawn(async move {
            wait_for_events(&mut hints, Some(10), Duration::from_secs(60), None).await
        });
        sender.send_replace(Hint {
            generation: 1,
            head: Some(10),
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        sender.send_replace(Hint {
            generation: 2,
            head: Some(11),
        });
        assert_eq!(waiting.await.unwrap(), Woken::Hint);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_ends_at_its_timeout_or_at_the_stop() {
        let (_sender, mut hints) = watch::channel(Hint::default());
        let woken = wait_for_events(&mut hints, None, Duration::from_secs(1), None).await;
        assert_eq!(woken, Woken::Timeout);
        let (stop_tx, mut stop) = watch::channel(false);
        stop_tx.send_replace(true);
        let woken =
            wait_for_events(&mut hints, None, Duration::from_secs(3600), Some(&mut stop)).await;
        assert_eq!(woken, Woken::Stop);
    }
}
