//! A run's reports into `status.progress` and its conditions: the fenced write and its retries
//! on conflict (`Reporter`), what stops a run whose report finds its resource moved away, the
//! start's fence and the periodic reports while it runs, and the final report of how it ended.

use std::{sync::Arc, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crawler_crawl::{self as crawl, SinkError};

use super::{
    is_releasing,
    results::{self, Verdict, conditions},
};
use crate::{
    crd::{CrawlerResource, TaskProgress, TaskState},
    heartbeat,
    telemetry::TaskStopReason,
};

/// How often a final report (`Completed`, `Failed`) that did not land is sent again: 100 ms,
/// doubling, at most 5 s apart, until it lands or the run is stopped (the controller acts on
/// it: without it a run that ended would hold its worker's room). The worker never runs an
/// assignment again by itself: retrying a failed run is the controller's (`spec.backoffLimit`).
fn final_report_retry() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Writes a final report (`Completed` or `Failed`), again and again until it lands or the run
/// is stopped (e.g. the resource moved or was deleted: the watch stops it).
pub(super) async fn report_final(
    reporter: &Reporter,
    verdict: Verdict,
    progress: &crawl::Progress,
) {
    let mut delays = final_report_retry();
    while !reporter.report(verdict.clone(), progress).await {
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tracing::debug!(resource = %reporter.name, ?delay, "the final report did not land; sending it again");
        tokio::select! {
            () = reporter.stopper.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// How often a running task looks for a change of state to write at once (the store's wait
/// beginning or ending, a host's back-off window opening or closing): at most one such write per
/// task this often.
const STATE_CHECK: Duration = Duration::from_secs(2);

/// Writes the run's state into status as soon as it changes (within [`STATE_CHECK`]: waiting for
/// the database or not, a host backing off or not), and its page counts every `interval` while
/// they change. Counts are what costs writes at scale (a write per running task per interval),
/// so `--progress-interval` is a minute by default; the live counts are in the metrics.
pub(super) async fn report_periodically(
    reporter: Arc<Reporter>,
    mut progress_rx: watch::Receiver<crawl::Progress>,
    mut health: watch::Receiver<Option<String>>,
    interval: Duration,
    crawl_done: CancellationToken,
    (alerts, resource): (results::Alerts, CrawlerResource),
    started: tokio::sync::oneshot::Sender<bool>,
) {
    // The first report is the start's fence (see `run_crawl`).
    let written = reporter
        .report(running(None), &crawl::Progress::default())
        .await;
    let _ = started.send(written);
    // A host's window, opened or moved: written at once, so that the next owner of the task (it
    // reads the last report) never sends inside a window this run knew of. A host gets no
    // request inside its window, so a new window comes at most once per window.
    let backoff_of =
        |p: &crawl::Progress| p.host_backoff.as_ref().map(|b| (b.host.clone(), b.until));
    let mut written_backoff = None;
    let mut counts_written = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(interval.min(STATE_CHECK));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = crawl_done.cancelled() => return,
            _ = tick.tick() => {}
        }
        let health_changed = health.has_changed().unwrap_or(false);
        let backoff = backoff_of(&progress_rx.borrow());
        let state_changed = health_changed || backoff != written_backoff;
        let counts_due =
            progress_rx.has_changed().unwrap_or(false) && counts_written.elapsed() >= interval;
        if !state_changed && !counts_due {
            continue;
        }
        let progress = progress_rx.borrow_and_update().clone();
        let waiting = health.borrow_and_update().clone();
        written_backoff = backoff_of(&progress);
        counts_written = tokio::time::Instant::now();
        if health_changed && let Some(why) = &waiting {
            alerts.warn(&resource, "WaitingForDatabase", why).await;
        }
        let verdict = running(waiting);
        let verdict = match &progress.host_backoff {
            Some(b) if verdict.reason == "Crawling" => Verdict {
                message: format!(
                    "the task is running; host {} answered {}: no request goes to it before {}",
                    b.host, b.status, b.until
                ),
                ..verdict
            },
            _ => verdict,
        };
        reporter.report(verdict, &progress).await;
    }
}

/// The final report of a crawl that ended; returns how it ended by itself (`None`: stopped).
pub(super) async fn report_outcome(
    outcome: Result<crawl::CrawlOutcome, crawl::CrawlError>,
    progress: crawl::Progress,
    reporter: &Reporter,
    alerts: &results::Alerts,
    resource: &CrawlerResource,
) -> Option<TaskStopReason> {
    let name = resource.name_any();
    match outcome {
        Ok(outcome) if outcome.stop == crawl::StopReason::Cancelled => {
            // Stopped on purpose; a report may be refused (moved, deleted): that is fine.
            let verdict = Verdict {
                state: TaskState::Stopped,
                reason: "Stopped",
                message: "stopped by the worker".to_owned(),
            };
            reporter.report(verdict, &outcome.progress).await;
            None
        }
        Ok(outcome) => {
            tracing::info!(resource = %name, pages = outcome.progress.pages_fetched, "task completed");
            let (reason, message) = if outcome.stop == crawl::StopReason::MaxPages {
                (
                    "MaxPages",
                    "spec.maxPages pages were fetched; links were left unvisited",
                )
            } else {
                ("Finished", "every page within the limits was fetched")
            };
            let verdict = Verdict {
                state: TaskState::Completed,
                reason,
                message: message.to_owned(),
            };
            report_final(reporter, verdict, &outcome.progress).await;
            Some(TaskStopReason::Finished)
        }
        Err(e) if e.sink_error().is_some_and(SinkError::is_fenced) => {
            Some(refused_as_stale(alerts, resource, e.sink_error().expect("matched above")).await)
        }
        Err(e) => {
            let message = crawl::error::error_chain(&e);
            tracing::warn!(resource = %name, "task failed: {message}");
            alerts.warn(resource, "CrawlFailed", &message).await;
            report_final(reporter, failed("CrawlFailed", message), &progress).await;
            Some(TaskStopReason::Failed)
        }
    }
}

fn running(waiting: Option<String>) -> Verdict {
    match waiting {
        None => Verdict {
            state: TaskState::Running,
            reason: "Crawling",
            message: "the task is running".to_owned(),
        },
        Some(why) => Verdict {
            state: TaskState::Running,
            reason: "WaitingForDatabase",
            message: why,
        },
    }
}

pub(super) fn failed(reason: &'static str, message: String) -> Verdict {
    Verdict {
        state: TaskState::Failed,
        reason,
        message,
    }
}

/// The store refused this worker's write: a newer assignment owns the task. Nothing is written
/// into status (it belongs to the new owner now); the log and an Event say why.
pub(super) async fn refused_as_stale(
    alerts: &results::Alerts,
    resource: &CrawlerResource,
    e: &SinkError,
) -> TaskStopReason {
    let message = crawl::error::error_chain(e);
    tracing::warn!(resource = %resource.name_any(), "stopping task: {message}");
    alerts.warn(resource, "RefusedAsStale", &message).await;
    TaskStopReason::Fenced
}

/// Writes `status.progress` under the worker's field manager, fenced on a resourceVersion at
/// which the resource was still assigned to this worker under this assignment: once it moves on
/// (reassigned, deleted), a late report is refused rather than written over the new owner's.
/// Rounds of read-and-write on conflicts: the controller may write between our read and our write.
const REPORT_ATTEMPTS: u32 = 4;

pub(super) struct Reporter {
    pub(super) api: Api<CrawlerResource>,
    pub(super) name: String,
    pub(super) worker: String,
    /// The object this run is for: a resource re-created under the same name is another task.
    pub(super) uid: String,
    pub(super) assignment: i64,
    /// `metadata.generation` of the spec this run crawls (the conditions' observedGeneration).
    pub(super) generation: i64,
    /// The latest version the assignment watch delivered.
    pub(super) version: watch::Receiver<String>,
    /// The conditions this reporter last wrote, for their transition times.
    pub(super) conditions: parking_lot::Mutex<Vec<Condition>>,
    /// Stops the run when a report finds the resource moved away.
    pub(super) stopper: Stopper,
}

/// What stops one run: its cancellation, and why (set first, for the metrics).
pub(super) struct Stopper {
    pub(super) cancel: CancellationToken,
    pub(super) reason: Arc<parking_lot::Mutex<TaskStopReason>>,
}

impl Stopper {
    fn stop(&self, reason: TaskStopReason) {
        *self.reason.lock() = reason;
        self.cancel.cancel();
    }
}

/// Why a run of (`worker`, `uid`, `assignment`) must stop, judging by `found` (a fresh read of
/// its resource; `None`: deleted): the resource moved away (another worker or assignment, or a
/// new object under the same name) or the controller is moving it (phase `Releasing`). `None`
/// while it is still this run's to do.
fn moved_away(
    found: Option<&CrawlerResource>,
    worker: &str,
    uid: &str,
    assignment: i64,
) -> Option<(TaskStopReason, &'static str)> {
    let Some(r) = found else {
        return Some((TaskStopReason::Unassigned, "the resource is gone"));
    };
    let status = r.status.as_ref();
    let ours = r.uid().as_deref() == Some(uid)
        && status.and_then(|s| s.assigned_worker.as_deref()) == Some(worker)
        && status.and_then(|s| s.assignments) == Some(assignment);
    if !ours {
        return Some((
            TaskStopReason::Unassigned,
            "it was moved to another worker or assignment",
        ));
    }
    if is_releasing(r) {
        return Some((
            TaskStopReason::Released,
            "the controller is moving it off this worker (phase Releasing)",
        ));
    }
    None
}

impl Reporter {
    /// Writes the report, fenced on the resource's version; returns whether it was written.
    async fn report(&self, verdict: Verdict, progress: &crawl::Progress) -> bool {
        let state = verdict.state;
        let message = match state {
            TaskState::Running if verdict.reason == "Crawling" => None,
            _ => Some(verdict.message.clone()),
        };
        let report = TaskProgress {
            worker: self.worker.clone(),
            assignment: self.assignment,
            state,
            generation: Some(self.generation),
            pages_fetched: i64::try_from(progress.pages_fetched).unwrap_or(i64::MAX),
            errors: i64::try_from(progress.errors).unwrap_or(i64::MAX),
            incomplete: i64::try_from(progress.incomplete).unwrap_or(i64::MAX),
            pages_unchanged: i64::try_from(progress.pages_unchanged).unwrap_or(i64::MAX),
            last_activity: progress.last_activity.map(Time),
            message,
            reason: (state == TaskState::Failed).then(|| verdict.reason.to_owned()),
            released: false,
            host_backoff: progress
                .host_backoff
                .as_ref()
                .map(|b| crate::crd::HostBackoffReport {
                    host: b.host.clone(),
                    // A `Time` is written in whole seconds, cut down: rounded up here, so the
                    // next owner's window never ends before this one's.
                    until: Time(
                        b.until
                            .round(
                                jiff::TimestampRound::new()
                                    .smallest(jiff::Unit::Second)
                                    .mode(jiff::RoundMode::Ceil),
                            )
                            .unwrap_or(b.until),
                    ),
                    status: i32::from(b.status),
                }),
        };
        let conditions = {
            let mut last = self.conditions.lock();
            *last = conditions(&verdict, self.generation, &last, &jiff::Timestamp::now());
            last.clone()
        };
        let mut version = self.version.borrow().clone();
        // Our own previous report (or anyone's write) may have moved the version on before the
        // watch told us: on a conflict, read the resource and write again only if it is still
        // ours under the same assignment (or, for a final report, still shows our own report).
        for attempt in 0..REPORT_ATTEMPTS {
            let write = self.write(&version, &report, &conditions);
            match tokio::time::timeout(Duration::from_secs(5), write).await {
                Ok(Ok(())) => return true,
                Ok(Err(kube::Error::Api(s))) if s.code == 409 && attempt + 1 < REPORT_ATTEMPTS => {
                    // Bounded like the write: the client has no read timeout of its own.
                    let read = self.api.get_opt(&self.name);
                    match tokio::time::timeout(Duration::from_secs(5), read).await {
                        Ok(Ok(Some(r))) if self.may_write(&r, state) => {
                            version = r.resource_version().unwrap_or_default();
                        }
                        Ok(Ok(found)) => {
                            self.stop_if_moved(found.as_ref(), state);
                            return false;
                        }
                        _ => return false,
                    }
                }
                Ok(Err(kube::Error::Api(s))) if s.code == 409 || s.code == 404 => {
                    tracing::debug!(resource = %self.name, code = s.code, "progress report refused: the resource moved on");
                    if s.code == 404 {
                        self.stop_if_moved(None, state);
                    }
                    return false;
                }
                Ok(Err(e)) => {
                    tracing::warn!(resource = %self.name, error = %e, "cannot report progress");
                    return false;
                }
                Err(_) => {
                    tracing::warn!(resource = %self.name, "reporting progress timed out");
                    return false;
                }
            }
        }
        false
    }

    /// A report of a running task found the resource moved away (or being moved): the run
    /// stops here at once, without waiting for the assignment watch to say so.
    fn stop_if_moved(&self, found: Option<&CrawlerResource>, state: TaskState) {
        if state != TaskState::Running {
            return;
        }
        if let Some((reason, why)) = moved_away(found, &self.worker, &self.uid, self.assignment) {
            tracing::info!(resource = %self.name, "stopping task: a progress report found that {why}");
            self.stopper.stop(reason);
        }
    }

    /// Whether this report may be written: the resource is still assigned to this worker under
    /// this assignment (and, for a running task, not being released), or (for a final report,
    /// after a suspend or a move) the progress shown is still this worker's own report of this
    /// assignment, so no newer owner is overwritten.
    fn may_write(&self, r: &CrawlerResource, state: TaskState) -> bool {
        if state == TaskState::Running
            && moved_away(Some(r), &self.worker, &self.uid, self.assignment).is_some()
        {
            return false;
        }
        r.status.as_ref().is_some_and(|s| {
            let assigned = r.uid().as_deref() == Some(self.uid.as_str())
                && s.assigned_worker.as_deref() == Some(self.worker.as_str())
                && s.assignments == Some(self.assignment);
            let own_report = s
                .progress
                .as_ref()
                .is_some_and(|p| p.worker == self.worker && p.assignment == self.assignment);
            assigned || (state != TaskState::Running && own_report)
        })
    }

    async fn write(
        &self,
        version: &str,
        report: &TaskProgress,
        conditions: &[Condition],
    ) -> Result<(), kube::Error> {
        // `conditions` is a list-map keyed by type: this field manager owns `Complete` and
        // `Failed`, the controller's `Assigned` is left alone.
        let patch = json!({
            "apiVersion": CrawlerResource::api_version(&()),
            "kind": CrawlerResource::kind(&()),
            "metadata": { "name": self.name, "resourceVersion": version },
            "status": { "progress": report, "conditions": conditions },
        });
        let params = PatchParams::apply(heartbeat::FIELD_MANAGER).force();
        self.api
            .patch_status(&self.name, &params, &Patch::Apply(&patch))
            .await?;
        Ok(())
    }
}
