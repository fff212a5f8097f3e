//! Moves off a worker. A resource leaving a worker whose heartbeat is alive is released there
//! first (phase `Releasing`, the first phase), and placed again (or unassigned) only once that
//! worker confirmed the stop of that very assignment or its heartbeat lapsed: where a handoff
//! stands, why the resource leaves, and the moves something asked for ([`Index::move_off`]).

use jiff::Timestamp;

use crawler_core::Readiness;

use crate::crd::{CrawlerResourceStatus, Phase};

use super::{
    Index, Key, Namespace, PlanEvent, Reason, ResourceEntry,
    rules::RulesCheck,
    status::{lost_reason, set_assigned_condition},
    workers::Heartbeat,
};

/// A move off `from` of its assignment `assignment`, asked for `why`.
#[derive(Clone, Debug)]
pub(super) struct MoveRequest {
    pub(super) from: String,
    pub(super) assignment: Option<i64>,
    pub(super) why: String,
    /// The reason of the placement that completes it: `Reassigned`, or `Rebalanced` for the
    /// rebalance's moves (so people, and the metrics, can tell them apart).
    pub(super) reason: Reason,
}

impl MoveRequest {
    /// Whether it still applies to a resource with this status.
    pub(super) fn applies_to(&self, status: &CrawlerResourceStatus) -> bool {
        status.assigned_worker.as_deref() == Some(self.from.as_str())
            && status.assignments == self.assignment
    }
}

/// Where a move off a worker stands (see [`Namespace::handoff`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handoff {
    /// The resource is not being released.
    None,
    /// Released on its worker, which is alive and has not confirmed the stop yet.
    Waiting,
    /// The old worker no longer runs it: place it (or unassign it) now.
    Done(HandedOff),
}

/// How a handoff completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum HandedOff {
    /// The old worker reported the stop of that very assignment (`progress.released`).
    Confirmed,
    /// The old worker's heartbeat lapsed (confirmed by a read) or was released: it stopped
    /// every task at least half a heartbeat duration before.
    Lapsed,
    /// The old worker's heartbeat Lease is gone, or was never seen, and a read after the wait
    /// found none: it renewed nothing for longer than its tasks may run without a renewal.
    NoHeartbeat,
}

impl HandedOff {
    /// Why the resource left, for the `Reassigned` note (`None`: the reason the worker lost it,
    /// as for a one-phase move).
    pub(super) fn describe(self) -> Option<&'static str> {
        match self {
            Self::Confirmed => Some("it confirmed the stop"),
            Self::Lapsed => Some("its heartbeat lapsed or was released"),
            Self::NoHeartbeat => None,
        }
    }
}

impl Index {
    /// Moves `key` off `worker` through the handoff, whatever asks for it (a rebalance): the
    /// resource is released there (phase `Releasing` while that worker's heartbeat is alive) and
    /// placed again, least loaded at that moment, once the worker confirmed the stop or its
    /// heartbeat lapsed. `why` is said in the condition and the Event. Returns the keys to
    /// reconcile (none when the resource is not on `worker`, or is already being moved).
    pub fn move_off(&mut self, key: &Key, worker: &str, why: &str) -> Vec<Key> {
        self.request_move(key, worker, why, Reason::Reassigned)
    }

    /// [`Index::move_off`], with the reason its completing placement gives.
    pub(super) fn request_move(
        &mut self,
        key: &Key,
        worker: &str,
        why: &str,
        reason: Reason,
    ) -> Vec<Key> {
        let Some(entry) = self.entry_mut(key) else {
            return Vec::new();
        };
        if entry.status.assigned_worker.as_deref() != Some(worker)
            || entry.status.phase == Some(Phase::Releasing)
            || entry.assumed.is_some()
        {
            return Vec::new();
        }
        entry.move_requested = Some(MoveRequest {
            from: worker.to_owned(),
            assignment: entry.status.assignments,
            why: why.to_owned(),
            reason,
        });
        vec![key.clone()]
    }

    /// Forgets every move asked for and not yet under way (on losing leadership): a move is
    /// asked for by this term's rebalance, within this term's budget; a later term decides its
    /// own. A move already under way (phase `Releasing`) is in status, not here, and completes.
    pub fn forget_move_requests(&mut self) -> usize {
        let mut forgotten = 0;
        for ns in self.namespaces.values_mut() {
            for entry in ns.resources.values_mut() {
                if entry.move_requested.take().is_some() {
                    forgotten += 1;
                }
            }
        }
        forgotten
    }
}

impl Namespace {
    /// Whether `worker` has stopped every task, so the hosts its tasks hold no longer count:
    /// its heartbeat is not alive and it is not ready (the cases where a task leaves it without
    /// a handoff; while a handoff waits, its releasing tasks still hold their hosts).
    pub(super) fn stopped(&self, worker: &str) -> bool {
        !self.heartbeat_alive(worker)
            && self
                .workers
                .get(worker)
                .is_none_or(|w| w.worker.readiness != Readiness::Ready)
    }

    /// Whether `worker` has a heartbeat Lease that is alive (renewed, not released): a move off
    /// it is a handoff. A worker without one (an older worker) cannot confirm, and one whose
    /// heartbeat lapsed or was released has stopped its tasks already: nothing to wait for.
    pub(super) fn heartbeat_alive(&self, worker: &str) -> bool {
        self.heartbeats.get(worker).is_some_and(Heartbeat::alive)
    }

    /// Where the handoff of a resource in phase `Releasing` stands.
    pub(super) fn handoff(&self, entry: &ResourceEntry) -> Handoff {
        let status = &entry.status;
        let Some(worker) = status
            .assigned_worker
            .as_deref()
            .filter(|_| status.phase == Some(Phase::Releasing))
        else {
            return Handoff::None;
        };
        let confirmed = entry
            .released_by
            .as_ref()
            .is_some_and(|(w, n)| w == worker && Some(*n) == status.assignments);
        if confirmed {
            Handoff::Done(HandedOff::Confirmed)
        } else if !self.heartbeats.contains_key(worker) {
            Handoff::Done(HandedOff::NoHeartbeat)
        } else if !self.heartbeat_alive(worker) {
            Handoff::Done(HandedOff::Lapsed)
        } else {
            Handoff::Waiting
        }
    }

    /// Why a resource leaves `worker`, for the `Releasing` condition and Event.
    pub(super) fn leave_reason(&self, entry: &ResourceEntry, worker: &str) -> String {
        if entry.suspend {
            return "spec.suspend is true".to_owned();
        }
        if let Some(Err(_)) = entry.schedule {
            return "spec.schedule cannot be used".to_owned();
        }
        if let RulesCheck::Invalid(_) = entry.rules {
            return "spec.rules cannot be compiled".to_owned();
        }
        if let Some(m) = entry.move_requested.as_ref().filter(|m| m.from == worker) {
            return m.why.clone();
        }
        match &entry.request {
            Err(_) => "spec.workerSelector is invalid".to_owned(),
            Ok(request) => lost_reason(self.workers.get(worker), request).to_owned(),
        }
    }

    /// Resources in phase `Releasing` off `worker`: its heartbeat lapsing completes them.
    pub(super) fn releasing_on(&self, namespace: &str, worker: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| {
                r.status.phase == Some(Phase::Releasing)
                    && r.status.assigned_worker.as_deref() == Some(worker)
            })
            .map(|(name, _)| Key::new(namespace, name.clone()))
            .collect()
    }
}

/// The first phase of a move (or of a `Replace`): the resource stays on its worker, phase
/// `Releasing`, until that worker confirms the stop or its heartbeat lapses; `note` says why.
pub(super) fn releasing(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    note: String,
    now: Timestamp,
) -> PlanEvent {
    desired.phase = Some(Phase::Releasing);
    set_assigned_condition(desired, current, true, Reason::Releasing, &note, now);
    PlanEvent {
        warning: false,
        reason: Reason::Releasing,
        note,
    }
}
