//! Silent failures: a process whose open connections to the API server stop passing bytes (no
//! FIN, no RST) while new connections work, as behind a NAT or load balancer that lost its
//! state. Judged from what the site received (who fetched which task, when).

use crate::support;

use std::time::{Duration, Instant};

use crawler_operator::crd::Phase;
use kube::api::DeleteParams;
use support::{
    pods::delete_pod,
    proxy::Proxy,
    site::{Site, endless},
    story::{
        HEARTBEAT, Story, handoff_stage_via_proxy, phase, stale_after, worker_1_running_via_proxy,
    },
};

/// Slack for a loaded 2-core machine on top of a stated bound.
const SLACK: Duration = Duration::from_millis(700);

/// The last request for `task`, waiting past `bound` first (absence is observed over a window).
async fn last_request_after(site: &Site, task: &str, since: Instant, bound: Duration) -> Duration {
    tokio::time::sleep(bound + Duration::from_secs(1)).await;
    site.last_hit_after(task, since)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_went_silent_stops_tasks_deleted_or_suspended_meanwhile() {
    let (site, story, proxy) = worker_1_running_via_proxy("silent-worker").await;
    story.apply_resource("gone", endless(&site, "gone")).await;
    story
        .apply_resource("paused", endless(&site, "paused"))
        .await;
    site.wait_for_hits("gone", "worker-1", None, 3).await;
    site.wait_for_hits("paused", "worker-1", None, 3).await;

    let frozen = proxy.freeze();
    let froze = Instant::now();
    story
        .api()
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    story.set_suspend("paused", true).await;
    // Its watch saw nothing; a LIST on a new connection does (or the view goes stale): either
    // way the tasks stop within the stale bound of the freeze.
    let last_gone = last_request_after(&site, "gone", froze, stale_after() + SLACK).await;
    let last_paused = site.last_hit_after("paused", froze);
    // Suspended is written only once worker-1 confirmed the stop or its heartbeat lapsed.
    let r = story
        .wait_for_resource("paused", "phase Suspended", |r| {
            phase(r) == Some(Phase::Suspended)
        })
        .await;
    let suspended = froze.elapsed();
    let how =
        r.status
            .as_ref()
            .and_then(|s| s.progress.as_ref())
            .map_or("its heartbeat lapsed", |p| {
                if p.released {
                    "worker-1 confirmed the stop"
                } else {
                    "its heartbeat lapsed"
                }
            });
    println!(
        "{frozen} connections frozen: last request of the deleted task {last_gone:?}, of the \
         suspended one {last_paused:?} after the freeze (bound {:?}); Suspended seen \
         {suspended:?} after it ({how})",
        stale_after()
    );
    assert!(last_gone < stale_after() + SLACK, "{last_gone:?}");
    assert!(last_paused < stale_after() + SLACK, "{last_paused:?}");
    assert!(
        last_paused < suspended,
        "the suspended task was crawled {:?} after Suspended was seen",
        last_paused.saturating_sub(suspended)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_moved_off_a_worker_whose_connections_went_silent_starts_elsewhere_only_after_it_stopped()
 {
    let (site, story, proxy) = handoff_stage_via_proxy("silent-move", "task-s").await;

    proxy.freeze();
    let froze = Instant::now();
    // The Pod goes (its process lives on, as while a kubelet is still killing it): the move is a
    // handoff, since worker-1's heartbeat is alive. worker-1 either sees the release on a new
    // connection and confirms, or its view goes stale, it withholds its heartbeat and the lapse
    // completes the handoff: either way worker-2 starts only after worker-1 stopped.
    delete_pod(&story.client, story.ns(), "worker-1").await;
    story.assert_assigned("task-s", "worker-2").await;
    let moved = froze.elapsed();
    site.wait_for_hits("task-s", "worker-2", None, 3).await;
    // Absence is observed over a window: wait past the bound, then look at worker-1's requests.
    last_request_after(&site, "task-s", froze, stale_after() + SLACK).await;
    let (last_old_at, first_new) = site.handover("task-s", "worker-1", "worker-2");
    let last_old = last_old_at.saturating_duration_since(froze);
    let r = story.api().get("task-s").await.unwrap();
    let how = r
        .status
        .as_ref()
        .and_then(|s| s.condition("Assigned"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    println!(
        "moved while frozen: worker-1's last request {last_old:?} after the freeze, the task \
         placed on worker-2 {moved:?} after it, worker-2's first request {:?} after it: gap {:?} \
         ({how})",
        first_new.saturating_duration_since(froze),
        first_new.saturating_duration_since(last_old_at)
    );
    assert!(
        last_old_at < first_new,
        "overlap: worker-1 still crawled {:?} after worker-2 started",
        last_old_at - first_new
    );
    assert!(
        last_old < stale_after() + SLACK,
        "worker-1 kept the task {last_old:?} after the freeze (bound {:?})",
        stale_after()
    );
    site.overlap_verdict().print_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_whose_connections_went_silent_moves_nothing_off_live_workers() {
    let site = Site::start().await;
    let mut story = Story::new("silent-controller").await;
    let proxy = Proxy::start(story.cp.apiserver_addr());
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    story.start_controller_via("controller-a", Some(&proxy));
    story.start_worker("worker-1", None);
    story.start_worker("worker-2", None);
    for t in ["hb-1", "hb-2", "hb-3", "hb-4"] {
        story.apply_resource(t, endless(&site, t)).await;
    }
    let placed = story
        .assert_all_assigned(&["hb-1", "hb-2", "hb-3", "hb-4"])
        .await;
    site.wait_for_hits("hb-1", &placed["hb-1"], None, 3).await;

    // Its heartbeat watch sees no renewal from now on; without a confirming read every
    // heartbeat would look expired after one duration and every task would move.
    let frozen = proxy.freeze();
    tokio::time::sleep(HEARTBEAT * 4).await;
    let moved: Vec<_> = story
        .api()
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| {
            let name = r.metadata.name.clone().unwrap();
            let w = r.status.and_then(|s| s.assigned_worker);
            (w.as_deref() != Some(placed[&name].as_str())).then_some(name)
        })
        .collect();
    println!(
        "{frozen} controller connections frozen for {:?}: {} of 4 tasks moved",
        HEARTBEAT * 4,
        moved.len()
    );
    assert!(moved.is_empty(), "tasks moved off live workers: {moved:?}");
    site.overlap_verdict().print_and_assert();
    let log = std::fs::read_to_string(&story.controllers[0].log).unwrap();
    assert!(!log.contains("worker heartbeat expired"), "{log}");
}
