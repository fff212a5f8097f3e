//! Where a task's results go, and what the worker says about a task that a person must act on.
//!
//! - `file` (JSON lines on stdout or a file, shared by every task of the worker): no fencing,
//!   no resume; a moved task starts again from its seeds.
//! - `postgres` ([`crate::store`]): one fenced writer per task, resumed from the stored
//!   frontier.
//!
//! The task's conditions (`Complete`, `Failed`) and its Events are decided here from the task's
//! state, purely ([`conditions`]), and written by the worker's reporter.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use std::sync::Arc;

use tokio::{io::AsyncWrite, sync::Mutex};

use crawler_crawl::{
    self as crawl, CrawlConfig, Discovered, Frontier, JsonLinesSink, PageRecord, Sink, SinkError,
};

use super::Output;
use crate::{
    crd::{CrawlerResource, TaskState},
    store::{PgSink, Store, StoreHealth, TaskKey},
    telemetry::Metrics,
};

/// Condition types the worker owns (the controller owns `Assigned`).
pub const CONDITION_COMPLETE: &str = "Complete";
pub const CONDITION_FAILED: &str = "Failed";

/// One sink shared by all tasks, so records of different tasks never interleave mid-line.
#[derive(Clone)]
pub(super) struct SharedSink {
    out: Arc<Mutex<JsonLinesSink<Box<dyn AsyncWrite + Unpin + Send>>>>,
    metrics: Metrics,
}

impl Sink for SharedSink {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        if record.status.is_some() {
            self.metrics.pages_fetched(1);
        }
        if let Some(kind) = &record.error_kind {
            self.metrics.fetch_error(crawl::error::kind_label(kind));
            if kind == crawl::error::BLOCKED_ADDRESS {
                self.metrics.request_blocked();
            }
        }
        if record.incomplete {
            self.metrics.record_incomplete();
        }
        self.out.lock().await.write(record).await
    }
}

/// The worker's destination for every task's records.
#[derive(Clone)]
pub(super) enum Results {
    Lines(SharedSink),
    Postgres { store: Store, metrics: Metrics },
}

/// One task's writer.
pub(super) enum TaskSink {
    Lines(SharedSink),
    Postgres { sink: Box<PgSink>, metrics: Metrics },
}

impl Results {
    /// Opens the worker's JSON-lines output (the `file` sink), or takes the store.
    pub(super) async fn new(output: &Output, metrics: &Metrics) -> anyhow::Result<Self> {
        let (writer, target): (Box<dyn AsyncWrite + Unpin + Send>, String) = match output {
            Output::Postgres(store) => {
                let check = store.clone();
                tokio::spawn(async move {
                    match check.check().await {
                        Ok(()) => {
                            tracing::info!(store = ?check, "the result store is reachable and its schema current");
                        }
                        Err(why) => {
                            tracing::warn!(store = ?check, "the result store is not usable yet (tasks wait for it): {why}");
                        }
                    }
                });
                return Ok(Results::Postgres {
                    store: store.clone(),
                    metrics: metrics.clone(),
                });
            }
            Output::Stdout => (Box::new(tokio::io::stdout()), "stdout".to_owned()),
            Output::File(path) => (
                Box::new(JsonLinesSink::append_file(path).await?.into_inner()),
                path.display().to_string(),
            ),
        };
        Ok(Results::Lines(SharedSink {
            out: Arc::new(Mutex::new(JsonLinesSink::new(writer, target))),
            metrics: metrics.clone(),
        }))
    }

    /// The task's sink and, with the store, the frontier to resume from (the claim that
    /// raises the task's fence happens here, before the first request).
    pub(super) async fn open(
        &self,
        key: TaskKey,
        config: &CrawlConfig,
        health: StoreHealth,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(TaskSink, Option<Frontier>), SinkError> {
        match self {
            Results::Lines(sink) => Ok((TaskSink::Lines(sink.clone()), None)),
            Results::Postgres { store, metrics } => {
                let seeds = config
                    .normalized_seeds()
                    .map_err(|e| SinkError::Other(e.to_string()))?;
                let (sink, frontier) =
                    PgSink::open(store.clone(), key, &seeds, health, cancel).await?;
                Ok((
                    TaskSink::Postgres {
                        sink: Box::new(sink),
                        metrics: metrics.clone(),
                    },
                    Some(frontier),
                ))
            }
        }
    }
}

impl Sink for TaskSink {
    async fn write(&mut self, record: &PageRecord) -> Result<(), SinkError> {
        self.write_visit(record, &[]).await
    }

    async fn write_visit(
        &mut self,
        record: &PageRecord,
        discovered: &[Discovered],
    ) -> Result<(), SinkError> {
        match self {
            TaskSink::Lines(sink) => sink.write(record).await,
            TaskSink::Postgres { sink, metrics } => {
                if record.status.is_some() {
                    metrics.pages_fetched(1);
                }
                if let Some(kind) = &record.error_kind {
                    metrics.fetch_error(crawler_crawl::error::kind_label(kind));
                    if kind == crawler_crawl::error::BLOCKED_ADDRESS {
                        metrics.request_blocked();
                    }
                }
                sink.write_visit(record, discovered).await
            }
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self {
            TaskSink::Lines(_) => Ok(()),
            TaskSink::Postgres { sink, .. } => sink.flush().await,
        }
    }

    fn stores_validators(&self) -> bool {
        matches!(self, TaskSink::Postgres { .. })
    }
}

/// What the conditions say about a task: from its state, why it is in it, and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub state: TaskState,
    /// CamelCase reason: `Crawling`, `Finished`, `MaxPages`, `WaitingForDatabase`,
    /// `CannotStart`, `CrawlFailed`, `Stopped`. (A task refused as stale writes no
    /// status: the resource belongs to its new owner; an Event says it.)
    pub reason: &'static str,
    pub message: String,
}

/// The worker's two conditions for a verdict. `previous` are the conditions last written by
/// this worker, so that `lastTransitionTime` moves only when a status changes.
pub fn conditions(
    verdict: &Verdict,
    generation: i64,
    previous: &[Condition],
    now: &jiff::Timestamp,
) -> Vec<Condition> {
    let complete = verdict.state == TaskState::Completed;
    let failed = verdict.state == TaskState::Failed;
    [(CONDITION_COMPLETE, complete), (CONDITION_FAILED, failed)]
        .into_iter()
        .map(|(type_, on)| {
            let status = if on { "True" } else { "False" }.to_owned();
            let since = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or_else(|| Time(*now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_owned(),
                status,
                reason: verdict.reason.to_owned(),
                message: verdict.message.clone(),
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect()
}

/// Publishes Warning Events on a resource for what a person must act on. Best effort: a
/// refused Event is logged at debug level (the condition and the log say the same).
#[derive(Clone)]
pub(super) struct Alerts {
    recorder: Recorder,
}

impl Alerts {
    pub(super) fn new(client: Client, worker: &str) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: crate::heartbeat::FIELD_MANAGER.to_owned(),
                    instance: Some(worker.to_owned()),
                },
            ),
        }
    }

    pub(super) async fn warn(&self, resource: &CrawlerResource, reason: &str, note: &str) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1000).collect()),
            action: "Crawl".to_owned(),
            secondary: None,
        };
        let reference = resource.object_ref(&());
        let publish = self.recorder.publish(&ev, &reference);
        match tokio::time::timeout(std::time::Duration::from_secs(5), publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, reason, "cannot publish an Event"),
            Err(_) => tracing::debug!(reason, "publishing an Event timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(state: TaskState, reason: &'static str) -> Verdict {
        Verdict {
            state,
            reason,
            message: "m".into(),
        }
    }

    #[test]
    fn complete_and_failed_follow_the_state_and_keep_their_transition_time() {
        let t0: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: jiff::Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let running = conditions(&verdict(TaskState::Running, "Crawling"), 3, &[], &t0);
        assert_eq!(running.len(), 2);
        assert!(running.iter().all(|c| c.status == "False"));
        assert!(running.iter().all(|c| c.observed_generation == Some(3)));

        // Still running a minute later: no transition, the time stays.
        let again = conditions(&verdict(TaskState::Running, "Crawling"), 3, &running, &t1);
        assert_eq!(again[0].last_transition_time, Time(t0));

        let done = conditions(&verdict(TaskState::Completed, "Finished"), 3, &again, &t1);
        let complete = done.iter().find(|c| c.type_ == "Complete").unwrap();
        assert_eq!(
            (complete.status.as_str(), complete.reason.as_str()),
            ("True", "Finished")
        );
        assert_eq!(complete.last_transition_time, Time(t1));
        let failed = done.iter().find(|c| c.type_ == "Failed").unwrap();
        assert_eq!(failed.status, "False");
        assert_eq!(failed.last_transition_time, Time(t0));

        let failed = conditions(&verdict(TaskState::Failed, "CannotStart"), 4, &done, &t1);
        assert!(failed.iter().any(|c| c.type_ == "Failed"
            && c.status == "True"
            && c.observed_generation == Some(4)));
    }
}
