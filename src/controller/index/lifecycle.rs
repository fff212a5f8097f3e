//! The end of a run and what follows it: a run its worker reported completed ends the crawl
//! (`Succeeded`); one reported failed is counted and retried after a back-off (`BackOff` until
//! `retryAt`), or ends the crawl for good (`Failed`); a finished crawl is deleted once its
//! `ttlSecondsAfterFinished` has passed. The tick asks which back-offs and firings are due.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{CrawlerResourceStatus, Phase};

use super::{
    Index, Key, PlanEvent, Reason, ResourceEntry, schedule,
    status::{set_assigned_condition, set_unassigned},
};

/// A run that failed, as its worker reported it.
#[derive(Clone, Debug)]
pub(super) struct FailedRun {
    pub(super) worker: String,
    pub(super) assignment: i64,
    /// It exceeded `spec.activeDeadlineSeconds` (reason `DeadlineExceeded`): not retried.
    pub(super) deadline: bool,
    pub(super) message: String,
}

/// A run that completed, as its worker reported it.
#[derive(Clone, Debug)]
pub(super) struct CompletedRun {
    pub(super) worker: String,
    pub(super) assignment: i64,
    pub(super) generation: i64,
    pub(super) pages: i64,
}

/// How long a crawl whose run failed waits before it is placed again: `base` after the first
/// failure, doubling, at most `max` (a Job's: 10 s, 20 s, 40 s, ... at most 6 min). The
/// controller's `--backoff-base` and `--backoff-max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBackoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(10),
            max: Duration::from_secs(360),
        }
    }
}

impl RetryBackoff {
    /// The wait after the `failures`-th failed run (1 for the first), from backon's exponential
    /// schedule ([`crate::retry::doubling`]; no jitter: the time is written into
    /// `status.retryAt`, and a decision must be the same whoever makes it).
    pub fn delay(self, failures: u32) -> Duration {
        crate::retry::doubling_after(self.base, self.max, failures).min(self.max)
    }
}

/// A resource whose `ttlSecondsAfterFinished` has passed: the controller deletes it, with these
/// preconditions (a spec changed since, a run again, is a new object version: refused).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub key: Key,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// `progress.reason` of a run stopped by `spec.activeDeadlineSeconds`.
pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";

impl ResourceEntry {
    /// Whether the crawl of the current spec is over (phase `Succeeded` for this generation):
    /// it counts on no worker, waits for none, and is placed again only once its spec changes.
    ///
    /// A scheduled crawl is done between its runs, whatever its spec: only a firing runs it again.
    pub(super) fn done(&self) -> bool {
        if matches!(self.schedule, Some(Ok(_))) {
            return schedule::between_runs(&self.status);
        }
        self.status.succeeded(self.generation) || self.status.failed_for_good(self.generation)
    }

    /// Whether the crawl waits out a back-off after a failed run of the current spec at `now`.
    pub(super) fn backing_off(&self, now: Timestamp) -> bool {
        self.status.phase == Some(Phase::BackOff)
            && self.status.observed_generation == self.generation
            && self.status.retry_at.as_ref().is_some_and(|t| t.0 > now)
    }

    /// When the crawl finished (succeeded, or failed for good), for `ttlSecondsAfterFinished`.
    /// A scheduled crawl never finishes for good (the CRD refuses a TTL with a schedule).
    pub(super) fn finished_at(&self) -> Option<Timestamp> {
        if self.schedule.is_some() {
            None
        } else if self.status.succeeded(self.generation) {
            self.status.completed_at.as_ref().map(|t| t.0)
        } else if self.status.failed_for_good(self.generation) {
            self.status.failed_at.as_ref().map(|t| t.0)
        } else {
            None
        }
    }
}

impl Index {
    /// Crawls a wall-clock time in their status calls for by `now`: a back-off after a failed run
    /// ended (phase `BackOff`, `retryAt` passed), or a schedule fires (`nextScheduleTime`
    /// passed). The controller's tick queues them; their plan places them again, or acts on
    /// the firing.
    pub fn retries_due(&self, now: Timestamp) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns_name, ns)| {
                ns.resources
                    .iter()
                    .filter(move |(_, r)| {
                        let retry = r.status.phase == Some(Phase::BackOff) && !r.backing_off(now);
                        let fires = r
                            .status
                            .next_schedule_time
                            .as_ref()
                            .is_some_and(|t| t.0 <= now);
                        (retry || fires) && r.assumed.is_none()
                    })
                    .map(|(name, _)| Key::new(ns_name.clone(), name.clone()))
            })
            .collect()
    }

    /// Finished crawls (succeeded, or failed for good) whose `spec.ttlSecondsAfterFinished` has
    /// passed by `now`, each handed out once: the controller deletes them (and reports a
    /// deletion that failed with [`Index::expiry_failed`], so it is tried again).
    pub fn expired(&mut self, now: Timestamp) -> Vec<Expired> {
        let mut due = Vec::new();
        for (ns_name, ns) in &mut self.namespaces {
            for (name, r) in &mut ns.resources {
                let Some((ttl, at)) = r.ttl.zip(r.finished_at()) else {
                    continue;
                };
                if r.expiring || at + Duration::from_secs(u64::from(ttl)) > now {
                    continue;
                }
                r.expiring = true;
                due.push(Expired {
                    key: Key::new(ns_name.clone(), name.clone()),
                    uid: r.uid.clone(),
                    resource_version: r.resource_version.clone(),
                });
            }
        }
        due
    }

    /// The deletion of an expired resource failed: hand it out again.
    pub fn expiry_failed(&mut self, key: &Key) {
        if let Some(entry) = self.entry_mut(key) {
            entry.expiring = false;
        }
    }
}

/// Ends a crawl whose current run completed: phase `Succeeded`, unassigned (so no worker's
/// assignment watch shows it any more and its weight counts nowhere), the worker and the time
/// kept, and the generation that finished, so only a spec change runs it again.
pub(super) fn finish(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    run: &CompletedRun,
    again: &str,
    now: Timestamp,
) -> PlanEvent {
    set_unassigned(desired, Phase::Succeeded);
    desired.last_worker = Some(run.worker.clone());
    desired.completed_at = Some(Time(now));
    desired.completed_generation = Some(run.generation);
    let note = format!(
        "the crawl finished on worker {} (assignment {}, {} pages): {again}",
        run.worker, run.assignment, run.pages
    );
    set_assigned_condition(desired, current, false, Reason::Completed, &note, now);
    PlanEvent {
        warning: false,
        reason: Reason::Completed,
        note,
    }
}

/// What runs a finished crawl again, for the notes that end a crawl.
pub(super) fn again(scheduled: bool) -> &'static str {
    if scheduled {
        "the next firing of spec.schedule runs it again"
    } else {
        "it is not run again unless its spec changes"
    }
}

/// Counts a failed run of the current assignment and spec and unassigns the crawl (the run is
/// over on its worker, which never runs that assignment again): phase `BackOff` until `retryAt`
/// while at most `backoff_limit` runs failed, else `Failed` for good; a run that exceeded its
/// deadline is `Failed` for good at once (a Job's `activeDeadlineSeconds` is not retried).
pub(super) fn fail(
    desired: &mut CrawlerResourceStatus,
    current: &CrawlerResourceStatus,
    run: &FailedRun,
    (backoff_limit, backoff): (u32, RetryBackoff),
    again: &str,
    now: Timestamp,
) -> PlanEvent {
    let failures = desired.failures.unwrap_or(0).saturating_add(1);
    desired.failures = Some(failures);
    let count = u32::try_from(failures).unwrap_or(u32::MAX);
    let what = format!(
        "the run on worker {} (assignment {}) failed: {}",
        run.worker, run.assignment, run.message
    );
    desired.last_failure = Some(what.clone());
    let (reason, note) = if run.deadline {
        (
            Reason::DeadlineExceeded,
            format!(
                "{what}; spec.activeDeadlineSeconds was exceeded, so the crawl failed for good \
                 (not retried): {again}"
            ),
        )
    } else if count > backoff_limit {
        (
            Reason::BackoffLimitExceeded,
            format!(
                "{what}; {failures} runs failed, more than spec.backoffLimit ({backoff_limit}), \
                 so the crawl failed for good: fix the cause; {again}"
            ),
        )
    } else {
        let delay = backoff.delay(count);
        set_unassigned(desired, Phase::BackOff);
        desired.retry_at = Some(Time(now + delay));
        let note = format!(
            "{what}; failure {failures} of at most {} (spec.backoffLimit {backoff_limit} \
             retries): placed again in {}s",
            backoff_limit.saturating_add(1),
            delay.as_secs()
        );
        set_assigned_condition(desired, current, false, Reason::BackOff, &note, now);
        return PlanEvent {
            warning: true,
            reason: Reason::BackOff,
            note,
        };
    };
    set_unassigned(desired, Phase::Failed);
    desired.retry_at = None;
    desired.last_worker = Some(run.worker.clone());
    desired.failed_at = Some(Time(now));
    set_assigned_condition(desired, current, false, reason, &note, now);
    PlanEvent {
        warning: true,
        reason,
        note,
    }
}
