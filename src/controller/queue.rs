//! A work queue with client-go's guarantees: a key waiting once is queued once, a key is never
//! processed by two tasks at the same time, and a key added while it is being processed runs again
//! after it is done (so no event is lost between a decision and the next change).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    hash::Hash,
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// Shared handle; clones refer to the same queue.
pub struct WorkQueue<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

struct Shared<K> {
    state: Mutex<State<K>>,
    notify: Notify,
}

struct State<K> {
    ready: VecDeque<K>,
    /// Keys in `ready` (so a key waits at most once).
    queued: HashSet<K>,
    /// Keys handed out and not yet `done`.
    active: HashSet<K>,
    /// Active keys added again meanwhile: they go back to `ready` on `done`.
    dirty: HashSet<K>,
    /// Consecutive failures per key, for backoff.
    failures: HashMap<K, u32>,
    closed: bool,
}

impl<K: Clone + Eq + Hash + Send + 'static> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> WorkQueue<K> {
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ready: VecDeque::new(),
                    queued: HashSet::new(),
                    active: HashSet::new(),
                    dirty: HashSet::new(),
                    failures: HashMap::new(),
                    closed: false,
                }),
                notify: Notify::new(),
            }),
        }
    }

    /// Queue `key` unless it already waits; if it is being processed, run it again afterwards.
    pub fn add(&self, key: K) {
        let mut s = self.shared.state.lock();
        if s.closed || s.queued.contains(&key) {
            return;
        }
        if s.active.contains(&key) {
            s.dirty.insert(key);
            return;
        }
        s.queued.insert(key.clone());
        s.ready.push_back(key);
        drop(s);
        self.shared.notify.notify_one();
    }

    pub fn add_all(&self, keys: impl IntoIterator<Item = K>) {
        for key in keys {
            self.add(key);
        }
    }

    /// Queue `key` after `delay` (used for retries; needs a Tokio runtime).
    pub fn add_after(&self, key: K, delay: Duration) {
        let queue = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            queue.add(key);
        });
    }

    /// Queue `key` again after an exponential backoff for its consecutive failures
    /// (`base`, doubled per failure, at most `max`: [`crate::retry::doubling`]). Returns the
    /// delay chosen.
    pub fn retry(&self, key: K, base: Duration, max: Duration) -> Duration {
        let failures = {
            let mut s = self.shared.state.lock();
            let n = s.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let delay = crate::retry::doubling_after(base, max, failures);
        self.add_after(key, delay);
        delay
    }

    /// Forget the failure count of `key` (it succeeded).
    pub fn forget(&self, key: &K) {
        self.shared.state.lock().failures.remove(key);
    }

    /// The next key to process, waiting for one; `None` once the queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let notified = self.shared.notify.notified();
            {
                let mut s = self.shared.state.lock();
                if s.closed {
                    return None;
                }
                if let Some(key) = s.ready.pop_front() {
                    s.queued.remove(&key);
                    s.active.insert(key.clone());
                    // Wake another waiter if more work is ready.
                    if !s.ready.is_empty() {
                        self.shared.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Mark `key` processed; if it was added meanwhile, it is queued again.
    pub fn done(&self, key: &K) {
        let mut s = self.shared.state.lock();
        s.active.remove(key);
        if s.dirty.remove(key) && !s.closed && s.queued.insert(key.clone()) {
            s.ready.push_back(key.clone());
            drop(s);
            self.shared.notify.notify_one();
        }
    }

    /// Stop handing out keys; waiting `next` calls return `None`.
    pub fn close(&self) {
        self.shared.state.lock().closed = true;
        self.shared.notify.notify_waiters();
    }

    /// Keys waiting (not counting those being processed).
    pub fn len(&self) -> usize {
        self.shared.state.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No key waits and none is being processed.
    pub fn is_idle(&self) -> bool {
        let s = self.shared.state.lock();
        s.ready.is_empty() && s.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiting_key_is_queued_once() {
        let q = WorkQueue::new();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(q.next().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_active_runs_again_after_done_and_never_twice_at_once() {
        let q = WorkQueue::new();
        q.add("a");
        let k = q.next().await.unwrap();
        q.add("a");
        // Not handed out again while active.
        assert!(q.is_empty());
        q.done(&k);
        assert_eq!(q.len(), 1);
        assert_eq!(q.next().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn close_wakes_waiters() {
        let q: WorkQueue<&str> = WorkQueue::new();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(waiter.await.unwrap(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_backs_off_exponentially_and_forget_resets() {
        let q = WorkQueue::new();
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert_eq!(q.retry("a", base, max), Duration::from_millis(100));
        assert_eq!(q.retry("a", base, max), Duration::from_millis(200));
        assert_eq!(q.retry("a", base, max), Duration::from_millis(400));
        assert_eq!(q.retry("a", base, max), Duration::from_millis(800));
        assert_eq!(q.retry("a", base, max), max);
        q.forget(&"a");
        assert_eq!(q.retry("a", base, max), base);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(q.next().await, Some("a"));
    }
}
