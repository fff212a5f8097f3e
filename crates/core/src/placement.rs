//! One placement decision: filter every worker, score the survivors with a policy, break ties by
//! name. This is what the controller calls for each unassigned or orphaned resource.

use std::num::NonZeroU64;

use super::diagnosis::Diagnosis;
use super::filter::{Unfit, filter};
use super::hosts::Affinity;
use super::policy::Policy;
use super::selector::WorkerSelector;
use super::worker::Worker;

/// What a resource asks of a worker.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Request {
    /// Load units the resource costs (`spec.weight`); at least one, so every resource counts.
    pub weight: NonZeroU64,
    /// `spec.workerSelector`; empty when the resource may run anywhere.
    pub selector: WorkerSelector,
    /// The worker host affinity binds the resource to ([`super::hosts::Affinity::Bound`]);
    /// `None`: any worker.
    pub hosts_on: Option<String>,
}

impl Request {
    pub fn new(weight: NonZeroU64) -> Self {
        Self {
            weight,
            selector: WorkerSelector::everything(),
            hosts_on: None,
        }
    }

    /// Weight one, any worker: the original design's only kind of resource.
    pub fn unit() -> Self {
        Self::new(NonZeroU64::MIN)
    }

    #[must_use]
    pub fn with_selector(mut self, selector: WorkerSelector) -> Self {
        self.selector = selector;
        self
    }

    /// Only worker `worker` may take it (host affinity).
    #[must_use]
    pub fn with_hosts_on(mut self, worker: impl Into<String>) -> Self {
        self.hosts_on = Some(worker.into());
        self
    }
}

impl Default for Request {
    fn default() -> Self {
        Self::unit()
    }
}

/// Where a resource should go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement<'w> {
    /// The chosen worker, as it was before this decision (the caller assumes the weight).
    pub worker: &'w Worker,
    /// The deciding policy's name, for the `Assigned` condition's reason.
    pub policy: &'static str,
}

/// Chooses a worker for `request`, or says why none can take it.
///
/// Pure and deterministic: the same workers (in any order) and request give the same answer.
/// The caller must "assume" the decision (add the weight to the chosen worker's load) before
/// the next call, so that consecutive decisions see each other. Worker names must be unique,
/// as Pod names are; they break ties.
pub fn place<'w>(
    policy: &dyn Policy,
    workers: impl IntoIterator<Item = &'w Worker>,
    request: &Request,
) -> Result<Placement<'w>, Diagnosis> {
    choose(policy, workers, request).map(|(_, worker)| Placement {
        worker,
        policy: policy.name(),
    })
}

/// [`place`] under host affinity: a resource bound to a worker may go only there, one whose hosts
/// are split between workers (or crawled in another namespace) nowhere; a failure's diagnosis
/// ends with the host, the worker crawling it and what to do ([`Affinity::explain`]).
pub fn place_with_hosts<'w>(
    policy: &dyn Policy,
    workers: impl IntoIterator<Item = &'w Worker>,
    request: &Request,
    affinity: &Affinity,
) -> Result<Placement<'w>, Diagnosis> {
    let placed = match affinity {
        Affinity::Free => place(policy, workers, request),
        Affinity::Bound(hold) => {
            let bound = request.clone().with_hosts_on(hold.holder.worker.clone());
            place(policy, workers, &bound)
        }
        Affinity::Split(..) | Affinity::OtherNamespace(_) => {
            let mut diagnosis = Diagnosis::new(request.weight.get());
            for worker in workers {
                diagnosis.record(filter(worker, request).err().map_or(
                    Unfit::HostsElsewhere,
                    |unfit| match unfit {
                        Unfit::InsufficientCapacity => Unfit::HostsElsewhere,
                        other => other,
                    },
                ));
            }
            Err(diagnosis)
        }
    };
    placed.map_err(|d| match affinity.explain() {
        Some(note) => d.with_note(note),
        None => d,
    })
}

/// [`place`], also returning the chosen worker's position in `workers` so that an owner of the
/// table can assume the decision without a lookup.
pub(super) fn choose<'w>(
    policy: &dyn Policy,
    workers: impl IntoIterator<Item = &'w Worker>,
    request: &Request,
) -> Result<(usize, &'w Worker), Diagnosis> {
    let mut diagnosis = Diagnosis::new(request.weight.get());
    let mut best: Option<(usize, &'w Worker)> = None;
    for (position, worker) in workers.into_iter().enumerate() {
        if let Err(unfit) = filter(worker, request) {
            diagnosis.record(unfit);
            continue;
        }
        let better = best.is_none_or(|(_, best)| {
            policy
                .compare(request, worker, best)
                .then_with(|| worker.name.cmp(&best.name))
                .is_lt()
        });
        if better {
            best = Some((position, worker));
        }
    }
    best.ok_or(diagnosis)
}

#[cfg(test)]
mod tests {
    use super::super::policy::{BinPack, LeastLoaded};
    use super::super::worker::{NotReady, Readiness};
    use super::*;

    fn weight(weight: u64) -> Request {
        Request::new(NonZeroU64::new(weight).unwrap())
    }

    #[test]
    fn picks_the_least_loaded_eligible_worker() {
        let workers = [
            Worker::new("worker-0").with_readiness(Readiness::NotReady(NotReady::PodNotReady)),
            Worker::new("worker-1").with_load(3),
            Worker::new("worker-2")
                .with_load(1)
                .with_label("gpu", "true"),
            Worker::new("worker-3").with_load(2),
        ];
        let any = Request::unit();
        let gpu_free = Request::unit().with_selector(
            WorkerSelector::default()
                .with_requirement("gpu", super::super::selector::Operator::DoesNotExist),
        );
        assert_eq!(
            place(&LeastLoaded, &workers, &any).unwrap().worker.name,
            "worker-2"
        );
        assert_eq!(
            place(&LeastLoaded, &workers, &gpu_free)
                .unwrap()
                .worker
                .name,
            "worker-3"
        );
        assert_eq!(
            place(&BinPack, &workers, &gpu_free).unwrap().worker.name,
            "worker-1"
        );
        assert_eq!(
            place(&LeastLoaded, &workers, &any).unwrap().policy,
            "LeastLoaded"
        );
    }

    #[test]
    fn ties_go_to_the_smallest_name_whatever_the_order() {
        let workers = [
            Worker::new("worker-b"),
            Worker::new("worker-c"),
            Worker::new("worker-a"),
        ];
        for policy in [&LeastLoaded as &dyn Policy, &BinPack] {
            assert_eq!(
                place(policy, &workers, &Request::unit())
                    .unwrap()
                    .worker
                    .name,
                "worker-a"
            );
            assert_eq!(
                place(policy, workers.iter().rev(), &Request::unit())
                    .unwrap()
                    .worker
                    .name,
                "worker-a"
            );
        }
    }

    #[test]
    fn a_resource_heavier_than_any_free_capacity_is_unschedulable() {
        let workers = [
            Worker::new("worker-1").with_capacity(10).with_load(7),
            Worker::new("worker-2").with_capacity(4),
            Worker::new("worker-3")
                .with_readiness(Readiness::NotReady(NotReady::NoAddress))
                .with_capacity(100),
        ];
        let diagnosis = place(&LeastLoaded, &workers, &weight(5)).unwrap_err();
        assert_eq!(diagnosis.count(Unfit::InsufficientCapacity), 2);
        assert_eq!(diagnosis.reason(), "NoEligibleWorker");
        assert_eq!(
            diagnosis.to_string(),
            "0/3 workers eligible: 1 has no Pod IP, 2 have insufficient capacity for weight 5"
        );
        assert_eq!(
            place(&LeastLoaded, &workers, &weight(4))
                .unwrap()
                .worker
                .name,
            "worker-2"
        );
    }

    #[test]
    fn host_affinity_binds_to_the_worker_crawling_the_hosts() {
        use super::super::hosts::{Hold, Holder};
        let workers = [
            Worker::new("worker-1").with_capacity(2).with_load(2),
            Worker::new("worker-2"),
        ];
        let hold = |worker: &str| Hold {
            host: "books.example.org".into(),
            holder: Holder::new("ns", worker),
            task: "a".into(),
        };
        let free = place_with_hosts(&LeastLoaded, &workers, &Request::unit(), &Affinity::Free);
        assert_eq!(free.unwrap().worker.name, "worker-2");
        let bound = place_with_hosts(
            &LeastLoaded,
            &workers,
            &Request::unit(),
            &Affinity::Bound(hold("worker-2")),
        );
        assert_eq!(bound.unwrap().worker.name, "worker-2");
        let full = place_with_hosts(
            &LeastLoaded,
            &workers,
            &Request::unit(),
            &Affinity::Bound(hold("worker-1")),
        )
        .unwrap_err();
        assert_eq!(
            full.to_string(),
            "0/2 workers eligible: 1 does not crawl its hosts, 1 has insufficient capacity for \
             weight 1; host books.example.org is crawled on worker worker-1 (by task a) and tasks \
             that share a host run on one worker, so that the host's politeness budget holds for \
             the whole installation: make room on worker-1 (raise its capacity or stop a task \
             there) or make it ready, or crawl other hosts (spec.allowedHosts); the task waits \
             until then"
        );
        let split = place_with_hosts(
            &LeastLoaded,
            &workers,
            &Request::unit(),
            &Affinity::Split(hold("worker-1"), hold("worker-2")),
        )
        .unwrap_err();
        assert_eq!(split.count(Unfit::HostsElsewhere), 2);
        assert!(split.to_string().starts_with(
            "0/2 workers eligible: 2 do not crawl its hosts; host books.example.org is crawled"
        ));
    }

    #[test]
    fn no_workers_at_all() {
        let diagnosis = place(&LeastLoaded, &[], &Request::unit()).unwrap_err();
        assert_eq!(diagnosis.reason(), "NoWorkers");
        assert_eq!(
            diagnosis.to_string(),
            "0/0 workers eligible: no worker Pods found"
        );
    }
}
