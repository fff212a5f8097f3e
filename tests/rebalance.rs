//! The opt-in rebalance (`--rebalance`) against a real kube-apiserver, with real worker
//! processes crawling a local site: after workers join (and one leaves meanwhile), the load
//! evens out to within the threshold, the moves stay within the budget, and each move is judged
//! from the site's request log. Without `--rebalance` nothing well placed moves: that is
//! `tests/controller.rs`'s `the_original_demonstration` ("a new worker joins: nothing moves").

use crate::support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crawler_operator::crd::{CONDITION_ASSIGNED, Phase};
use kube::{ResourceExt, api::ListParams};
use serde_json::json;
use support::{
    pods::delete_pod,
    site::{Site, metric_value},
    story::{BOUND, POLL, Story},
    wait_for,
};

/// The flags under test: 2 moves/s (a bucket of 2), loads within 1 of each other, no cooldown
/// (the tasks were all placed moments before the workers join).
const RATE: f64 = 2.0;
const BURST: f64 = 2.0;
const THRESHOLD: usize = 1;
const FLAGS: [&str; 4] = [
    "--rebalance",
    "--rebalance-moves-per-second=2",
    "--rebalance-threshold=1",
    "--rebalance-cooldown=0s",
];
const TASKS: usize = 9;

/// A crawl that keeps going for the whole test, gently (9 of them share the machine).
fn steady(site: &Site, task: &str) -> serde_json::Value {
    json!({ "seeds": [site.seed(task)], "maxDepth": 10, "rateLimit": { "requestsPerSecond": 5, "burst": 1 } })
}

/// One change of a resource's worker or phase, as the test saw it (polling every 50 ms).
#[derive(Clone, Debug)]
struct Change {
    seen: Instant,
    task: String,
    from: Option<String>,
    to: Option<String>,
    phase: Option<Phase>,
    /// The `Assigned` condition's reason and message.
    reason: String,
    message: String,
}

impl Change {
    /// The rebalance asked for this move: the old worker was asked to let the task go.
    fn is_rebalance_release(&self) -> bool {
        self.phase == Some(Phase::Releasing) && self.message.contains("(rebalance)")
    }

    /// The rebalance's move completed: the task is placed anew (on the least loaded worker at
    /// that moment: its old one, in the rare case that loads changed that much meanwhile).
    fn is_rebalanced(&self) -> bool {
        self.reason == "Rebalanced" && self.phase == Some(Phase::Assigned)
    }
}

/// Records every change of `assignedWorker` or phase after the first look, until the returned
/// flag is set.
fn record_changes(story: &Story) -> (Arc<Mutex<Vec<Change>>>, Arc<std::sync::atomic::AtomicBool>) {
    let api = story.api();
    let changes: Arc<Mutex<Vec<Change>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (log, done) = (Arc::clone(&changes), Arc::clone(&stop));
    tokio::spawn(async move {
        let mut last: BTreeMap<String, (Option<String>, Option<Phase>)> = BTreeMap::new();
        let mut first = true;
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(list) = api.list(&ListParams::default()).await {
                let seen = Instant::now();
                for r in list {
                    let status = r.status.clone().unwrap_or_default();
                    let now = (status.assigned_worker.clone(), status.phase);
                    let name = r.name_any();
                    let before = last.insert(name.clone(), now.clone());
                    if first || before.as_ref() == Some(&now) {
                        continue;
                    }
                    let condition = status.condition(CONDITION_ASSIGNED);
                    log.lock().unwrap().push(Change {
                        seen,
                        task: name,
                        from: before.and_then(|b| b.0),
                        to: now.0,
                        phase: now.1,
                        reason: condition.map(|c| c.reason.clone()).unwrap_or_default(),
                        message: condition.map(|c| c.message.clone()).unwrap_or_default(),
                    });
                }
                first = false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (changes, stop)
}

/// Where each task runs, if every task runs on one of `workers`.
async fn placement(story: &Story, workers: &[&str]) -> Result<BTreeMap<String, String>, String> {
    let mut placed = BTreeMap::new();
    for r in story
        .api()
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
    {
        let worker = r.status.as_ref().and_then(|s| s.assigned_worker.clone());
        match worker {
            Some(w) if workers.contains(&w.as_str()) => placed.insert(r.name_any(), w),
            other => return Err(format!("{} on {other:?}", r.name_any())),
        };
    }
    Ok(placed)
}

/// Tasks per worker among `workers`.
fn loads(placed: &BTreeMap<String, String>, workers: &[&str]) -> BTreeMap<String, usize> {
    let mut loads: BTreeMap<String, usize> = workers.iter().map(|w| ((*w).to_owned(), 0)).collect();
    for w in placed.values() {
        *loads.entry(w.clone()).or_default() += 1;
    }
    loads
}

/// The controller's own count of rebalance moves, (planned, made), checked against the budget
/// since it started and against the moves `seen` made.
async fn controller_counts(
    story: &Story,
    controller: usize,
    started: Instant,
    seen: usize,
) -> (f64, f64) {
    let (_, metrics) = Story::http_get(&story.controllers[controller], "/metrics").await;
    let stage = |s: &str| {
        metric_value(
            &metrics,
            &format!("crawler_controller_rebalance_moves_total{{stage=\"{s}\"}}"),
        )
    };
    let (planned, made) = (stage("planned"), stage("made"));
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let seen = seen as f64;
    assert!(
        planned <= BURST + RATE * elapsed,
        "{planned} planned in {elapsed:.1} s"
    );
    assert!(
        (made - seen).abs() < 0.5 && made <= planned,
        "made {made}, seen {seen}, planned {planned}"
    );
    (planned, made)
}

/// The budget, seen from outside: in any window between two observed moves, at most
/// burst + rate * length (+ 0.5 s for the 50 ms polling and the writes' latency). A move is
/// dated by its request (the release the test saw, or, if a release was over before a poll saw
/// it, by its completion, which only comes later).
fn assert_within_budget(changes: &[Change]) {
    let mut requested: Vec<Instant> = changes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_rebalanced())
        .map(|(i, c)| {
            changes[..i]
                .iter()
                .rev()
                .find(|r| r.task == c.task)
                .filter(|r| r.is_rebalance_release())
                .map_or(c.seen, |r| r.seen)
        })
        .collect();
    requested.sort();
    for (i, first) in requested.iter().enumerate() {
        for (j, last) in requested.iter().enumerate().skip(i) {
            let window = last.duration_since(*first).as_secs_f64();
            #[allow(clippy::cast_precision_loss)]
            let count = (j - i + 1) as f64;
            assert!(
                count <= BURST + RATE * (window + 0.5),
                "{count} moves within {window:.2} s (budget {BURST} + {RATE}/s): {changes:#?}"
            );
        }
    }
}

/// Per rebalanced task, from the site's request log: the old worker's last request strictly
/// before the new worker's first; returns the gaps (none for a task whose new worker left
/// before it made a request).
fn handovers(site: &Site, rebalanced: &[&Change]) -> Vec<Duration> {
    let mut gaps = Vec::new();
    for c in rebalanced {
        let (Some(from), Some(to)) = (&c.from, &c.to) else {
            continue;
        };
        if from == to {
            continue;
        }
        let hits = site.hits(&c.task);
        let last_old = hits
            .iter()
            .filter(|h| &h.worker == from)
            .map(|h| h.at)
            .max();
        let first_new = hits.iter().filter(|h| &h.worker == to).map(|h| h.at).min();
        if let (Some(last_old), Some(first_new)) = (last_old, first_new) {
            assert!(
                last_old < first_new,
                "{}: {from} ran it after {to} started",
                c.task
            );
            gaps.push(first_new.duration_since(last_old));
        }
    }
    gaps
}

fn print_changes(changes: &[Change]) {
    for c in changes {
        println!(
            "  +{:>6.2} s  {}: {:?} -> {:?} {:?} ({})",
            c.seen.duration_since(changes[0].seen).as_secs_f64(),
            c.task,
            c.from,
            c.to,
            c.phase,
            c.reason
        );
    }
}

fn spread(loads: &BTreeMap<String, usize>) -> usize {
    loads.values().max().unwrap_or(&0) - loads.values().min().unwrap_or(&0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_join_get_their_share_within_the_budget_under_churn() {
    let site = Site::start().await;
    let mut story = Story::new("rebalance").await;
    story.ready_worker("worker-1").await;
    story.start_worker("worker-1", None);
    let started = Instant::now();
    let controller = story.start_controller_with("controller-a", None, &FLAGS);
    story.wait_for_leader("controller-a").await;
    let names: Vec<String> = (1..=TASKS).map(|i| format!("task-{i}")).collect();
    for name in &names {
        story.apply_resource(name, steady(&site, name)).await;
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let placed = story.assert_all_assigned(&refs).await;
    assert!(placed.values().all(|w| w == "worker-1"), "{placed:?}");
    for name in &names {
        site.wait_for_hits(name, "worker-1", None, 1).await;
    }

    let (changes, stop) = record_changes(&story);
    // Two workers join.
    for worker in ["worker-2", "worker-3"] {
        story.ready_worker(worker).await;
        story.start_worker(worker, None);
    }
    // Churn while the rebalance is under way: once the first moves are made, worker-4 joins and
    // worker-2 leaves (its Pod deleted, its process killed, as a kubelet would).
    wait_for("the first rebalance moves", BOUND, POLL, || async {
        let moved = changes
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.is_rebalanced())
            .count();
        if moved >= 2 {
            Ok(())
        } else {
            Err(format!("{moved} moves"))
        }
    })
    .await;
    story.ready_worker("worker-4").await;
    story.start_worker("worker-4", None);
    delete_pod(&story.client, story.ns(), "worker-2").await;
    story.workers[1].stop().await;

    let left = ["worker-1", "worker-3", "worker-4"];
    let settled = wait_for("loads within the threshold", BOUND, POLL, || async {
        let placed = placement(&story, &left).await?;
        let loads = loads(&placed, &left);
        if spread(&loads) <= THRESHOLD {
            Ok(placed)
        } else {
            Err(format!("{loads:?}"))
        }
    })
    .await;
    let even = loads(&settled, &left);
    // Settled: two more seconds (a round every second) move nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = changes.lock().unwrap().clone();
    assert_eq!(
        placement(&story, &left).await.unwrap(),
        settled,
        "moved after the loads were even: {changes:#?}"
    );

    // Every change is the rebalance's (release, then placement) or placement's (worker-2's
    // tasks when it left: released, then placed after its heartbeat lapsed).
    let rebalanced: Vec<&Change> = changes.iter().filter(|c| c.is_rebalanced()).collect();
    assert!(
        changes
            .iter()
            .all(|c| matches!(c.reason.as_str(), "Rebalanced" | "Reassigned" | "Releasing")),
        "{changes:#?}"
    );
    assert!(!rebalanced.is_empty(), "{changes:#?}");
    assert_within_budget(&changes);
    let (planned, made) = controller_counts(&story, controller, started, rebalanced.len()).await;

    // Judged from the site's request log: no request of an older assignment after the first
    // request of a newer one, for any task; and per rebalanced task, the old worker's last
    // request strictly before the new worker's first.
    print_changes(&changes);
    let gaps = handovers(&site, &rebalanced);
    let overlaps = site.overlaps();
    println!(
        "rebalance: {} moves made ({made} counted, {planned} planned), {} changes in all; loads {even:?}; gaps between the old worker's last request and the new one's first: {gaps:?}; overlapping requests: {}",
        rebalanced.len(),
        changes.len(),
        overlaps.len(),
    );
    assert_eq!(
        overlaps,
        Vec::<String>::new(),
        "a task ran on two workers at once"
    );
}
