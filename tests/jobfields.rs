//! Job fields (issue 23): `spec.backoffLimit` retries a failed run with back-off, then the crawl
//! is `Failed` for good (room freed, never run again, also after a worker restart);
//! `spec.activeDeadlineSeconds` stops a run that takes too long and fails the crawl;
//! `spec.ttlSecondsAfterFinished` deletes a finished crawl. Real controller and worker
//! processes, the test site's request log and the resources' status as the judges.

use crate::support;

use std::time::{Duration, Instant};

use crawler_operator::crd::{CrawlerResource, Phase};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{
    judge::Verdict,
    site::{Site, endless},
    story::{BOUND, HEARTBEAT, POLL, Story, phase},
};

/// The back-off the tests' controllers use: 0.5 s, then 1 s (a Job's is 10 s doubling to 6 min).
const SHORT_BACKOFF: [&str; 2] = ["--backoff-base=500ms", "--backoff-max=1s"];

/// Pod `worker-1` ready with `capacity`, `controller-a` (short back-off) and the worker process.
async fn opening(prefix: &str, capacity: u32) -> (Site, Story) {
    let site = Site::start().await;
    let mut story = Story::new(prefix).await;
    story.ready_worker("worker-1").await;
    kube::Api::<Pod>::namespaced(story.client.clone(), story.ns())
        .patch(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(
                json!({ "metadata": { "annotations": { "crawler.dev/capacity": capacity.to_string() } } }),
            ),
        )
        .await
        .expect("annotating worker-1");
    story.start_controller_with("controller-a", None, &SHORT_BACKOFF);
    story.start_worker("worker-1", None);
    story.wait_for_leader("controller-a").await;
    (site, story)
}

fn failed(r: &CrawlerResource) -> bool {
    phase(r) == Some(Phase::Failed)
}

fn assigned_condition_reason(r: &CrawlerResource) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.condition("Assigned"))
        .map(|c| c.reason.clone())
        .unwrap_or_default()
}

/// A crawl whose runs cannot start (its cookie Secret is not labelled for crawls) is run
/// `backoffLimit + 1` times, each a new assignment after a back-off, then `Failed` for good:
/// unassigned, its room on a worker of capacity 1 goes to the next crawl, and a restart of the
/// worker process runs it no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backoff_limit_retries_a_failed_run_then_fails_the_crawl_for_good() {
    let (site, story) = opening("jobfields-backoff", 1).await;
    story
        .create_secret_labelled("unlabelled", "cookie", "a=b", json!({}))
        .await;
    let started = Instant::now();
    story
        .apply_resource(
            "doomed",
            json!({
                "seeds": [site.seed("doomed")],
                "cookieSecretRef": { "name": "unlabelled", "key": "cookie" },
                "backoffLimit": 2,
            }),
        )
        .await;
    let doomed = story.wait_for_resource("doomed", "Failed", failed).await;
    let took = started.elapsed();
    let s = doomed.status.clone().unwrap();
    let mut verdict = Verdict::new("jobfields-backoff");
    verdict.judged += 1;
    if s.failures != Some(3)
        || s.assignments != Some(3)
        || s.assigned_worker.is_some()
        || s.failed_at.is_none()
        || assigned_condition_reason(&doomed) != "BackoffLimitExceeded"
        || !s
            .last_failure
            .as_deref()
            .is_some_and(|m| m.contains("crawler.dev/cookie"))
    {
        verdict.violation("failed-status", format!("{s:?}"));
    }
    println!("JOBFIELDS backoffLimit 2: Failed after 3 runs, {took:?} after the apply");
    // Its room on worker-1 (capacity 1) is free: the next crawl is placed there. (During each
    // back-off its room is free too: a crawl applied then would take it, and the retry would
    // wait for room, `Unschedulable`.)
    story.apply_resource("next", endless(&site, "next")).await;
    story.assert_assigned("next", "worker-1").await;
    site.wait_for_hits("next", "worker-1", None, 2).await;

    // A restart of the worker process runs it no more: the status is not touched again.
    let rv = kube::ResourceExt::resource_version(&doomed);
    story.workers[0].stop().await;
    let restarted = Instant::now();
    story.workers[0].start();
    site.wait_for_hits("next", "worker-1", Some(restarted), 1)
        .await;
    tokio::time::sleep(HEARTBEAT).await;
    let after = story.api().get("doomed").await.unwrap();
    verdict.judged += 1;
    if kube::ResourceExt::resource_version(&after) != rv {
        verdict.violation(
            "failed-crawl-touched-again",
            format!("after the worker restart: {:?}", after.status),
        );
    }
    verdict.judged += 1;
    if !site.hits("doomed").is_empty() {
        verdict.violation("doomed-fetched", format!("{}", site.hits("doomed").len()));
    }
    verdict.figure("seconds_to_failed", &format!("{:.2}", took.as_secs_f64()));
    verdict.print_and_assert();
}

/// A run that takes longer than `activeDeadlineSeconds` is stopped and the crawl is `Failed`
/// for good with reason `DeadlineExceeded`: one run only, whatever `backoffLimit` says, and no
/// request after the deadline (judged from the site's request log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_stops_a_run_and_fails_the_crawl() {
    let (site, story) = opening("jobfields-deadline", 10).await;
    let mut spec = endless(&site, "slow");
    spec["activeDeadlineSeconds"] = json!(2);
    story.apply_resource("slow", spec).await;
    let r = story.wait_for_resource("slow", "Failed", failed).await;
    let failed_seen = Instant::now();
    let s = r.status.clone().unwrap();
    let hits = site.hits("slow");
    let first = hits.iter().map(|h| h.at).min().expect("it ran");
    let last = hits.iter().map(|h| h.at).max().expect("it ran");
    let ran = last.duration_since(first);
    println!(
        "JOBFIELDS deadline 2s: {} requests over {ran:?}; Failed seen {:?} after the last",
        hits.len(),
        failed_seen.duration_since(last)
    );
    let mut verdict = Verdict::new("jobfields-deadline");
    verdict.judged += 1;
    if s.assignments != Some(1)
        || s.failures != Some(1)
        || s.assigned_worker.is_some()
        || assigned_condition_reason(&r) != "DeadlineExceeded"
        || s.progress.as_ref().and_then(|p| p.reason.as_deref()) != Some("DeadlineExceeded")
    {
        verdict.violation("deadline-status", format!("{s:?}"));
    }
    verdict.judged += 1;
    if ran > Duration::from_millis(2500) || ran < Duration::from_millis(1500) {
        verdict.violation("ran-past-the-deadline", format!("{ran:?}"));
    }
    // Not retried: no request after it failed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    verdict.judged += 1;
    if site.hits("slow").len() != hits.len() {
        verdict.violation(
            "retried-after-the-deadline",
            format!("{:?}", site.hits("slow").len()),
        );
    }
    verdict.figure("ran_ms", &ran.as_millis().to_string());
    verdict.print_and_assert();
}

/// A crawl that finished is deleted `ttlSecondsAfterFinished` after it finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_deletes_a_finished_crawl() {
    let (site, story) = opening("jobfields-ttl", 10).await;
    story
        .apply_resource(
            "brief",
            json!({
                "seeds": [site.seed("brief")], "maxDepth": 1,
                "rateLimit": { "requestsPerSecond": 20, "burst": 1 },
                "ttlSecondsAfterFinished": 2,
            }),
        )
        .await;
    story
        .wait_for_resource("brief", "Succeeded", |r| phase(r) == Some(Phase::Succeeded))
        .await;
    let succeeded = Instant::now();
    let api = story.api();
    support::wait_for("brief to be deleted", BOUND, POLL, || {
        let api = api.clone();
        async move {
            match api.get_opt("brief").await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(r) => Err(format!("{:?}", r.status.map(|s| s.phase))),
            }
        }
    })
    .await;
    let after = succeeded.elapsed();
    println!("JOBFIELDS ttl 2s: deleted {after:?} after Succeeded was seen");
    assert!(
        after >= Duration::from_millis(900) && after <= Duration::from_secs(5),
        "deleted {after:?} after it succeeded, with ttlSecondsAfterFinished 2 (completedAt is \
         rounded to the second)"
    );
}

/// `kubectl explain` describes the Job fields and what a failed crawl shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_the_job_fields() {
    let story = Story::new("explain-jobfields").await;
    for (path, expected) in [
        (
            "crawlerresources.spec.backoffLimit",
            "How many failed runs are retried",
        ),
        (
            "crawlerresources.spec.activeDeadlineSeconds",
            "reason `DeadlineExceeded`",
        ),
        (
            "crawlerresources.spec.ttlSecondsAfterFinished",
            "Stored results are kept",
        ),
        (
            "crawlerresources.status.failures",
            "Failed runs of the spec",
        ),
        (
            "crawlerresources.status.retryAt",
            "when the crawl is placed again",
        ),
        ("crawlerresources.status.lastFailure", "The last failed run"),
        (
            "crawlerresources.status.failedAt",
            "When the crawl failed for good",
        ),
        (
            "crawlerresources.status.progress.reason",
            "DeadlineExceeded",
        ),
    ] {
        story.wait_for_explain(path, expected).await;
    }
    // Refused at apply, naming the field.
    for (spec, field) in [
        (
            json!({ "seeds": ["https://a.example/"], "backoffLimit": -1 }),
            "spec.backoffLimit",
        ),
        (
            json!({ "seeds": ["https://a.example/"], "activeDeadlineSeconds": 0 }),
            "spec.activeDeadlineSeconds",
        ),
        (
            json!({ "seeds": ["https://a.example/"], "ttlSecondsAfterFinished": -5 }),
            "spec.ttlSecondsAfterFinished",
        ),
    ] {
        let message = story.refused_spec(&spec).await;
        assert!(message.contains(field), "{message}");
    }
}
