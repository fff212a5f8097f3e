//! One task's run, from its start to its final report: the crawl configuration of a resource
//! (the spec, the worker's settings, the cookie), the result sink opened (fenced, with the
//! `postgres` sink), the start fenced by the first report, the crawl, the deadline
//! (`spec.activeDeadlineSeconds`), and how the run ended.

use std::{sync::Arc, time::Duration};

use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crawler_crawl::{self as crawl, CrawlConfig};

use super::{
    Run, Settings, cookie,
    report::{
        Reporter, Stopper, failed, refused_as_stale, report_final, report_outcome,
        report_periodically,
    },
    results,
};
use crate::{
    crd::{CrawlerResource, CrawlerResourceSpec},
    store::TaskKey,
    telemetry::{Metrics, TaskStopReason},
};

/// What every task of this worker shares.
pub(super) struct Shared {
    pub(super) client: Client,
    pub(super) settings: Settings,
    pub(super) results: results::Results,
    pub(super) alerts: results::Alerts,
    pub(super) metrics: Metrics,
    /// Until when the heartbeat is valid (see [`crawl::SendDeadline`]).
    pub(super) send_deadline: crawl::SendDeadline,
}

/// One task from start to its final report.
pub(super) async fn run_task(
    shared: Shared,
    resource: CrawlerResource,
    run: Run,
    cancel: CancellationToken,
    version: watch::Receiver<String>,
    stop_reason: Arc<parking_lot::Mutex<TaskStopReason>>,
) {
    let metrics = shared.metrics.clone();
    metrics.task_started();
    let stopper = Stopper {
        cancel,
        reason: Arc::clone(&stop_reason),
    };
    let reason = run_crawl(shared, resource, run, stopper, version).await;
    let reason = reason.unwrap_or_else(|| *stop_reason.lock());
    metrics.task_stopped(reason);
}

/// Runs the crawl and reports it; returns how it ended by itself (`None`: it was stopped).
#[allow(clippy::too_many_lines)] // one run from its start to its final report, top to bottom
async fn run_crawl(
    Shared {
        client,
        settings,
        results,
        alerts,
        send_deadline,
        ..
    }: Shared,
    resource: CrawlerResource,
    run: Run,
    stopper: Stopper,
    version: watch::Receiver<String>,
) -> Option<TaskStopReason> {
    let name = resource.name_any();
    let cancel = stopper.cancel.clone();
    let (health_tx, health) = watch::channel::<Option<String>>(None);
    let reporter = Arc::new(Reporter {
        api: Api::namespaced(client.clone(), &settings.namespace),
        name: name.clone(),
        worker: settings.pod_name.clone(),
        uid: run.uid.clone(),
        assignment: run.assignment,
        generation: run.generation,
        version,
        conditions: parking_lot::Mutex::new(Vec::new()),
        stopper,
    });
    let cannot_start = async |message: String| {
        tracing::warn!(resource = %name, "task cannot start: {message}");
        let message = format!(
            "{message} (the controller places it again after a back-off, up to \
             spec.backoffLimit times)"
        );
        alerts.warn(&resource, "CannotStart", &message).await;
        report_final(
            &reporter,
            failed("CannotStart", message),
            &crawl::Progress::default(),
        )
        .await;
        Some(TaskStopReason::Failed)
    };
    // `spec.activeDeadlineSeconds`, counted from the run's start here: the crawl is stopped
    // (cleanly: its last batch is written) and the run reported `Failed`, `DeadlineExceeded`.
    let deadline = resource
        .spec
        .active_deadline_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map(|s| (s, tokio::time::Instant::now() + Duration::from_secs(s)));
    let config = match crawl_config(&client, &settings, &resource, run.assignment).await {
        Ok(config) => crawl::CrawlConfig {
            send_deadline,
            run: u64::try_from(run.crawl).unwrap_or(1),
            carried_backoff: carried_backoff(&resource),
            ..config
        },
        Err(message) => return cannot_start(message).await,
    };
    let (progress_tx, progress_rx) = watch::channel(crawl::Progress::default());
    // Reports go out from their own task: a slow or unreachable API server must never hold up
    // the crawl (or its cancellation). They start before the store is opened, so a task
    // waiting for its database says so.
    let crawl_done = CancellationToken::new();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let periodic = tokio::spawn(report_periodically(
        Arc::clone(&reporter),
        progress_rx.clone(),
        health,
        settings.progress_interval,
        crawl_done.clone(),
        (alerts.clone(), resource.clone()),
        started_tx,
    ));
    let stop_reports = async || {
        crawl_done.cancel();
        let _ = periodic.await;
    };
    let key = TaskKey {
        namespace: settings.namespace.clone(),
        uid: run.uid.clone(),
        name: name.clone(),
        worker: settings.pod_name.clone(),
        assignment: run.assignment,
        run: run.crawl,
    };
    let (sink, frontier) = match results.open(key, &config, health_tx, cancel.clone()).await {
        Ok(opened) => opened,
        Err(e) if e.is_fenced() => {
            stop_reports().await;
            return Some(refused_as_stale(&alerts, &resource, &e).await);
        }
        Err(_) if cancel.is_cancelled() => {
            stop_reports().await;
            return None;
        }
        Err(e) => {
            stop_reports().await;
            return cannot_start(crawl::error::error_chain(&e)).await;
        }
    };
    // The start is fenced like a move: no request goes out before the first report, written on
    // the resourceVersion this run was started from, has landed. A move the controller decided
    // on that version (one phase, off a worker whose heartbeat lapsed) and a start on it exclude
    // each other: whichever commits second gets 409. If the move came first, the report finds
    // the task moved (and stops the run); if the start came first, the controller's write is
    // refused and it decides again, on a version that shows this worker's renewal.
    if !started.await.unwrap_or(false) {
        stop_reports().await;
        if cancel.is_cancelled() {
            return None;
        }
        return cannot_start(
            "its start could not be recorded in status.progress (the API server did not take \
             the report); no request was made"
                .to_owned(),
        )
        .await;
    }
    let crawl_cancel = cancel.child_token();
    let timer = deadline.map(|(_, at)| {
        let crawl_cancel = crawl_cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            crawl_cancel.cancel();
        })
    });
    let outcome = crawl::run_from(
        config,
        frontier,
        sink,
        crawl_cancel.clone(),
        crawl::watch_progress(progress_tx),
    )
    .await;
    if let Some(timer) = timer {
        timer.abort();
    }
    // Let a report in flight finish before the final one, so a late Running can never land
    // after it (a report is bounded by its own timeout).
    stop_reports().await;
    let progress = progress_rx.borrow().clone();
    let stopped_by_deadline = crawl_cancel.is_cancelled()
        && !cancel.is_cancelled()
        && outcome
            .as_ref()
            .is_ok_and(|o| o.stop == crawl::StopReason::Cancelled);
    if let Some((seconds, _)) = deadline.filter(|_| stopped_by_deadline) {
        let message = format!(
            "the run took longer than spec.activeDeadlineSeconds ({seconds}s) and was stopped \
             after {} pages; the crawl fails for good (not retried): raise the deadline or change \
             the spec to run it again",
            progress.pages_fetched
        );
        tracing::warn!(resource = %name, "{message}");
        alerts.warn(&resource, DEADLINE_EXCEEDED, &message).await;
        report_final(&reporter, failed(DEADLINE_EXCEEDED, message), &progress).await;
        return Some(TaskStopReason::Failed);
    }
    report_outcome(outcome, progress, &reporter, &alerts, &resource).await
}

/// `progress.reason` of a run stopped by `spec.activeDeadlineSeconds`.
const DEADLINE_EXCEEDED: &str = crate::controller::index::DEADLINE_EXCEEDED;

/// The back-off window the task's last report shows (its previous owner's, read before this
/// run's first report replaces it): the new run keeps it (`crawl::Politeness::hold`).
fn carried_backoff(r: &CrawlerResource) -> Vec<crawl::HostBackoff> {
    r.status
        .as_ref()
        .and_then(|s| s.progress.as_ref())
        .and_then(|p| p.host_backoff.as_ref())
        .map(|b| crawl::HostBackoff {
            host: b.host.clone(),
            until: b.until.0,
            status: u16::try_from(b.status).unwrap_or(429),
        })
        .into_iter()
        .collect()
}

/// The crawl configuration of a resource (without credentials): pure, so it can be fuzzed.
/// The User-Agent names the worker and the assignment, so a site's log shows who crawled when.
pub fn config_from_spec(
    name: &str,
    spec: &CrawlerResourceSpec,
    worker: &str,
    assignment: i64,
) -> CrawlConfig {
    let mut config = CrawlConfig::new(spec.task_name(name), spec.seeds.clone());
    config.max_depth = u32::try_from(spec.max_depth).unwrap_or(0);
    config.allowed_hosts.clone_from(&spec.allowed_hosts);
    config.rate_limit = crawl::RateLimit {
        requests_per_second: spec.rate_limit.requests_per_second,
        burst: u32::try_from(spec.rate_limit.burst).unwrap_or(1).max(1),
    };
    if let Some(max) = spec.max_pages {
        config.max_pages = u64::try_from(max).unwrap_or(1).max(1);
    }
    config.rules = crate::rules::crawl_rules(spec);
    config.sitemaps = spec.sitemaps;
    config.user_agent = worker_user_agent(crawl::DEFAULT_USER_AGENT, worker, assignment);
    config
}

/// The installation's User-Agent with the worker's part, which the test site reads:
/// `name/version (+url) (worker <pod>; assignment <n>)`.
pub fn worker_user_agent(base: &str, worker: &str, assignment: i64) -> String {
    format!("{base} (worker {worker}; assignment {assignment})")
}

/// The crawl configuration of a resource, with its cookie read from the referenced Secret.
async fn crawl_config(
    client: &Client,
    settings: &Settings,
    r: &CrawlerResource,
    assignment: i64,
) -> Result<CrawlConfig, String> {
    let spec = &r.spec;
    let mut config = config_from_spec(&r.name_any(), spec, &settings.pod_name, assignment);
    config.checkpoint_interval = settings.checkpoint_interval;
    config.address_policy = settings.address_policy.clone();
    config.politeness = settings.politeness.clone();
    config.retries = settings.retries;
    config.user_agent = worker_user_agent(&settings.user_agent, &settings.pod_name, assignment);
    if let Some(secret_ref) = &spec.cookie_secret_ref {
        let cookie = cookie::read(
            client,
            &settings.namespace,
            secret_ref,
            settings.require_cookie_label,
        )
        .await?;
        config.headers.insert("cookie", cookie);
    }
    config.validate().map_err(|e| {
        format!(
            "the spec cannot be crawled: {}",
            crawl::error::error_chain(&e)
        )
    })?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec(json: serde_json::Value) -> CrawlerResourceSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_spec_maps_onto_the_crawl() {
        let s = spec(serde_json::json!({
            "seeds": ["https://a.example/"], "maxDepth": 3, "maxPages": 50,
            "rateLimit": { "requestsPerSecond": 0.5, "burst": 2 }, "allowedHosts": ["a.example", "b.example"],
            "task": "douban_book_list"
        }));
        let c = config_from_spec("task-test-4", &s, "worker-1", 7);
        assert_eq!(c.task, "douban_book_list");
        assert_eq!((c.max_depth, c.max_pages), (3, 50));
        assert_eq!(
            c.rate_limit,
            crawl::RateLimit {
                requests_per_second: 0.5,
                burst: 2
            }
        );
        assert_eq!(
            c.allowed_hosts,
            Some(vec!["a.example".to_owned(), "b.example".to_owned()])
        );
        assert!(
            c.user_agent.ends_with("(worker worker-1; assignment 7)"),
            "{}",
            c.user_agent
        );
        assert!(c.validate().is_ok());
    }

    proptest! {
        /// Whatever a spec holds (the API server's schema is the first line of defence, but a
        /// spec can also be written before a CRD upgrade), mapping and validating never panics.
        #[test]
        fn any_spec_maps_and_validates_without_panicking(
            seeds in proptest::collection::vec(".{0,40}", 0..4),
            hosts in proptest::option::of(proptest::collection::vec(".{0,20}", 0..3)),
            depth in any::<i32>(), pages in proptest::option::of(any::<i32>()),
            rps in any::<f64>(), burst in any::<i32>(), weight in any::<i32>(),
        ) {
            let mut s = spec(serde_json::json!({ "seeds": [] }));
            s.seeds = seeds;
            s.allowed_hosts = hosts;
            s.max_depth = depth;
            s.max_pages = pages;
            s.rate_limit = crate::crd::RateLimit { requests_per_second: rps, burst };
            s.weight = weight;
            let c = config_from_spec("x", &s, "w", 1);
            let _ = c.validate();
        }
    }
}
