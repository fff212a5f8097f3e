//! The worker against a real kube-apiserver and a local web site: it crawls what is assigned to
//! it, reports progress, and stops when the resource is deleted, suspended, moved, or when the
//! worker is cut off from the API server. The site logs every request with the worker's name
//! (from the User-Agent), so "no overlap" is checked on what the site actually received.

use crate::support;

use std::time::{Duration, Instant};

use crawler_operator::crd::{Phase, TaskState};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use support::{
    pods::delete_pod,
    site::{Hit, Site, endless, metric_value},
    story::{
        HEARTBEAT, Story, assigned_worker, handoff_stage, handoff_stage_via_proxy, phase,
        worker_1_running,
    },
};

/// How long a stopped task may still be seen sending (watch latency + cancellation), generous
/// for a loaded 2-core machine.
const STOP_BOUND: Duration = Duration::from_millis(1500);

async fn assert_silent(site: &Site, task: &str, since: Instant) -> Duration {
    // Absence can only be observed over a window: wait past the bound, then look.
    tokio::time::sleep(STOP_BOUND + Duration::from_millis(500)).await;
    let late: Vec<Hit> = site
        .hits(task)
        .into_iter()
        .filter(|h| h.at > since + STOP_BOUND)
        .collect();
    assert!(
        late.is_empty(),
        "{} requests for {task} more than {STOP_BOUND:?} after it was stopped: {late:?}",
        late.len()
    );
    site.last_hit_after(task, since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_task_is_crawled_reported_and_stopped_on_delete() {
    let (site, story) = worker_1_running("crawl").await;
    story
        .apply_resource("task-a", endless(&site, "task-a"))
        .await;
    story.assert_assigned("task-a", "worker-1").await;
    site.wait_for_hits("task-a", "worker-1", None, 5).await;

    // Progress appears in status, under the worker's own field manager.
    let progress = story
        .wait_for_progress("task-a", "progress in status", |p| p.pages_fetched >= 3)
        .await;
    assert_eq!(progress.worker, "worker-1");
    assert_eq!(progress.state, TaskState::Running);
    assert_eq!(progress.assignment, 1);
    assert!(progress.last_activity.is_some());
    // Records land in the worker's output, one JSON object per page.
    let output = std::fs::read_to_string(story.output_of("worker-1")).unwrap();
    let first: serde_json::Value = serde_json::from_str(output.lines().next().unwrap()).unwrap();
    assert_eq!(first["task"], "task-a");
    assert_eq!(first["status"], 200);

    // Operations: the worker is ready and counts what it fetched.
    let (code, _) = Story::http_get(&story.workers[0], "/readyz").await;
    assert_eq!(code, 200);
    let (code, metrics) = Story::http_get(&story.workers[0], "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("crawler_worker_running_tasks 1"),
        "{metrics}"
    );
    let pages = metric_value(&metrics, "crawler_worker_pages_fetched_total");
    assert!(pages >= 3.0, "{metrics}");

    // Deleted: the site sees no request from it after a short bound.
    story
        .api()
        .delete("task-a", &DeleteParams::default())
        .await
        .unwrap();
    let deleted = Instant::now();
    let last = assert_silent(&site, "task-a", deleted).await;
    println!("last request of task-a {last:?} after its delete returned");
    let (_, metrics) = Story::http_get(&story.workers[0], "/metrics").await;
    assert!(
        metrics.contains("crawler_worker_running_tasks 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("crawler_worker_tasks_stopped_total{reason=\"unassigned\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_stops_the_task_and_resume_runs_it_again() {
    let (site, story) = worker_1_running("suspend").await;
    story.crawl_on_worker_1(&site, "task-b").await;

    story.set_suspend("task-b", true).await;
    let suspended = Instant::now();
    story
        .wait_for_resource("task-b", "phase Suspended", |r| {
            phase(r) == Some(Phase::Suspended)
        })
        .await;
    let last = assert_silent(&site, "task-b", suspended).await;
    println!("last request of task-b {last:?} after suspend");
    // The worker's last word on it is Stopped, not a stale Running.
    story
        .wait_for_progress("task-b", "progress Stopped", |p| {
            p.state == TaskState::Stopped
        })
        .await;

    story.set_suspend("task-b", false).await;
    site.wait_for_hits("task-b", "worker-1", Some(Instant::now()), 3)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_task_stops_on_the_old_worker_before_the_new_one_starts() {
    let site = Site::start().await;
    let mut story = Story::new("move").await;
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    story.start_controller("controller-a");
    story.start_worker("worker-1", None);
    story.start_worker("worker-2", None);
    story
        .apply_resource("task-c", endless(&site, "task-c"))
        .await;
    let from = story.assert_all_assigned(&["task-c"]).await["task-c"].clone();
    let to = if from == "worker-1" {
        "worker-2"
    } else {
        "worker-1"
    };
    site.wait_for_hits("task-c", &from, None, 3).await;

    // The old worker's Pod is deleted (its process keeps running, as a kubelet would still be
    // killing it): the controller moves the task, the old process sees it go and stops.
    delete_pod(&story.client, story.ns(), &from).await;
    story.assert_assigned("task-c", to).await;
    site.wait_for_hits("task-c", to, None, 3).await;
    let (last_old, first_new) = site.handover("task-c", &from, to);
    assert!(
        last_old < first_new,
        "overlap: {from} still crawled {:?} after {to} started",
        last_old - first_new
    );
    println!(
        "gap between the old worker's last and the new worker's first request: {:?}",
        first_new - last_old
    );
    site.overlap_verdict().print_and_assert();
    let r = story.api().get("task-c").await.unwrap();
    assert_eq!(r.status.unwrap().assignments, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_the_api_server_stops_and_its_task_moves_without_overlap() {
    let (site, story, proxy) = handoff_stage_via_proxy("cutoff", "task-d").await;

    // worker-1's Pod still looks Ready (no kubelet noticed anything); only its heartbeat stops.
    proxy.cut();
    let cut = Instant::now();
    story.assert_assigned("task-d", "worker-2").await;
    let moved = cut.elapsed();
    // The cut-off worker says so on its readiness endpoint (its metrics server is local).
    let (code, body) = Story::http_get(&story.workers[0], "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("heartbeat"), "{body}");
    site.wait_for_hits("task-d", "worker-2", Some(cut), 3).await;
    let (last_old, first_new) = site.handover("task-d", "worker-1", "worker-2");
    println!(
        "cut-off: worker-1 stopped {:?} after the cut, the task moved after {moved:?}, worker-2 started {:?} after the cut",
        last_old.saturating_duration_since(cut),
        first_new - cut
    );
    assert!(
        last_old < first_new,
        "overlap: worker-1 crawled until {:?} after worker-2 started",
        last_old - first_new
    );
    assert!(
        last_old < cut + HEARTBEAT / 2 + Duration::from_millis(500),
        "worker-1 kept crawling {:?} after the cut",
        last_old - cut
    );
    site.overlap_verdict().print_and_assert();
    assert_eq!(
        assigned_worker(&story.api().get("task-d").await.unwrap()).as_deref(),
        Some("worker-2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookies_come_from_the_referenced_secret_and_a_missing_one_is_reported_and_retried() {
    let (site, story) = worker_1_running("secret").await;
    story
        .create_secret("site-login", "cookie", "session=s3cr3t")
        .await;
    let mut with_cookie = endless(&site, "task-e");
    with_cookie["cookieSecretRef"] = json!({ "name": "site-login", "key": "cookie" });
    story.apply_resource("task-e", with_cookie).await;
    site.wait_for_hits("task-e", "worker-1", None, 2).await;
    assert!(
        site.hits("task-e")
            .iter()
            .all(|h| h.cookie.as_deref() == Some("session=s3cr3t")),
        "every request carries the Secret's cookie"
    );
    // The value never reaches the worker's log.
    let log = std::fs::read_to_string(&story.workers[0].log).unwrap();
    assert!(!log.contains("s3cr3t"), "the cookie leaked into the log");

    let mut missing = endless(&site, "task-f");
    missing["cookieSecretRef"] = json!({ "name": "no-such-secret", "key": "cookie" });
    story.apply_resource("task-f", missing).await;
    let progress = story
        .wait_for_progress("task-f", "a Failed report", |p| {
            p.state == TaskState::Failed
        })
        .await;
    let message = progress.message.unwrap_or_default();
    assert!(
        message.contains("no-such-secret") && message.contains("does not exist"),
        "{message}"
    );
    assert!(
        site.hits("task-f").is_empty(),
        "a task without its Secret must not crawl"
    );
    assert!(
        message.contains("the controller places it again after a back-off"),
        "{message}"
    );

    // The user creates the Secret: the controller places it again after its back-off (10 s
    // after a first failure: spec.backoffLimit), no spec change.
    story
        .create_secret("no-such-secret", "cookie", "session=late")
        .await;
    site.wait_for_hits("task-f", "worker-1", None, 2).await;
    story
        .wait_for_progress("task-f", "Running after the retry", |p| {
            p.state == TaskState::Running
        })
        .await;
}

/// Defense in depth against a `CrawlerResource` that names a Secret which is not a cookie (the
/// database's connection string, a token) when admission did not stop it: the worker uses only
/// Secrets labelled crawler.dev/cookie=true, says so, and picks the Secret up once labelled (a
/// cookie Secret made before the label was required: the upgrade's migration step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_not_labelled_as_a_cookie_is_never_sent() {
    let (site, story) = worker_1_running("unlabelled").await;
    story
        .create_secret_labelled("login", "cookie", "session=hunter2", json!({}))
        .await;
    let mut spec = endless(&site, "task-u");
    spec["cookieSecretRef"] = json!({ "name": "login", "key": "cookie" });
    story.apply_resource("task-u", spec).await;
    let progress = story
        .wait_for_progress("task-u", "a Failed report", |p| {
            p.state == TaskState::Failed
        })
        .await;
    let message = progress.message.unwrap_or_default();
    let ns = story.ns();
    assert!(
        message.contains(&format!("Secret {ns}/login"))
            && message.contains(&format!(
                "kubectl -n {ns} label secret login crawler.dev/cookie=true"
            )),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
    assert!(
        site.hits("task-u").is_empty(),
        "an unlabelled Secret was sent"
    );

    // Labelled (the migration step docs/install.md gives): the controller's retry (after its
    // back-off) uses it, no spec change.
    let label = json!({ "metadata": { "labels": { "crawler.dev/cookie": "true" } } });
    Api::<Secret>::namespaced(story.client.clone(), ns)
        .patch("login", &PatchParams::default(), &Patch::Merge(label))
        .await
        .unwrap();
    site.wait_for_hits("task-u", "worker-1", None, 1).await;
    assert!(
        site.hits("task-u")
            .iter()
            .all(|h| h.cookie.as_deref() == Some("session=hunter2")),
        "the labelled Secret's value is the cookie"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_tasks_and_releases_the_heartbeat_so_they_move_at_once() {
    let (site, story) = handoff_stage("sigterm", "task-g").await;

    story.workers[0].signal("TERM");
    let stopped = Instant::now();
    story.assert_assigned("task-g", "worker-2").await;
    let moved = stopped.elapsed();
    println!("task moved {moved:?} after SIGTERM (heartbeat duration {HEARTBEAT:?})");
    assert!(
        moved < HEARTBEAT / 2,
        "a released heartbeat moves the task at once, not at expiry: took {moved:?}"
    );
    site.wait_for_hits("task-g", "worker-2", None, 3).await;
    let (last_old, first_new) = site.handover("task-g", "worker-1", "worker-2");
    assert!(last_old < first_new, "overlap after SIGTERM");
    site.overlap_verdict().print_and_assert();
    let log = std::fs::read_to_string(&story.workers[0].log).unwrap();
    assert!(log.contains("heartbeat released"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_finishes_at_once_reports_completed() {
    let (site, story) = worker_1_running("complete").await;
    // The seed only: the crawl ends after one page, faster than the watch catches up with the
    // worker's own first report, so the final report must not be lost to a stale version.
    story
        .apply_resource(
            "once",
            json!({ "seeds": [site.seed("once")], "maxDepth": 0 }),
        )
        .await;
    let progress = story
        .wait_for_progress("once", "a Completed report", |p| {
            p.state == TaskState::Completed
        })
        .await;
    assert_eq!(progress.pages_fetched, 1);
    assert_eq!(site.hits("once").len(), 1);
}
