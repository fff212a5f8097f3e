//! The send deadline: a request leaves the engine only while its owner says it may.
//!
//! A worker runs a task only while its heartbeat is valid; it stops the task when the heartbeat
//! lapses, but only when its heartbeat loop wakes up to notice. After a process pause (SIGSTOP,
//! a frozen VM, a long GC-like stall) every task wakes at once, and without a check at the gate
//! up to `concurrency` requests per task could go out before the loop notices. So the engine
//! asks, right before each request is sent, whether `now` is still before the instant its owner
//! published; past it (or with none published) the request waits: the owner's lapse stops the
//! crawl, or a renewal moves the instant on and the request goes out. What it cannot hold back is
//! a request handed to the HTTP client just before the pause, whose bytes the client's
//! connection task writes on waking.

use tokio::{sync::watch, time::Instant};

/// Until when the engine may send requests; see the module docs. The default has no deadline.
#[derive(Clone, Debug, Default)]
pub struct SendDeadline(Option<watch::Receiver<Option<Instant>>>);

impl SendDeadline {
    /// Requests may be sent while `now` is before the value of `valid_until` (`None`: not now).
    pub fn new(valid_until: watch::Receiver<Option<Instant>>) -> Self {
        Self(Some(valid_until))
    }

    /// Whether a request may be sent at `now`.
    pub fn allows(&self, now: Instant) -> bool {
        self.0
            .as_ref()
            .is_none_or(|rx| rx.borrow().is_some_and(|until| now < until))
    }

    /// Returns once a request may be sent now; waits while it may not (forever if the
    /// publisher is gone). The caller drops the future to give up (cancellation).
    pub async fn open(&self) {
        let Some(rx) = &self.0 else { return };
        let mut rx = rx.clone();
        loop {
            let until = *rx.borrow_and_update();
            if until.is_some_and(|until| Instant::now() < until) {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_deadline_always_allows() {
        assert!(SendDeadline::default().allows(Instant::now()));
    }

    #[test]
    fn a_request_may_go_only_before_the_published_instant() {
        let now = Instant::now();
        let (tx, rx) = watch::channel(None);
        let gate = SendDeadline::new(rx);
        assert!(!gate.allows(now), "nothing published: not now");
        tx.send_replace(Some(now + Duration::from_secs(1)));
        assert!(gate.allows(now));
        assert!(!gate.allows(now + Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_request_goes_when_the_deadline_moves_on() {
        let (tx, rx) = watch::channel(Some(Instant::now()));
        let gate = SendDeadline::new(rx);
        let waiting = tokio::spawn(async move { gate.open().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "past the deadline: held");
        tx.send_replace(Some(Instant::now() + Duration::from_secs(1)));
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("released by the renewal")
            .unwrap();
    }
}
