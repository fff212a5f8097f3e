//! The wording and the fields of the controller's part of `status`: the `Assigned` condition, the
//! notes of Events, what "unassigned" clears. What users read, in one place.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crawler_core::{Diagnosis, NotReady, Readiness, Request};

use crate::{
    crd::{
        CONDITION_ASSIGNED, CONDITION_RULES_VALID, CONDITION_SCHEDULED, CrawlerResourceStatus,
        Phase,
    },
    telemetry::AssignmentKind,
};

use super::WorkerEntry;

/// Every reason the controller writes: the `Assigned` condition's reason, the Event's reason and,
/// through [`Reason::assignment`], the metric. One enum from the decision to what people read,
/// so no reason is a string compared in two places.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Condition and Event: placed for the first time.
    Assigned,
    /// Condition and Event: moved off a worker that could no longer keep it.
    Reassigned,
    /// Condition and Event: being moved off a worker that is still alive; waiting for it to
    /// confirm the stop or for its heartbeat to lapse (phase `Releasing`).
    Releasing,
    /// Condition and Event: moved by the opt-in rebalance (`--rebalance`) to even out load.
    Rebalanced,
    /// Condition: there is no worker at all.
    NoWorkers,
    /// Condition: there are workers, but none may take the resource (the message says why).
    NoEligibleWorker,
    /// Condition: host affinity (`--host-affinity`) keeps the resource off every worker that
    /// could take it: the worker crawling one of its hosts cannot, or its hosts are crawled on
    /// two workers (the message names the host, the worker and what to do).
    HostAffinity,
    /// Event (Warning) for `NoWorkers` and `NoEligibleWorker`.
    Unschedulable,
    /// Condition and Event (Warning): `spec.workerSelector` cannot be used.
    InvalidWorkerSelector,
    /// Condition and Event: `spec.suspend` is true.
    Suspended,
    /// `Assigned` and `RulesValid` conditions and Event (Warning): `spec.rules` cannot compile.
    InvalidRules,
    /// `RulesValid` condition: every rule compiles.
    RulesCompiled,
    /// `Assigned` condition (False) and Event: the run of the current spec completed; the task
    /// is unassigned for good (phase `Succeeded`) until its spec changes.
    Completed,
    /// `Assigned` condition (False) and Event (Warning): the run failed; unassigned, placed
    /// again after a back-off (phase `BackOff`).
    BackOff,
    /// `Assigned` condition (False) and Event (Warning): more than `spec.backoffLimit` runs
    /// failed; the crawl is `Failed` for good until its spec changes.
    BackoffLimitExceeded,
    /// `Assigned` condition (False) and Event (Warning): a run took longer than
    /// `spec.activeDeadlineSeconds`; the crawl is `Failed` for good until its spec changes.
    DeadlineExceeded,
    /// `Scheduled` condition: the schedule is in force (the message says what its last firing
    /// did).
    Scheduled,
    /// `Scheduled` condition and Event: a firing was skipped, the previous run has not finished
    /// (`spec.concurrencyPolicy` Forbid).
    ScheduleSkipped,
    /// `Scheduled` condition and Event (Warning): a firing could not start within
    /// `spec.startingDeadlineSeconds`.
    MissedSchedule,
    /// `Scheduled` and `Assigned` conditions and Event (Warning): `spec.schedule` or
    /// `spec.timeZone` cannot be used; the crawl is not run.
    InvalidSchedule,
}

impl Reason {
    /// The `CamelCase` spelling in conditions and Events.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "Assigned",
            Self::Reassigned => "Reassigned",
            Self::Releasing => "Releasing",
            Self::Rebalanced => "Rebalanced",
            Self::NoWorkers => "NoWorkers",
            Self::NoEligibleWorker => "NoEligibleWorker",
            Self::HostAffinity => "HostAffinity",
            Self::Unschedulable => "Unschedulable",
            Self::InvalidWorkerSelector => "InvalidWorkerSelector",
            Self::Suspended => "Suspended",
            Self::InvalidRules => "InvalidRules",
            Self::RulesCompiled => "RulesCompiled",
            Self::Completed => "Completed",
            Self::BackOff => "BackOff",
            Self::BackoffLimitExceeded => "BackoffLimitExceeded",
            Self::DeadlineExceeded => "DeadlineExceeded",
            Self::Scheduled => "Scheduled",
            Self::ScheduleSkipped => "ScheduleSkipped",
            Self::MissedSchedule => "MissedSchedule",
            Self::InvalidSchedule => "InvalidSchedule",
        }
    }

    /// The condition's reason when placement found no worker.
    pub fn unschedulable(diagnosis: &Diagnosis) -> Self {
        if diagnosis.workers() == 0 {
            Self::NoWorkers
        } else if diagnosis.hosts_elsewhere() {
            Self::HostAffinity
        } else {
            Self::NoEligibleWorker
        }
    }

    /// Which placement this is, for the assignments metric; `None` when it places nothing.
    pub fn assignment(self) -> Option<AssignmentKind> {
        match self {
            Self::Assigned => Some(AssignmentKind::Assigned),
            Self::Reassigned => Some(AssignmentKind::Reassigned),
            Self::Rebalanced => Some(AssignmentKind::Rebalanced),
            _ => None,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a resource's worker can no longer keep it, for the Reassigned event.
pub(super) fn lost_reason(worker: Option<&WorkerEntry>, request: &Request) -> &'static str {
    match worker.map(|w| {
        (
            w.worker.readiness,
            request.selector.matches(&w.worker.labels),
        )
    }) {
        None => "its Pod is gone",
        Some((Readiness::NotReady(NotReady::PodNotReady), _)) => "its Pod is not ready",
        Some((Readiness::NotReady(NotReady::Terminating), _)) => "its Pod is terminating",
        Some((Readiness::NotReady(NotReady::NoAddress), _)) => "its Pod has no IP",
        Some((Readiness::NotReady(NotReady::HeartbeatExpired), _)) => {
            "its heartbeat expired or was released"
        }
        Some((Readiness::Ready, false)) => "it no longer matches spec.workerSelector",
        Some((Readiness::Ready, true)) => "it cannot keep it",
    }
}

pub(super) fn stop_note(current: &CrawlerResourceStatus, why: &str) -> String {
    match &current.assigned_worker {
        Some(w) => format!("{why}: unassigned from worker {w}"),
        None => why.to_owned(),
    }
}

pub(super) fn address(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The status fields the controller owns (what its server-side apply sends).
pub(super) fn controller_fields(status: &CrawlerResourceStatus) -> CrawlerResourceStatus {
    CrawlerResourceStatus {
        phase: status.phase,
        assigned_worker: status.assigned_worker.clone(),
        assigned_address: status.assigned_address.clone(),
        assigned_at: status.assigned_at.clone(),
        assignments: status.assignments,
        run: status.run,
        observed_generation: status.observed_generation,
        last_worker: status.last_worker.clone(),
        completed_at: status.completed_at.clone(),
        completed_generation: status.completed_generation,
        failures: status.failures,
        last_failure: status.last_failure.clone(),
        retry_at: status.retry_at.clone(),
        failed_at: status.failed_at.clone(),
        last_schedule_time: status.last_schedule_time.clone(),
        last_successful_time: status.last_successful_time.clone(),
        next_schedule_time: status.next_schedule_time.clone(),
        // Stamped at write time (the term that decides the write), never compared: a new
        // leader does not rewrite a resource whose decision is still right.
        controller_term: None,
        progress: None,
        conditions: status
            .conditions
            .iter()
            .filter(|c| {
                c.type_ == CONDITION_ASSIGNED
                    || c.type_ == CONDITION_RULES_VALID
                    || c.type_ == CONDITION_SCHEDULED
            })
            .cloned()
            .collect(),
    }
}

pub(super) fn set_unassigned(status: &mut CrawlerResourceStatus, phase: Phase) {
    status.phase = Some(phase);
    status.assigned_worker = None;
    status.assigned_address = None;
    status.assigned_at = None;
}

/// Set the `Assigned` condition; `lastTransitionTime` moves only when the status flips.
pub(super) fn set_assigned_condition(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    assigned: bool,
    reason: Reason,
    message: &str,
    now: Timestamp,
) {
    let status = if assigned { "True" } else { "False" };
    let last_transition_time = current
        .condition(CONDITION_ASSIGNED)
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    desired.conditions.retain(|c| c.type_ != CONDITION_ASSIGNED);
    desired.conditions.insert(
        0,
        Condition {
            type_: CONDITION_ASSIGNED.to_owned(),
            status: status.to_owned(),
            reason: reason.as_str().to_owned(),
            message: message.to_owned(),
            last_transition_time,
            observed_generation: desired.observed_generation,
        },
    );
}
