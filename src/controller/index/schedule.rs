//! Scheduled crawls (`spec.schedule`): what a firing asks of the plan, decided from the
//! resource's spec, the status the controller last wrote and the time. The timing itself is
//! [`crawler_core::Cron`]'s; the plan ([`super::Index::plan`]) carries the step out.
//!
//! A scheduled crawl is between runs when its phase is `Scheduled` (never run), `Succeeded` or
//! `Failed` (the last run finished): nothing is placed until a firing starts a new run. Any other
//! phase means a run is open (assigned, being released, waiting for a worker or a back-off, or
//! suspended mid-run), and a firing then follows `spec.concurrencyPolicy`.

use std::time::Duration;

use jiff::{Timestamp, tz::TimeZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crawler_core::Cron;

use crate::crd::{
    CONDITION_SCHEDULED, ConcurrencyPolicy, CrawlerResource, CrawlerResourceStatus, Phase,
};

use super::{PlanEvent, Reason};

/// `spec.schedule` and the fields that shape it, checked once per resource version.
#[derive(Clone, Debug)]
pub(super) struct Timing {
    cron: Cron,
    zone: TimeZone,
    zone_name: String,
    policy: ConcurrencyPolicy,
    starting_deadline: Option<Duration>,
    /// Where firings count from before the first one was acted on: the resource's creation.
    created: Timestamp,
}

/// The timing of a resource with `spec.schedule`, or what is wrong with it (said to users, with
/// what to do); `None` for a crawl that runs once.
pub(super) fn timing_for(resource: &CrawlerResource) -> Option<Result<Timing, String>> {
    let spec = &resource.spec;
    let text = spec.schedule.as_deref()?;
    Some((|| {
        let cron: Cron = text.parse().map_err(|e| {
            format!("spec.schedule {text:?} is invalid: {e}. Fix it with kubectl edit or apply; the crawl runs once it is valid")
        })?;
        let zone_name = spec.time_zone.clone().unwrap_or_else(|| "UTC".to_owned());
        let zone = jiff::tz::db().get(&zone_name).map_err(|_| {
            format!("spec.timeZone {zone_name:?} is not a time zone the controller knows: use an IANA name such as UTC, Europe/Paris or America/New_York")
        })?;
        Ok(Timing {
            cron,
            zone,
            zone_name,
            policy: spec.concurrency_policy.unwrap_or_default(),
            starting_deadline: spec
                .starting_deadline_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            created: resource
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        })
    })())
}

/// Whether a scheduled crawl with this status is between runs (see the module documentation).
pub(super) fn between_runs(status: &CrawlerResourceStatus) -> bool {
    matches!(
        status.phase,
        None | Some(Phase::Pending | Phase::Scheduled | Phase::Succeeded | Phase::Failed)
    )
}

/// What the firings of a scheduled crawl ask of this plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Not a scheduled crawl.
    None,
    /// `spec.schedule` or `spec.timeZone` cannot be used: the crawl is kept off workers.
    Invalid(String),
    /// `spec.suspend` is true: no firing.
    Suspended,
    /// No firing to act on now: the open run goes on, or the crawl waits between runs. Also
    /// while a run's report is being acted on first: the next plan sees the firing again.
    Wait,
    /// Start a new run for this firing. If a run is open, `Replace` ends it first (a release,
    /// when it runs on a live worker: see the plan).
    Start(Timestamp),
    /// `Replace`: the firing's new run waits for the open run to stop on its live worker (the
    /// plan releases it there: phase `Releasing`). Made by the plan from a `Start`.
    Replacing(Timestamp),
    /// `Forbid`: a run is open, the firing is not run.
    Skip(Timestamp),
    /// The latest firing is older than `spec.startingDeadlineSeconds`: not run.
    Missed(Timestamp),
}

/// The step for a scheduled crawl (`timing`) at `now`, and the next firing to show.
/// `reported`: the assigned worker's report of the current run (completed or failed) is
/// being acted on by this plan.
pub(super) fn step(
    timing: Option<&Result<Timing, String>>,
    suspend: bool,
    status: &CrawlerResourceStatus,
    reported: bool,
    now: Timestamp,
) -> (Step, Option<Timestamp>) {
    let timing = match timing {
        None => return (Step::None, None),
        Some(Err(message)) => return (Step::Invalid(message.clone()), None),
        Some(Ok(timing)) => timing,
    };
    if suspend {
        return (Step::Suspended, None);
    }
    let since = status
        .last_schedule_time
        .as_ref()
        .map_or(timing.created, |t| t.0);
    let firings = timing
        .cron
        .firings(&timing.zone, since, now, timing.starting_deadline);
    let step = match (firings.due, firings.missed) {
        _ if reported => Step::Wait,
        (Some(at), _) if between_runs(status) || timing.policy == ConcurrencyPolicy::Replace => {
            Step::Start(at)
        }
        (Some(at), _) => Step::Skip(at),
        (None, Some(at)) => Step::Missed(at),
        (None, None) => Step::Wait,
    };
    (step, firings.next)
}

/// The run number of a new run: one more than the last, or 1 for a crawl never placed.
pub(super) fn next_run(status: &CrawlerResourceStatus) -> i64 {
    if status.run.is_none() && status.assignments.is_none() {
        1
    } else {
        status.run.unwrap_or(1).saturating_add(1)
    }
}

/// Fills the `Scheduled` condition and returns the Event to publish when it changed (a skipped,
/// missed or invalid schedule; a started run has the placement's Event).
pub(super) fn set_scheduled_condition(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    step: &Step,
    timing: Option<&Result<Timing, String>>,
    now: Timestamp,
) -> Option<PlanEvent> {
    desired
        .conditions
        .retain(|c| c.type_ != CONDITION_SCHEDULED);
    let timing = timing?;
    let what = |t: &Timing| format!("spec.schedule {:?} in {}", t.cron.to_string(), t.zone_name);
    let run = current.run.unwrap_or(1);
    let (status, reason, message, warning) = match (step, timing) {
        (Step::None, _) => return None,
        (Step::Invalid(message), _) | (_, Err(message)) => {
            ("False", Reason::InvalidSchedule, message.clone(), true)
        }
        (Step::Suspended, Ok(t)) => (
            "False",
            Reason::Suspended,
            format!("{}: paused, spec.suspend is true", what(t)),
            false,
        ),
        (Step::Skip(at), Ok(t)) => (
            "True",
            Reason::ScheduleSkipped,
            format!(
                "{}: the firing at {at} was skipped: run {run} has not finished (spec.concurrencyPolicy Forbid)",
                what(t)
            ),
            false,
        ),
        (Step::Missed(at), Ok(t)) => (
            "True",
            Reason::MissedSchedule,
            format!(
                "{}: the firing at {at} was missed: it could not start within spec.startingDeadlineSeconds ({}s)",
                what(t),
                t.starting_deadline.map_or(0, |d| d.as_secs())
            ),
            true,
        ),
        (Step::Replacing(at), Ok(t)) => (
            "True",
            Reason::Scheduled,
            format!(
                "{}: the firing at {at} replaces run {run} (spec.concurrencyPolicy Replace): stopping it on its worker first",
                what(t)
            ),
            false,
        ),
        (Step::Start(at), Ok(t)) => (
            "True",
            Reason::Scheduled,
            format!(
                "{}: the firing at {at} started run {}",
                what(t),
                next_run(current)
            ),
            false,
        ),
        (Step::Wait, Ok(t)) => {
            // Keep what the last firing did; a crawl no firing acted on yet says it waits.
            if let Some(kept) = current
                .condition(CONDITION_SCHEDULED)
                .filter(|c| c.status == "True" && c.message.starts_with(&what(t)))
            {
                desired.conditions.push(kept.clone());
                return None;
            }
            (
                "True",
                Reason::Scheduled,
                format!("{}: waiting for the next firing", what(t)),
                false,
            )
        }
    };
    let changed = current
        .condition(CONDITION_SCHEDULED)
        .is_none_or(|c| c.message != message);
    let last_transition_time = current
        .condition(CONDITION_SCHEDULED)
        .filter(|c| c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    desired.conditions.push(Condition {
        type_: CONDITION_SCHEDULED.to_owned(),
        status: status.to_owned(),
        reason: reason.as_str().to_owned(),
        message: message.clone(),
        last_transition_time,
        observed_generation: desired.observed_generation,
    });
    // A started run has its own Event (the placement's); the others are said once.
    (changed
        && !matches!(
            step,
            Step::Start(_) | Step::Replacing(_) | Step::Wait | Step::Suspended
        ))
    .then_some(PlanEvent {
        warning,
        reason,
        note: message,
    })
}
