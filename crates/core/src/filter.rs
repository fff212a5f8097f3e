//! The filter stage: whether a worker may take a resource at all, and if not, why, as data that
//! the diagnosis aggregates.

use std::fmt;

use super::placement::Request;
use super::worker::{NotReady, Readiness, Worker};

/// Why a worker cannot take a resource. Declaration order is the order filters run and the order
/// a diagnosis lists reasons in, so messages are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Unfit {
    NotReady(NotReady),
    /// The worker's labels do not satisfy the resource's `workerSelector`.
    SelectorMismatch,
    /// Host affinity binds the resource to another worker: a task crawling one of its hosts
    /// runs there ([`super::hosts`]).
    HostsElsewhere,
    /// The worker's load plus the resource's weight would exceed the worker's capacity.
    InsufficientCapacity,
}

impl Unfit {
    /// Every reason, in filter order.
    pub const ALL: [Unfit; 7] = [
        Unfit::NotReady(NotReady::PodNotReady),
        Unfit::NotReady(NotReady::Terminating),
        Unfit::NotReady(NotReady::NoAddress),
        Unfit::NotReady(NotReady::HeartbeatExpired),
        Unfit::SelectorMismatch,
        Unfit::HostsElsewhere,
        Unfit::InsufficientCapacity,
    ];

    /// Position in [`Unfit::ALL`], so that a diagnosis can count in a fixed array.
    pub(super) fn index(self) -> usize {
        match self {
            Unfit::NotReady(NotReady::PodNotReady) => 0,
            Unfit::NotReady(NotReady::Terminating) => 1,
            Unfit::NotReady(NotReady::NoAddress) => 2,
            Unfit::NotReady(NotReady::HeartbeatExpired) => 3,
            Unfit::SelectorMismatch => 4,
            Unfit::HostsElsewhere => 5,
            Unfit::InsufficientCapacity => 6,
        }
    }

    /// The phrase that follows a count in a diagnosis ("1 has no Pod IP", "2 have no Pod IP").
    pub(super) fn phrase(self, count: usize) -> &'static str {
        let one = count == 1;
        match self {
            Unfit::NotReady(NotReady::PodNotReady) => "not ready",
            Unfit::NotReady(NotReady::Terminating) => "terminating",
            Unfit::NotReady(NotReady::NoAddress) if one => "has no Pod IP",
            Unfit::NotReady(NotReady::NoAddress) => "have no Pod IP",
            Unfit::NotReady(NotReady::HeartbeatExpired) => "heartbeat expired",
            Unfit::SelectorMismatch if one => "does not match workerSelector",
            Unfit::SelectorMismatch => "do not match workerSelector",
            Unfit::HostsElsewhere if one => "does not crawl its hosts",
            Unfit::HostsElsewhere => "do not crawl its hosts",
            Unfit::InsufficientCapacity if one => "has insufficient capacity",
            Unfit::InsufficientCapacity => "have insufficient capacity",
        }
    }
}

/// The singular phrase, for logging why one worker was passed over.
impl fmt::Display for Unfit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.phrase(1))
    }
}

/// Runs the filters in order and reports the first that fails, as the Kubernetes scheduler
/// does per node: each worker is counted once in a diagnosis, so the counts add up to the number
/// of workers.
///
/// Host affinity comes after the selector (a worker the selector rules out is reported as such)
/// and before capacity.
/// Readiness comes first because a worker that is going away is not worth reasoning about
/// further; capacity comes last because it is the only reason that changes with every decision.
/// The controller may also use this to ask whether an existing assignment is still acceptable
/// (with the worker's load excluding that resource).
pub fn filter(worker: &Worker, request: &Request) -> Result<(), Unfit> {
    if let Readiness::NotReady(why) = worker.readiness {
        return Err(Unfit::NotReady(why));
    }
    if !request.selector.matches(&worker.labels) {
        return Err(Unfit::SelectorMismatch);
    }
    if request
        .hosts_on
        .as_deref()
        .is_some_and(|bound| bound != worker.name)
    {
        return Err(Unfit::HostsElsewhere);
    }
    match worker.capacity {
        Some(capacity) if worker.load.saturating_add(request.weight.get()) > capacity => {
            Err(Unfit::InsufficientCapacity)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::super::selector::WorkerSelector;
    use super::*;

    #[test]
    fn all_lists_each_reason_at_its_index() {
        for (position, unfit) in Unfit::ALL.into_iter().enumerate() {
            assert_eq!(unfit.index(), position, "{unfit:?}");
        }
        assert!(Unfit::ALL.is_sorted(), "ALL is in declaration order");
    }

    #[test]
    fn filters_run_in_order_and_stop_at_the_first_failure() {
        let gpu =
            Request::unit().with_selector(WorkerSelector::default().with_label("gpu", "true"));
        let heavy = Request::new(NonZeroU64::new(4).unwrap());
        let cases = [
            (
                "ready, matching, fits",
                Worker::new("w").with_label("gpu", "true"),
                &gpu,
                Ok(()),
            ),
            (
                "not ready beats selector and capacity",
                Worker::new("w")
                    .with_readiness(Readiness::NotReady(NotReady::Terminating))
                    .with_capacity(0),
                &gpu,
                Err(Unfit::NotReady(NotReady::Terminating)),
            ),
            (
                "selector beats capacity",
                Worker::new("w").with_capacity(0),
                &gpu,
                Err(Unfit::SelectorMismatch),
            ),
            (
                "exactly full fits",
                Worker::new("w").with_capacity(10).with_load(6),
                &heavy,
                Ok(()),
            ),
            (
                "one over capacity",
                Worker::new("w").with_capacity(10).with_load(7),
                &heavy,
                Err(Unfit::InsufficientCapacity),
            ),
            (
                "bound elsewhere by host affinity beats capacity",
                Worker::new("w").with_capacity(0),
                &Request::unit().with_hosts_on("v"),
                Err(Unfit::HostsElsewhere),
            ),
            (
                "bound here by host affinity",
                Worker::new("v"),
                &Request::unit().with_hosts_on("v"),
                Ok(()),
            ),
            (
                "unbounded always fits",
                Worker::new("w").with_load(u64::MAX),
                &heavy,
                Ok(()),
            ),
        ];
        for (name, worker, request, expected) in cases {
            assert_eq!(filter(&worker, request), expected, "{name}");
        }
    }
}
