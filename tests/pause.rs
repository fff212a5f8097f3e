//! A worker process paused (SIGSTOP, as in a long GC pause or a frozen VM) past its heartbeat
//! with crawls running: after SIGCONT it must send no request. Its heartbeat lapsed during the
//! pause, so the controller may already count the tasks as free; the worker's heartbeat loop
//! notices the lapse only when it runs again, and the crawl engines wake up at the same moment.
//! Each engine checks the heartbeat's deadline before every request (`crawl::SendDeadline`), so
//! none goes out in between. Judged from the site's request log.
//!
//! What the engine's check before each request cannot hold back, a request it let through just
//! before the pause whose bytes the connection's task writes on waking, is refused at the write
//! (`crawl::client`: every write checks the deadline). `make test` pauses once; `make soak`
//! (`CRAWLER_SOAK=1`) pauses the same worker `CRAWLER_SOAK_PAUSE_CYCLES` times (20), each time
//! once its tasks run again. Before the check at the write, a 20-pause run on a machine at load
//! 11 found 6 requests within 15 ms of one resume, and a `make test` at load 15 found one 20 ms
//! after the resume.

use crate::{reliability, support};

use std::time::{Duration, Instant};

use serde_json::json;
use support::{
    judge::Verdict,
    site::Site,
    story::{HEARTBEAT, Story},
};

/// Crawls running on the paused worker (each has two requests in flight at most).
const TASKS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_heartbeat_sends_no_request_after_it_resumes() {
    let cycles = if reliability::soak() {
        reliability::soak_cycles("CRAWLER_SOAK_PAUSE_CYCLES", 20)
    } else {
        1
    };
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
    }

    // Judge `resume-requests`: nothing reached the site from worker-1 between SIGCONT and D/2
    // after it (its tasks may run again only after a renewal that succeeds and a further
    // heartbeat duration D). The site stamps a request when its handler runs, which on a loaded
    // machine can be long after the bytes arrived; but no byte leaves a stopped process, so a
    // request stamped after SIGCONT was written after it, and one stamped before it was not.
    let mut verdict = Verdict::new("resume-requests");
    let mut windows = Vec::new();
    let mut before_pause = 0;
    let mut resumed: Option<Instant> = None;
    for _ in 0..cycles {
        // The tasks run (again: after a pause they restart once the heartbeat is back).
        for task in &tasks {
            site.wait_for_hits(task, "worker-1", resumed, 20).await;
        }
        // Paused for longer than the heartbeat allows (it stops tasks after D/2).
        story.workers[0].signal("STOP");
        let stopped = Instant::now();
        tokio::time::sleep(HEARTBEAT + HEARTBEAT / 2).await;
        let cont = Instant::now();
        story.workers[0].signal("CONT");
        windows.push((stopped, cont, cont + HEARTBEAT / 2));
        resumed = Some(cont);
        tokio::time::sleep(HEARTBEAT / 2).await;
    }
    // Whatever the engines would have sent on waking has reached the site long before this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for task in &tasks {
        for hit in site.hits(task).iter().filter(|h| h.worker == "worker-1") {
            verdict.judged += 1;
            for (stopped, from, to) in &windows {
                if hit.at > *from && hit.at < *to {
                    verdict.violation(
                        "request-after-resume",
                        format!(
                            "{task} page {} {:?} after SIGSTOP",
                            hit.page,
                            hit.at - *stopped
                        ),
                    );
                } else if hit.at <= *stopped && hit.at + Duration::from_millis(500) > *stopped {
                    before_pause += 1;
                }
            }
        }
    }
    verdict.count("pauses", cycles);
    verdict.count("requests_in_the_last_500ms_before_a_pause", before_pause);
    println!("{}", verdict.line());
    assert!(
        before_pause > 0,
        "worker-1 was not crawling when it was paused; the scenario did not happen"
    );
    verdict.assert_clean();
}
