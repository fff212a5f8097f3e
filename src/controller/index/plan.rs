//! The decision for one resource ([`Index::plan`]): what its status should be, from its spec, the
//! status the controller last wrote, its worker's reports and the workers; a placement is
//! "assumed" (counted on the chosen worker) before the lock is released, until the watch shows
//! the write ([`Index::written`]) or the write failed ([`Index::forget`]).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crawler_core::{Policy, Readiness};

use crate::crd::{CONDITION_ASSIGNED, CrawlerResourceStatus, Phase};

use super::{
    Assumption, Index, Key, Namespace, Reason,
    handoff::{Handoff, releasing},
    lifecycle::{again, fail, finish},
    placement::shared_host,
    rules::{RulesCheck, keep_off_workers, set_rules_condition},
    schedule::{self, Step},
    status::{address, controller_fields, set_assigned_condition, set_unassigned, stop_note},
};

/// What the reconciler should do for one resource.
#[derive(Debug, PartialEq)]
pub enum Plan {
    /// The status already says what it should: write nothing.
    Nothing,
    /// The resource is unknown (deleted) or a write of ours is not yet visible: wait for the watch.
    Wait,
    /// Write this status (the controller's fields only), fenced on `resource_version`.
    Write(Box<Write>),
}

#[derive(Debug, PartialEq)]
pub struct Write {
    pub key: Key,
    pub resource_version: String,
    pub status: CrawlerResourceStatus,
    /// Whether this write places the resource (so a failed write must forget the assumption).
    pub assumes: Option<String>,
    /// The Event to publish once the write succeeded.
    pub event: Option<PlanEvent>,
}

/// An Event for `kubectl describe`: (type Normal/Warning, reason, note).
#[derive(Debug, PartialEq, Eq)]
pub struct PlanEvent {
    pub warning: bool,
    pub reason: Reason,
    pub note: String,
}

/// Settings that shape decisions.
pub struct PlanContext<'a> {
    pub policy: &'a dyn Policy,
    /// Port appended to a worker's podIP in `status.assignedAddress`.
    pub worker_port: u16,
    pub now: Timestamp,
}

impl Index {
    /// Decide what `key`'s status should be and, if that places it, assume the decision (count
    /// its weight on the chosen worker) before returning, all under the caller's lock.
    #[allow(clippy::too_many_lines)] // one decision read top to bottom, a branch per case
    pub fn plan(&mut self, key: &Key, ctx: &PlanContext<'_>) -> Plan {
        let (affinity, host_conflict) = self.host_affinity(key);
        let Some(ns) = self.namespaces.get_mut(&key.namespace) else {
            return Plan::Wait;
        };
        let Some(entry) = ns.resources.get(&key.name) else {
            return Plan::Wait;
        };
        if entry.assumed.is_some() {
            // Our last write for it is in flight or not yet seen: deciding again now would decide
            // on a status we already changed.
            return Plan::Wait;
        }
        if ns
            .tombstones
            .get(&key.name)
            .is_some_and(|t| t.uid != entry.uid)
        {
            // An object deleted under this name may still run on its worker: this one waits
            // (`tombstones::successor_hold`); `successors_due` queues it when the hold ends.
            return Plan::Wait;
        }
        let Some(resource_version) = entry.resource_version.clone() else {
            return Plan::Wait;
        };
        let current = &entry.status;
        let mut desired = controller_fields(current);
        if current.observed_generation.is_some() && current.observed_generation != entry.generation
        {
            // A new spec is a new crawl: its failures are counted afresh, and a back-off of
            // the old one does not hold it back.
            desired.failures = None;
            desired.retry_at = None;
        }
        desired.observed_generation = entry.generation;
        let mut event = None;
        let mut assumes = None;

        // A run of the current assignment and spec that completed (or failed) ends that run,
        // wherever its worker stands now (gone, lapsed, being moved off): it is over, not to be
        // moved: it succeeded, or it is counted and retried after a back-off as a new run.
        let finished = entry.completed.as_ref();
        let failed = entry.failed.as_ref().filter(|_| finished.is_none());
        let reported = finished.is_some() || failed.is_some();
        // A scheduled crawl: a firing may start a new run (see `schedule`).
        let (mut step, next_firing) = schedule::step(
            entry.schedule.as_ref(),
            entry.suspend,
            current,
            reported,
            ctx.now,
        );
        desired.next_schedule_time = next_firing.map(Time);
        // `Replace` of a run open on a live worker: released there first; the new run starts
        // once the worker confirmed the stop (or its heartbeat lapsed), as a move does.
        let replace_from = match step {
            Step::Start(at) if !schedule::between_runs(current) => match ns.handoff(entry) {
                Handoff::Waiting => return Plan::Nothing,
                Handoff::Done(_) => None,
                Handoff::None => current
                    .assigned_worker
                    .as_deref()
                    .filter(|w| ns.heartbeat_alive(w))
                    .map(|w| (w.to_owned(), at)),
            },
            _ => None,
        };
        if let Some((_, at)) = &replace_from {
            step = Step::Replacing(*at);
        }
        let starts = match step {
            Step::Start(at) => Some(at),
            _ => None,
        };
        if let Some(at) = starts {
            // A new crawl from the seeds: a new run number, its own failures.
            desired.run = Some(schedule::next_run(current));
            desired.last_schedule_time = Some(Time(at));
            desired.failures = None;
            desired.retry_at = None;
        } else if entry.schedule.is_none()
            && !reported
            && matches!(current.phase, Some(Phase::Succeeded | Phase::Failed))
            && !entry.done()
        {
            // A finished crawl whose spec changed runs again: a new run.
            desired.run = Some(schedule::next_run(current));
        }
        let schedule_invalid = matches!(step, Step::Invalid(_));
        let done = !reported && starts.is_none() && replace_from.is_none() && entry.done();
        let backing_off =
            !reported && starts.is_none() && replace_from.is_none() && entry.backing_off(ctx.now);
        // A handoff under way completes on the old worker's confirmation or its lapse; until
        // then nothing changes (a release is never taken back: assignment N is over).
        let handed_off = match ns.handoff(entry) {
            _ if reported || done || backing_off || replace_from.is_some() => None,
            Handoff::None => None,
            Handoff::Waiting => return Plan::Nothing,
            Handoff::Done(how) => Some(how),
        };
        let keep = current
            .assigned_worker
            .as_deref()
            .filter(|_| handed_off.is_none() && starts.is_none())
            .filter(|_| (entry.move_requested.as_ref()).is_none_or(|m| !m.applies_to(current)))
            .and_then(|w| ns.workers.get(w))
            .filter(|w| w.worker.readiness == Readiness::Ready)
            .filter(|w| matches!(&entry.request, Ok(r) if r.selector.matches(&w.worker.labels)));
        // Host affinity: of two groups that met (a spec change, affinity turned on, a worker
        // back from a lapse), the one on the worker whose name sorts first stays.
        let host_conflict = host_conflict.filter(|_| keep.is_some());
        let keep = keep.filter(|_| host_conflict.is_none());
        // Leaving a worker whose heartbeat is alive: release it there first (phase one).
        let leaves = keep.is_none()
            || entry.suspend
            || schedule_invalid
            || matches!(entry.rules, RulesCheck::Invalid(_))
            || entry.request.is_err();
        let release_from = current
            .assigned_worker
            .as_deref()
            .filter(|_| leaves && handed_off.is_none())
            .filter(|w| ns.heartbeat_alive(w));

        if let Some(run) = finished {
            event = Some(finish(
                &mut desired,
                current,
                run,
                again(entry.schedule.is_some()),
                ctx.now,
            ));
            if entry.schedule.is_some() {
                desired.last_successful_time = Some(Time(ctx.now));
            }
        } else if let Some(run) = failed {
            event = Some(fail(
                &mut desired,
                current,
                run,
                (entry.backoff_limit, self.retry_backoff),
                again(entry.schedule.is_some()),
                ctx.now,
            ));
        } else if done || backing_off {
            // Succeeded or failed for this spec, or waiting out a back-off (the tick queues it
            // at `retryAt`), or a scheduled crawl between runs (the tick queues it at
            // `nextScheduleTime`): nothing to place.
            if entry.schedule.is_some() && matches!(current.phase, None | Some(Phase::Pending)) {
                set_unassigned(&mut desired, Phase::Scheduled);
            }
        } else if let Some((worker, _)) = &replace_from {
            let note = format!(
                "moving off worker {worker} (a firing of spec.schedule replaces run {} with a new \
                 run, spec.concurrencyPolicy Replace): waiting for it to confirm the stop or for \
                 its heartbeat to lapse",
                current.run.unwrap_or(1)
            );
            event = Some(releasing(&mut desired, current, note, ctx.now));
        } else if let Some(worker) = release_from {
            let why = match &host_conflict {
                Some(hold) => shared_host(hold),
                None => ns.leave_reason(entry, worker),
            };
            let note = format!(
                "moving off worker {worker} ({why}): waiting for it to confirm the stop or for its \
                 heartbeat to lapse"
            );
            event = Some(releasing(&mut desired, current, note, ctx.now));
        } else if entry.suspend {
            set_unassigned(&mut desired, Phase::Suspended);
            set_assigned_condition(
                &mut desired,
                current,
                false,
                Reason::Suspended,
                "spec.suspend is true: the task does not run anywhere",
                ctx.now,
            );
            if current.phase != Some(Phase::Suspended) {
                event = Some(PlanEvent {
                    warning: false,
                    reason: Reason::Suspended,
                    note: stop_note(current, "spec.suspend is true"),
                });
            }
        } else if let Step::Invalid(message) = &step {
            event = keep_off_workers(
                &mut desired,
                current,
                (Reason::InvalidSchedule, message),
                ctx.now,
            );
        } else if let RulesCheck::Invalid(message) = &entry.rules {
            event = keep_off_workers(
                &mut desired,
                current,
                (Reason::InvalidRules, message),
                ctx.now,
            );
        } else if let Err(e) = &entry.request {
            set_unassigned(&mut desired, Phase::Unschedulable);
            let message =
                format!("spec.workerSelector is invalid: {e}; fix it with kubectl edit or apply");
            if current
                .condition(CONDITION_ASSIGNED)
                .is_none_or(|c| c.message != message)
            {
                event = Some(PlanEvent {
                    warning: true,
                    reason: Reason::InvalidWorkerSelector,
                    note: message.clone(),
                });
            }
            set_assigned_condition(
                &mut desired,
                current,
                false,
                Reason::InvalidWorkerSelector,
                &message,
                ctx.now,
            );
        } else if let Some(kept) = keep {
            desired.phase = Some(Phase::Assigned);
            desired.assigned_address = kept.ip.as_ref().map(|ip| address(ip, ctx.worker_port));
            if current
                .condition(CONDITION_ASSIGNED)
                .is_none_or(|c| c.status != "True")
            {
                let message = format!("running on worker {}", kept.worker.name);
                set_assigned_condition(
                    &mut desired,
                    current,
                    true,
                    Reason::Assigned,
                    &message,
                    ctx.now,
                );
            }
        } else if let Ok(request) = &entry.request {
            let asked = (entry.move_requested.as_ref()).filter(|m| m.applies_to(current));
            (event, assumes) = ns.place(
                entry.weight,
                request,
                current,
                (handed_off, asked, &affinity, host_conflict.as_ref()),
                &mut desired,
                ctx,
            );
        }

        if let (Some(at), Some(e)) = (starts, event.as_mut()) {
            // The placement's (or why there is none) Event says which run and firing it is.
            e.note = format!(
                "run {} (the firing at {at} of spec.schedule): {}",
                desired.run.unwrap_or(1),
                e.note
            );
        }
        let schedule_event = schedule::set_scheduled_condition(
            &mut desired,
            current,
            &step,
            entry.schedule.as_ref(),
            ctx.now,
        );
        event = event.or(schedule_event);
        set_rules_condition(&mut desired, current, &entry.rules, ctx.now);
        for condition in &mut desired.conditions {
            condition.observed_generation = desired.observed_generation;
        }
        if desired == controller_fields(current) {
            return Plan::Nothing;
        }
        if let Some(worker) = &assumes {
            ns.assume(&key.name, worker.clone());
        }
        Plan::Write(Box::new(Write {
            key: key.clone(),
            resource_version,
            status: desired,
            assumes,
            event,
        }))
    }

    /// The write of a decision succeeded; keep counting it until the watch shows that version.
    pub fn written(&mut self, key: &Key, resource_version: Option<String>) {
        let Some(entry) = self.entry_mut(key) else {
            return;
        };
        if entry.resource_version == resource_version {
            // The watch already delivered this very version: nothing left to wait for.
            entry.assumed = None;
        } else if let Some(a) = &mut entry.assumed {
            a.written_version = resource_version;
        }
    }

    /// The write of a decision failed: forget it, so the load is what the resources say again.
    pub fn forget(&mut self, key: &Key) {
        if let Some(ns) = self.namespaces.get_mut(&key.namespace) {
            ns.change_resource(&key.name, |entry| entry.assumed = None);
        }
    }
}

impl Namespace {
    fn assume(&mut self, name: &str, worker: String) {
        self.change_resource(name, |entry| {
            entry.assumed = Some(Assumption {
                decided_on: entry.resource_version.clone(),
                worker,
                written_version: None,
            });
        });
    }
}
