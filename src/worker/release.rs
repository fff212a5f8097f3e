//! The worker's half of the handoff: a resource in phase `Releasing` names this worker and the
//! assignment it runs; the worker stops that task (results written as on any stop), then
//! confirms in status (`progress.released`, fenced on the resourceVersion it read), and never
//! runs that assignment again. The controller places the task elsewhere only after that
//! confirmation, or after this worker's heartbeat lapsed.
//!
//! A worker that has seen a release and cannot confirm it within [`CONFIRM_BOUND`] (its status
//! writes fail, its task does not wind up) withholds its heartbeat renewals, so that the
//! controller completes the handoff on the lapse instead of waiting forever.

use std::{collections::HashMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

use super::results::{CONDITION_COMPLETE, CONDITION_FAILED, Verdict, conditions};
use crate::{
    crd::{CrawlerResource, Phase, TaskProgress, TaskState},
    heartbeat,
};

/// How long a release may stay unconfirmed after the worker saw it before the worker withholds
/// its heartbeat renewals. A stop takes milliseconds and its final write at most a few seconds
/// (the `postgres` sink's last batch); a confirmation is one read and one write.
pub const CONFIRM_BOUND: Duration = Duration::from_secs(5);

/// Bound on each request of a confirmation (the client has no read timeout of its own).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One assignment this worker was asked to release.
#[derive(Debug)]
struct Release {
    uid: String,
    assignment: i64,
    seen_at: Instant,
    confirmed: bool,
    /// Ends the confirmation task when the release no longer matters.
    cancel: CancellationToken,
}

/// The releases this worker has seen, by resource name. Pure bookkeeping: the caller spawns
/// the confirmations and feeds back their outcome.
#[derive(Debug, Default)]
pub(super) struct Releases {
    by_name: HashMap<String, Release>,
}

impl Releases {
    /// A release of (`uid`, `assignment`) of `name` is in view at `now`. Returns the token of a
    /// confirmation to start when it is new (`None`: already known).
    pub(super) fn observe(
        &mut self,
        name: &str,
        uid: &str,
        assignment: i64,
        now: Instant,
    ) -> Option<CancellationToken> {
        if self
            .by_name
            .get(name)
            .is_some_and(|r| r.uid == uid && r.assignment == assignment)
        {
            return None;
        }
        let cancel = CancellationToken::new();
        let previous = self.by_name.insert(
            name.to_owned(),
            Release {
                uid: uid.to_owned(),
                assignment,
                seen_at: now,
                confirmed: false,
                cancel: cancel.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.cancel.cancel();
        }
        Some(cancel)
    }

    /// Forgets the releases whose resource is no longer in view under the same (uid,
    /// assignment): moved, deleted, or assigned anew. `current` answers (uid, assignment) of a
    /// name in view.
    pub(super) fn retain_in_view(&mut self, current: impl Fn(&str) -> Option<(String, i64)>) {
        self.by_name.retain(|name, r| {
            let keep = current(name).is_some_and(|(uid, n)| uid == r.uid && n == r.assignment);
            if !keep {
                r.cancel.cancel();
            }
            keep
        });
    }

    /// The confirmation of (`uid`, `assignment`) of `name` was written (or found unnecessary).
    pub(super) fn confirmed(&mut self, name: &str, uid: &str, assignment: i64) {
        if let Some(r) = self
            .by_name
            .get_mut(name)
            .filter(|r| r.uid == uid && r.assignment == assignment)
        {
            r.confirmed = true;
        }
    }

    /// Whether (`uid`, `assignment`) of `name` was released here: it never runs again.
    pub(super) fn is_released(&self, name: &str, uid: &str, assignment: i64) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|r| r.uid == uid && r.assignment == assignment)
    }

    /// When the oldest release still unconfirmed was seen (`None`: every one is confirmed).
    pub(super) fn unconfirmed_since(&self) -> Option<Instant> {
        self.by_name
            .values()
            .filter(|r| !r.confirmed)
            .map(|r| r.seen_at)
            .min()
    }

    /// Ends every confirmation in flight (the worker is stopping).
    pub(super) fn cancel_all(&self) {
        for r in self.by_name.values() {
            r.cancel.cancel();
        }
    }
}

/// Whether the heartbeat must be withheld at `now`: a release seen at `unconfirmed_since` has
/// stayed unconfirmed for [`CONFIRM_BOUND`].
pub fn withhold_heartbeat(unconfirmed_since: Option<Instant>, now: Instant) -> bool {
    unconfirmed_since.is_some_and(|since| now.saturating_duration_since(since) >= CONFIRM_BOUND)
}

/// What the confirmation writes into `r`'s status for `worker`: the worker's own last report of
/// that assignment (or a fresh one), stopped if it said running, with `released: true`, and the
/// worker's conditions to go with it. `None` when `r` is no longer this worker's assignment
/// being released (moved on meanwhile: nothing to confirm).
pub(super) fn confirmation(
    r: &CrawlerResource,
    worker: &str,
    uid: &str,
    assignment: i64,
    now: &jiff::Timestamp,
) -> Option<(TaskProgress, Vec<Condition>)> {
    let status = r.status.as_ref()?;
    let ours = r.uid().as_deref() == Some(uid)
        && status.phase == Some(Phase::Releasing)
        && status.assigned_worker.as_deref() == Some(worker)
        && status.assignments == Some(assignment);
    if !ours {
        return None;
    }
    let own: Vec<Condition> = status
        .conditions
        .iter()
        .filter(|c| c.type_ == CONDITION_COMPLETE || c.type_ == CONDITION_FAILED)
        .cloned()
        .collect();
    let mut progress = status
        .progress
        .clone()
        .filter(|p| p.worker == worker && p.assignment == assignment)
        .unwrap_or_else(|| TaskProgress {
            worker: worker.to_owned(),
            assignment,
            state: TaskState::Running,
            ..TaskProgress::default()
        });
    let conditions = if progress.state == TaskState::Running {
        let message = "stopped by the worker: the controller is moving the task".to_owned();
        progress.state = TaskState::Stopped;
        progress.message = Some(message.clone());
        let verdict = Verdict {
            state: TaskState::Stopped,
            reason: "Stopped",
            message,
        };
        conditions(&verdict, r.metadata.generation.unwrap_or(0), &own, now)
    } else {
        own
    };
    progress.released = true;
    Some((progress, conditions))
}

/// Confirms the release of (`uid`, `assignment`) of resource `name` once the stopped runs
/// (`stopping`) have wound up: reads the resource, writes [`confirmation`] fenced on the version
/// read, and tries again (100 ms, doubling, at most 1 s apart) until it is written, the resource
/// moved on, or `cancel` fires. Reports on `done` unless cancelled.
pub(super) async fn confirm(
    api: Api<CrawlerResource>,
    (name, worker, uid, assignment): (String, String, String, i64),
    stopping: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
    done: mpsc::UnboundedSender<(String, String, i64)>,
) {
    tokio::select! {
        () = cancel.cancelled() => return,
        _ = futures::future::join_all(stopping) => {}
    }
    let mut delays = confirm_retry();
    let mut warned = false;
    loop {
        let attempt = confirm_once(&api, &name, &worker, &uid, assignment);
        let outcome = tokio::select! {
            () = cancel.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(written) => {
                if written {
                    tracing::info!(resource = %name, assignment, "release confirmed: the task stopped here and this assignment never runs here again");
                } else {
                    tracing::debug!(resource = %name, assignment, "release not confirmed: the resource moved on meanwhile");
                }
                let _ = done.send((name, uid, assignment));
                return;
            }
            Err(why) => {
                if warned {
                    tracing::debug!(resource = %name, "cannot confirm the release yet: {why}");
                } else {
                    warned = true;
                    tracing::warn!(resource = %name, "cannot confirm the release yet (retrying; the heartbeat is withheld if it stays unconfirmed for {CONFIRM_BOUND:?}): {why}");
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(delays.next().unwrap_or(CONFIRM_RETRY_MAX)) => {}
                }
            }
        }
    }
}

/// The longest wait between two attempts to confirm a release.
const CONFIRM_RETRY_MAX: Duration = Duration::from_secs(1);

/// The waits between attempts to confirm a release: 100 ms, doubling, at most 1 s (well inside
/// [`CONFIRM_BOUND`], so an API server back within it still sees several attempts).
fn confirm_retry() -> impl Iterator<Item = Duration> + Send {
    crate::retry::doubling(Duration::from_millis(100), CONFIRM_RETRY_MAX)
}

/// One read and one fenced write. `Ok(true)`: confirmed; `Ok(false)`: nothing to confirm any
/// more (deleted, moved on); `Err`: try again.
async fn confirm_once(
    api: &Api<CrawlerResource>,
    name: &str,
    worker: &str,
    uid: &str,
    assignment: i64,
) -> Result<bool, String> {
    let read = tokio::time::timeout(REQUEST_TIMEOUT, api.get_opt(name))
        .await
        .map_err(|_| format!("reading it timed out after {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot read it: {e}"))?;
    let Some(r) = read else {
        return Ok(false);
    };
    let Some((progress, conditions)) =
        confirmation(&r, worker, uid, assignment, &jiff::Timestamp::now())
    else {
        return Ok(false);
    };
    let patch = json!({
        "apiVersion": CrawlerResource::api_version(&()),
        "kind": CrawlerResource::kind(&()),
        "metadata": { "name": name, "resourceVersion": r.resource_version() },
        "status": { "progress": progress, "conditions": conditions },
    });
    let params = PatchParams::apply(heartbeat::FIELD_MANAGER).force();
    let patch = Patch::Apply(&patch);
    let write = api.patch_status(name, &params, &patch);
    match tokio::time::timeout(REQUEST_TIMEOUT, write).await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(kube::Error::Api(s))) if s.code == 409 => {
            Err("it changed since it was read (409); reading it again".to_owned())
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => Ok(false),
        Ok(Err(e)) => Err(format!("cannot write the confirmation: {e}")),
        Err(_) => Err(format!(
            "writing the confirmation timed out after {REQUEST_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{CrawlerResourceSpec, CrawlerResourceStatus};

    #[test]
    fn a_confirmation_is_retried_100_ms_doubling_to_1_s() {
        let ms: Vec<u128> = confirm_retry().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        // Several attempts fit in the bound after which the heartbeat is withheld.
        let within: Duration = confirm_retry().take(6).sum();
        assert!(within < CONFIRM_BOUND, "{within:?}");
    }

    fn releasing(worker: &str, assignment: i64, progress: Option<TaskProgress>) -> CrawlerResource {
        let spec: CrawlerResourceSpec =
            serde_json::from_value(json!({"seeds": ["https://example.org/"]})).unwrap();
        let mut r = CrawlerResource::new("task", spec);
        r.metadata.uid = Some("u1".into());
        r.metadata.generation = Some(3);
        r.status = Some(CrawlerResourceStatus {
            phase: Some(Phase::Releasing),
            assigned_worker: Some(worker.into()),
            assignments: Some(assignment),
            progress,
            ..CrawlerResourceStatus::default()
        });
        r
    }

    /// A worker's last progress report: who wrote it, for which assignment, in what state and
    /// how far it got; what the confirmation reads before it writes its own.
    fn report(worker: &str, assignment: i64, state: TaskState, pages_fetched: i64) -> TaskProgress {
        TaskProgress {
            worker: worker.into(),
            assignment,
            state,
            pages_fetched,
            ..TaskProgress::default()
        }
    }

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_running_report_is_confirmed_as_stopped_and_released_keeping_its_counts() {
        let running = report("w1", 4, TaskState::Running, 17);
        let r = releasing("w1", 4, Some(running));
        let (p, conditions) = confirmation(&r, "w1", "u1", 4, &now()).unwrap();
        assert!(p.released);
        assert_eq!(
            (p.state, p.pages_fetched, p.assignment),
            (TaskState::Stopped, 17, 4)
        );
        assert_eq!(conditions.len(), 2);
        assert!(
            conditions
                .iter()
                .all(|c| c.status == "False" && c.reason == "Stopped")
        );
        assert!(conditions.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn a_completed_task_keeps_its_state_and_conditions_when_released() {
        let done = report("w1", 4, TaskState::Completed, 0);
        let mut r = releasing("w1", 4, Some(done));
        let verdict = Verdict {
            state: TaskState::Completed,
            reason: "Finished",
            message: "m".into(),
        };
        let own = conditions(&verdict, 3, &[], &now());
        r.status.as_mut().unwrap().conditions = own.clone();
        let (p, conditions) = confirmation(&r, "w1", "u1", 4, &now()).unwrap();
        assert_eq!(p.state, TaskState::Completed);
        assert!(p.released);
        assert_eq!(conditions, own);
    }

    #[test]
    fn another_workers_report_is_not_reused_and_a_moved_resource_needs_no_confirmation() {
        let theirs = report("w0", 3, TaskState::Completed, 9);
        let r = releasing("w1", 4, Some(theirs));
        let (p, _) = confirmation(&r, "w1", "u1", 4, &now()).unwrap();
        assert_eq!(
            (p.worker.as_str(), p.assignment, p.pages_fetched),
            ("w1", 4, 0)
        );
        assert_eq!(p.state, TaskState::Stopped);
        // Another worker, another assignment, another object, or no longer releasing: nothing.
        assert!(confirmation(&r, "w2", "u1", 4, &now()).is_none());
        assert!(confirmation(&r, "w1", "u1", 5, &now()).is_none());
        assert!(confirmation(&r, "w1", "u2", 4, &now()).is_none());
        let mut assigned = r.clone();
        assigned.status.as_mut().unwrap().phase = Some(Phase::Assigned);
        assert!(confirmation(&assigned, "w1", "u1", 4, &now()).is_none());
    }

    #[test]
    fn an_unconfirmed_release_withholds_the_heartbeat_after_the_bound_and_only_then() {
        let t0 = Instant::now();
        let mut releases = Releases::default();
        assert!(releases.observe("a", "u1", 4, t0).is_some());
        assert!(
            releases.observe("a", "u1", 4, t0 + CONFIRM_BOUND).is_none(),
            "seen once"
        );
        assert!(releases.is_released("a", "u1", 4));
        assert!(!releases.is_released("a", "u1", 5));
        let since = releases.unconfirmed_since();
        assert_eq!(since, Some(t0));
        assert!(!withhold_heartbeat(
            since,
            t0 + CONFIRM_BOUND - Duration::from_millis(1)
        ));
        assert!(withhold_heartbeat(since, t0 + CONFIRM_BOUND));
        releases.confirmed("a", "u1", 4);
        assert_eq!(releases.unconfirmed_since(), None);
        assert!(!withhold_heartbeat(
            releases.unconfirmed_since(),
            t0 + CONFIRM_BOUND * 9
        ));
        // Still released: that assignment never runs here again, confirmed or not.
        assert!(releases.is_released("a", "u1", 4));
    }

    #[test]
    fn a_release_is_forgotten_once_the_resource_moved_on_and_its_confirmation_cancelled() {
        let t0 = Instant::now();
        let mut releases = Releases::default();
        let a = releases.observe("a", "u1", 4, t0).unwrap();
        let b = releases.observe("b", "u2", 1, t0).unwrap();
        releases.retain_in_view(|name| (name == "b").then(|| ("u2".to_owned(), 1)));
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert!(!releases.is_released("a", "u1", 4));
        assert_eq!(releases.unconfirmed_since(), Some(t0), "b still waits");
        // Assigned anew (a higher assignment): the old release goes, its confirmation ends.
        releases.retain_in_view(|_| Some(("u2".to_owned(), 2)));
        assert!(b.is_cancelled());
        assert_eq!(releases.unconfirmed_since(), None);
    }
}
