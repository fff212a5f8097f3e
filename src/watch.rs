//! Watches whose liveness is checked, not assumed.
//!
//! A watch is a long HTTP response. When the path to the API server goes silent (a NAT or load
//! balancer that lost its state: no FIN, no RST, bytes simply stop), nothing in kube 5 notices
//! for 295 s: the client has no read timeout and kube-runtime's watcher waits out the server's
//! watch timeout (290 s) plus 5 s. Meanwhile new connections work, so everything else looks fine.
//!
//! Bookmarks do not help here: the API server's watch cache sends one only when its own version
//! of that resource type has moved past the watch's (checked against kube-apiserver 1.37: a quiet
//! resource type gets none, whatever the watch's timeout), so their absence proves nothing.
//!
//! So a checked watch works in cycles: a consistent LIST (a quorum read, complete as of the moment
//! it was *sent*), then a watch from that list's version that the server ends after
//! one [`Cycle`], then the next LIST. The watch carries the changes at once; the LISTs
//! prove the view complete as of their send times ([`Update::Listed`]'s `as_of`), the same
//! conservative anchoring as the heartbeat, which counts from the send time of a renewal. A watch
//! the server has not ended [`IDLE`] after its deadline went silent: it is dropped (which closes
//! its connection: kube's client speaks HTTP/1.1, one request per connection at a time) and the
//! next LIST goes out on a new connection. A LIST is bounded by [`LIST_TIMEOUT`] the same way.
//!
//! **Freshness.** Anchors come one cycle apart, so a view whose latest anchor is older than
//! [`Cycle::stale_after`] is not known fresh: at least one whole cycle failed. Each consumer
//! decides what that means: a worker stops its tasks and withholds its heartbeat.
//!
//! **Cost and cycle length.** One small LIST and one watch request per cycle per checked watch (a
//! worker's assignments are field-selected, so its LIST is small and served from the watch cache).
//! The cycle is the trade between that cost and how soon a silent connection is noticed: the
//! controller's watch of the heartbeats uses [`Cycle::SHORT`] (one process); a worker's watch of
//! its assignments uses a cycle that grows with its heartbeat duration
//! ([`crate::heartbeat::watch_cycle`]: 15 s at the default 50 s), so that an idle worker costs
//! the API server about what a kubelet does.

use std::{fmt::Debug, time::Duration};

use futures::{Stream, TryStreamExt};
use kube::{
    Api, Resource,
    api::{ListParams, WatchEvent, WatchParams},
};
use serde::de::DeserializeOwned;
use tokio::time::{Instant, timeout};

/// A watch the server has not ended this long after its deadline went silent.
pub const IDLE: Duration = Duration::from_secs(2);

/// Bound on each LIST (a consistent read from the watch cache: milliseconds when all is well).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// The length of a checked watch's cycle: the server-side timeout of each watch (whole seconds,
/// as the API takes it), and so how often the view's freshness is proven.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cycle {
    secs: u32,
}

impl Cycle {
    /// The shortest cycle (and the controller's): the view is proven every 2 s.
    pub const SHORT: Self = Self { secs: 2 };

    /// A cycle of `secs` seconds, at least [`Cycle::SHORT`].
    pub fn of_secs(secs: u32) -> Self {
        Self {
            secs: secs.max(Self::SHORT.secs),
        }
    }

    /// The cycle's length.
    pub fn length(self) -> Duration {
        Duration::from_secs(u64::from(self.secs))
    }

    /// A view whose latest anchor is older than this is not known fresh: a live view is about
    /// one cycle (plus a round trip) old when the next anchor lands, and this also lets one LIST
    /// time out (e.g. sent on a pooled connection that went silent) and the next one succeed on
    /// a new connection. 5 s for [`Cycle::SHORT`].
    pub fn stale_after(self) -> Duration {
        self.length() + LIST_TIMEOUT + Duration::from_secs(1)
    }

    /// Whether a view whose latest anchor is `anchor` is known fresh at `now`.
    pub fn is_fresh(self, anchor: Option<Instant>, now: Instant) -> bool {
        anchor.is_some_and(|a| now.saturating_duration_since(a) < self.stale_after())
    }
}

/// What a checked watch delivers.
#[derive(Debug)]
pub enum Update<K> {
    /// A (re)list: every matching object, complete as of `as_of` (when the LIST was sent). It
    /// replaces what came before, so an object deleted while the watch was down goes away too.
    Listed { items: Vec<K>, as_of: Instant },
    /// An object was added or changed.
    Apply(K),
    /// An object was deleted or stopped matching the selector.
    Delete(K),
    /// The watch failed or went silent; it is being re-established (the message says why).
    Failed(String),
}

/// Which objects to watch.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub fields: Option<String>,
    pub labels: Option<String>,
}

impl Selector {
    fn list_params(&self) -> ListParams {
        let mut lp = ListParams::default();
        lp.field_selector.clone_from(&self.fields);
        lp.label_selector.clone_from(&self.labels);
        lp
    }

    fn watch_params(&self, cycle: Cycle) -> WatchParams {
        let mut wp = WatchParams::default().timeout(cycle.secs);
        wp.field_selector.clone_from(&self.fields);
        wp.label_selector.clone_from(&self.labels);
        wp
    }
}

/// Lists, then watches until the server ends the watch (after `cycle`), forever (see the module
/// doc). Failures are retried 100 ms, doubling, at most 1 s apart.
///
/// Lists are read whole: meant for small sets (a worker's assignments, the heartbeat Leases),
/// not for every resource of a large cluster.
pub fn checked<K>(
    api: Api<K>,
    selector: Selector,
    cycle: Cycle,
) -> impl Stream<Item = Update<K>> + Send
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    async_stream::stream! {
        // Cycles that ended otherwise than by the server's timeout, in a row.
        let mut failures: u32 = 0;
        loop {
            if failures > 0 {
                let (first, max) = (Duration::from_millis(100), Duration::from_secs(1));
                let delay = crate::retry::doubling_after(first, max, failures);
                tokio::time::sleep(delay).await;
            }
            failures = failures.saturating_add(1);
            let sent = Instant::now();
            let version = match timeout(LIST_TIMEOUT, api.list(&selector.list_params())).await {
                Ok(Ok(list)) => {
                    let Some(v) = list.metadata.resource_version.clone().filter(|v| !v.is_empty()) else {
                        yield Update::Failed("the list carried no resourceVersion".to_owned());
                        continue;
                    };
                    yield Update::Listed { items: list.items, as_of: sent };
                    v
                }
                Ok(Err(e)) => {
                    yield Update::Failed(format!("list failed: {e}"));
                    continue;
                }
                Err(_) => {
                    yield Update::Failed(format!("list unanswered after {LIST_TIMEOUT:?}; trying again on a new connection"));
                    continue;
                }
            };
            let params = selector.watch_params(cycle);
            let deadline = Instant::now() + cycle.length() + IDLE;
            let stream = match tokio::time::timeout_at(deadline, api.watch(&params, &version)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    yield Update::Failed(format!("watch failed to start: {e}"));
                    continue;
                }
                Err(_) => {
                    yield Update::Failed("watch request unanswered; trying again on a new connection".to_owned());
                    continue;
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                match tokio::time::timeout_at(deadline, stream.try_next()).await {
                    Err(_) => {
                        yield Update::Failed(format!(
                            "the watch was not ended {IDLE:?} after its {:?} timeout: the connection went silent; listing again on a new one",
                            cycle.length()
                        ));
                        break;
                    }
                    // The server ended the watch at its timeout: the next cycle starts at once.
                    Ok(Ok(None)) => { failures = 0; break; }
                    Ok(Ok(Some(WatchEvent::Added(obj) | WatchEvent::Modified(obj)))) => yield Update::Apply(obj),
                    Ok(Ok(Some(WatchEvent::Deleted(obj)))) => yield Update::Delete(obj),
                    Ok(Ok(Some(WatchEvent::Bookmark(_)))) => {}
                    Ok(Ok(Some(WatchEvent::Error(e)))) => {
                        // 410 Gone included: the next cycle lists anyway.
                        yield Update::Failed(format!("watch error {}: {}", e.code, e.message));
                        break;
                    }
                    Ok(Err(e)) => {
                        yield Update::Failed(format!("watch stream failed: {e}"));
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failed_list_does_not_make_a_live_view_stale() {
        // A cycle, then a LIST that times out, then one that succeeds at once.
        for cycle in [Cycle::SHORT, Cycle::of_secs(15), Cycle::of_secs(0)] {
            assert!(cycle.length() + LIST_TIMEOUT < cycle.stale_after());
        }
        assert_eq!(Cycle::SHORT.stale_after(), Duration::from_secs(5));
        assert_eq!(Cycle::of_secs(1), Cycle::SHORT);
    }

    #[test]
    fn freshness_needs_an_anchor_younger_than_the_bound() {
        let now = Instant::now() + Duration::from_secs(60);
        let cycle = Cycle::SHORT;
        assert!(!cycle.is_fresh(None, now));
        assert!(cycle.is_fresh(Some(now - Duration::from_secs(1)), now));
        assert!(!cycle.is_fresh(Some(now - cycle.stale_after()), now));
        assert!(Cycle::of_secs(15).is_fresh(Some(now - cycle.stale_after()), now));
    }
}
