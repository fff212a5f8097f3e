//! A worker process paused (SIGSTOP, as in a long GC pause or a frozen VM) past its heartbeat
//! with crawls running: after SIGCONT it must send no request. Its heartbeat lapsed during the
//! pause, so the controller may already count the tasks as free; the worker's heartbeat loop
//! notices the lapse only when it runs again, and the crawl engines wake up at the same moment.
//! Each engine checks the heartbeat's deadline before every request (`crawl::SendDeadline`), so
//! none goes out in between. Judged from the site's request log.

use crate::support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    judge::Verdict,
    site::Site,
    story::{BOUND, HEARTBEAT, POLL, Story},
    wait_for,
};

/// Crawls running on the paused worker (each has two requests in flight at most).
const TASKS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_heartbeat_sends_no_request_after_it_resumes() {
    let site = Site::start().await;
    let mut story = Story::new("pause").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.start_worker("worker-1", None);
    let tasks: Vec<String> = (0..TASKS).map(|i| format!("paused-{i}")).collect();
    for task in &tasks {
        // Fast: whenever a page comes back, the next request is due at once.
        story
            .apply_resource(
                task,
                json!({ "seeds": [site.seed(task)], "maxDepth": 10,
                        "rateLimit": { "requestsPerSecond": 100, "burst": 10 } }),
            )
            .await;
    }
    for task in &tasks {
        story.assert_assigned(task, "worker-1").await;
        site.wait_for_hits(task, "worker-1", None, 20).await;
    }

    // Paused for longer than the heartbeat allows (it stops tasks after HEARTBEAT / 2).
    story.workers[0].signal("STOP");
    let stopped = Instant::now();
    tokio::time::sleep(HEARTBEAT + HEARTBEAT / 2).await;
    story.workers[0].signal("CONT");
    // It notices the lapse (and stops every task) as soon as its heartbeat loop runs.
    wait_for("worker-1 to notice its lapse", BOUND, POLL, || async {
        if story.workers[0]
            .log_tail(400)
            .contains("heartbeat not renewed in time")
        {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    // Whatever the engines would have sent on waking has gone out long before this.
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Judge `resume-requests`: nothing reached the site from worker-1 after the resume. (No
    // request can be sent while the process is stopped: any hit received more than half a
    // second after SIGSTOP was sent after SIGCONT.)
    let after = stopped + Duration::from_millis(500);
    let mut verdict = Verdict::new("resume-requests");
    let mut before_pause = 0;
    for task in &tasks {
        for hit in site.hits(task).iter().filter(|h| h.worker == "worker-1") {
            verdict.judged += 1;
            if hit.at > after {
                verdict.violation(
                    "request-after-resume",
                    format!(
                        "{task} page {} {:?} after SIGSTOP",
                        hit.page,
                        hit.at - stopped
                    ),
                );
            } else if hit.at + Duration::from_millis(500) > stopped {
                before_pause += 1;
            }
        }
    }
    verdict.count("requests_in_the_last_500ms_before_the_pause", before_pause);
    println!("{}", verdict.line());
    assert!(
        before_pause > 0,
        "worker-1 was not crawling when it was paused; the scenario did not happen"
    );
    verdict.assert_clean();
}
