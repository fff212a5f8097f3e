//! What a running task writes into its status (issue 25): its start and its end at once, its
//! page counts once per `--progress-interval`. A fleet's status writes then grow with the number
//! of running tasks divided by the interval, not with the pages they crawl.

use crate::support;

use crawler_operator::crd::{Phase, TaskState};
use support::{
    site::{Site, endless},
    story::{Story, phase},
};

/// With a 60 s interval, a task that has fetched dozens of pages still shows its start report
/// (0 pages), and its count reaches status the moment the run ends (a suspend here), not at the
/// next interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_tasks_counts_wait_for_the_interval_and_its_end_is_written_at_once() {
    let site = Site::start().await;
    let mut story = Story::new("progress").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    // A heartbeat of 6 s rather than the harness's 2 s: a renewal late on a loaded machine would
    // restart the run, and a restart writes a report of its own.
    story.start_worker_with(
        "worker-1",
        None,
        &[
            "--progress-interval=60s".to_owned(),
            "--heartbeat-duration=6s".to_owned(),
        ],
    );
    story
        .apply_resource("task-p", endless(&site, "task-p"))
        .await;
    story.assert_assigned("task-p", "worker-1").await;
    site.wait_for_hits("task-p", "worker-1", None, 30).await;

    let r = story.api().get("task-p").await.expect("task-p");
    let progress = r.status.and_then(|s| s.progress).expect("the start report");
    let fetched = site.hits("task-p").len();
    println!(
        "after {fetched} requests, status.progress says {:?} with {} pages",
        progress.state, progress.pages_fetched
    );
    assert_eq!(progress.state, TaskState::Running, "{progress:?}");
    assert_eq!(
        (progress.assignment, progress.pages_fetched),
        (1, 0),
        "the counts were written before the 60 s interval: {progress:?}"
    );

    // The end of the run is a change of state: written at once, with its counts.
    story.set_suspend("task-p", true).await;
    let r = story
        .wait_for_resource("task-p", "phase Suspended", |r| {
            phase(r) == Some(Phase::Suspended)
        })
        .await;
    let progress = r.status.and_then(|s| s.progress).expect("the final report");
    let requests = site.hits("task-p").len();
    println!(
        "suspended: final report {:?} with {} pages; the site saw {requests} requests",
        progress.state, progress.pages_fetched
    );
    assert_eq!(progress.state, TaskState::Stopped, "{progress:?}");
    assert!(
        progress.pages_fetched >= i64::try_from(fetched).unwrap_or(i64::MAX),
        "the final report carries the run's counts: {} pages, {fetched} requests seen before",
        progress.pages_fetched
    );
}
