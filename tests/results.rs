//! Worker processes with the PostgreSQL sink, against a real kube-apiserver, a real PostgreSQL
//! and the local site: a stale owner is refused by the store and stops; a moved task resumes
//! on its new worker and completes (`Complete` condition), with its pages stored exactly once.

use crate::support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use crawler_operator::crd::TaskState;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::{
    pods::delete_pod,
    postgres::{self, Postgres},
    site::Site,
    story::{BOUND, POLL, Story},
    wait_for,
};

fn pg_flags(url: &str) -> Vec<String> {
    vec![
        "--sink=postgres".to_owned(),
        format!("--database-url={url}"),
        "--checkpoint-interval=200ms".to_owned(),
    ]
}

/// A finite crawl: depth 7 of the site's binary tree, 255 pages, at 25 requests/s.
fn tree(site: &Site, task: &str) -> serde_json::Value {
    json!({ "seeds": [site.seed(task)], "maxDepth": 7, "rateLimit": { "requestsPerSecond": 25, "burst": 1 } })
}

async fn assign(story: &Story, name: &str, worker: &str, assignments: i64) {
    let status = json!({ "status": {
        "phase": "Assigned", "assignedWorker": worker, "assignments": assignments,
    }});
    story
        .api()
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

fn sql(db: &str, query: &str) -> String {
    postgres::shared()
        .psql(db, query)
        .unwrap_or_else(|e| panic!("{query}: {e}"))
}

async fn wait_sql(db: &str, what: &str, query: &str, done: impl Fn(&str) -> bool) -> String {
    // Before the worker has applied the migrations, the tables do not exist yet.
    wait_for(what, BOUND, POLL, || async {
        let out = postgres::shared().psql(db, query)?;
        if done(&out) { Ok(out) } else { Err(out) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_worker_process_is_refused_by_the_store_and_stops_its_task() {
    let site = Site::start().await;
    let url = postgres::shared().database("fence_procs");
    let db = Postgres::db_of(&url).to_owned();
    let mut story = Story::new("fence").await;
    story
        .apply_resource(
            "task-f",
            json!({ "seeds": [site.seed("task-f")], "maxDepth": 10, "rateLimit": { "requestsPerSecond": 25, "burst": 1 } }),
        )
        .await;
    assign(&story, "task-f", "worker-1", 1).await;
    // Kleppmann's case: the owner pauses (SIGSTOP, as in a long GC pause or a frozen VM) with
    // pages in hand, the task moves, the new owner writes, and then the old one wakes up. A long
    // heartbeat and checkpoint interval keep it from noticing anything by itself in between.
    let mut flags = pg_flags(&url);
    flags.retain(|f| !f.starts_with("--checkpoint-interval="));
    flags.push("--heartbeat-duration=60s".to_owned());
    flags.push("--checkpoint-interval=60s".to_owned());
    story.start_worker_with("worker-1", None, &flags);
    wait_sql(
        &db,
        "a batch stored by assignment 1",
        "SELECT count(*) FROM crawl_pages WHERE state = 'visited' AND assignment = 1",
        |n| n.parse::<u32>().unwrap_or(0) >= 1,
    )
    .await;
    let stored = site.hits("task-f").len();
    site.wait_for_hits("task-f", "worker-1", None, stored + 10)
        .await;
    story.workers[0].signal("STOP");

    assign(&story, "task-f", "worker-2", 2).await;
    story.start_worker_with("worker-2", None, &pg_flags(&url));
    wait_sql(
        &db,
        "worker-2 claims the task",
        "SELECT assignment FROM crawl_tasks",
        |a| a == "2",
    )
    .await;
    site.wait_for_hits("task-f", "worker-2", None, 5).await;
    story.workers[0].signal("CONT");
    let woke = Instant::now();

    // worker-1 writes what it holds, is refused, and stops the task, saying why.
    let log = wait_for("worker-1 refused as stale", BOUND, POLL, || async {
        let log = story.workers[0].log_tail(200);
        if log.contains("refused as stale") {
            Ok(log)
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    assert!(
        log.contains("the store holds assignment 2 of task task-f"),
        "{log}"
    );
    // Judged from the database: nothing of assignment 1 stored after assignment 2 claimed it,
    // though worker-1 held pages it fetched before the move.
    let late = sql(
        &db,
        "SELECT count(*) FROM crawl_pages p JOIN crawl_tasks t USING (namespace, resource_uid)
          WHERE p.assignment < t.assignment AND p.stored_at > t.claimed_at",
    );
    assert_eq!(late, "0");
    // Judged from the site: once awake, worker-1 made few requests, if any, before it stopped.
    let after: Vec<Duration> = site
        .hits("task-f")
        .iter()
        .filter(|h| h.worker == "worker-1" && h.at > woke)
        .map(|h| h.at - woke)
        .collect();
    println!("RESULTS fence: worker-1's requests after it woke up: {after:?}");
    assert!(
        after.iter().all(|d| *d < Duration::from_secs(5)),
        "worker-1 kept fetching after it woke up: {after:?}"
    );
    // Every stored page has exactly one row, whoever wrote it.
    let rows = sql(
        &db,
        "SELECT count(*) = count(DISTINCT url) FROM crawl_pages",
    );
    assert_eq!(rows, "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_task_resumes_on_its_new_worker_and_completes() {
    let site = Site::start().await;
    let url = postgres::shared().database("resume_procs");
    let db = Postgres::db_of(&url).to_owned();
    let mut story = Story::new("resume").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.start_worker_with("worker-1", None, &pg_flags(&url));
    story.apply_resource("task-r", tree(&site, "task-r")).await;
    story.assert_assigned("task-r", "worker-1").await;
    wait_sql(
        &db,
        "40 pages stored by worker-1",
        "SELECT count(*) FROM crawl_pages WHERE state = 'visited'",
        |n| n.parse::<u32>().unwrap_or(0) >= 40,
    )
    .await;

    story.ready_worker("worker-2").await;
    story.start_worker_with("worker-2", None, &pg_flags(&url));
    delete_pod(&story.client, story.ns(), "worker-1").await;
    let moved = Instant::now();
    story.assert_assigned("task-r", "worker-2").await;

    // `kubectl wait --for=condition=Complete` sees what this waits for.
    let api = story.api();
    let complete = wait_for("condition Complete=True", BOUND * 2, POLL, || async {
        let r = api.get("task-r").await.map_err(|e| e.to_string())?;
        let status = r.status.unwrap_or_default();
        match status.condition("Complete") {
            Some(c) if c.status == "True" => Ok((c.clone(), status)),
            other => Err(format!("{other:?} {:?}", status.progress)),
        }
    })
    .await;
    let (condition, status) = complete;
    assert_eq!(condition.reason, "Finished");
    assert_eq!(condition.observed_generation, Some(1));
    assert_eq!(
        status.condition("Failed").map(|c| c.status.as_str()),
        Some("False")
    );
    assert!(
        status.condition("Assigned").is_some(),
        "the controller's condition stays"
    );
    let progress = status.progress.unwrap();
    assert_eq!(
        (
            progress.worker.as_str(),
            progress.assignment,
            progress.state
        ),
        ("worker-2", 2, TaskState::Completed)
    );
    // pagesFetched continues from the stored count: the whole tree, though worker-2 fetched
    // only what worker-1 had not stored.
    assert_eq!(progress.pages_fetched, 255);
    let hits = site.hits("task-r");
    let by_new = hits.iter().filter(|h| h.worker == "worker-2").count();
    assert!(
        by_new < 255 - 30,
        "worker-2 fetched {by_new} pages: it did not resume"
    );
    let first_new = hits
        .iter()
        .filter(|h| h.worker == "worker-2")
        .map(|h| h.at)
        .min()
        .unwrap();

    // Exactly one row per page; a page stored by worker-1 was never fetched again.
    let rows = sql(
        &db,
        "SELECT count(*), count(DISTINCT url), count(*) FILTER (WHERE state = 'queued')
           FROM crawl_pages",
    );
    assert_eq!(rows, "255|255|0");
    let mut fetches: BTreeMap<u64, usize> = BTreeMap::new();
    for h in &hits {
        *fetches.entry(h.page).or_default() += 1;
    }
    let stored_by_old: Vec<u64> = sql(
        &db,
        "SELECT substring(url from '[0-9]+$') FROM crawl_pages WHERE assignment = 1",
    )
    .lines()
    .map(|n| n.parse().unwrap())
    .collect();
    for page in &stored_by_old {
        assert_eq!(
            fetches[page], 1,
            "page {page}, stored by worker-1, fetched again"
        );
    }
    let refetched = fetches.values().filter(|n| **n > 1).count();
    println!(
        "RESULTS resume: {} pages stored by worker-1, {by_new} fetched by worker-2, {refetched} \
         fetched twice (in flight at the move), first page on worker-2 {:?} after the Pod was deleted",
        stored_by_old.len(),
        first_new.saturating_duration_since(moved)
    );
}
