//! Races whose outcome the API server's timing decides, made to happen on purpose: an HTTP-aware
//! fault proxy ([`ApiProxy`], `tests/support/api_proxy.rs`) in front of one process delays, holds or
//! stalls the very requests the race is between, while everything else runs as usual. Judged by
//! what the processes logged and what the site received; each judge counts what it judged and
//! passes at zero violations.
//!
//! - **A relist that applies the renewal a slow heartbeat read returned** (issue 21, item 1): the
//!   controller's heartbeat watch is stalled and its Lease reads answered late; each time the API
//!   server has answered a read, the stall ends, so the watch's relist applies the very renewal
//!   the read returned before the read's answer arrives. A read judged against the heartbeat as
//!   the index holds it *then* ("no renewal since") expires a live worker.
//! - **A move decided during a lapse that lands after the worker resumed** (issue 21, item 2): the
//!   controller's one-phase move off a worker whose heartbeat lapsed is held in the network until
//!   that worker's heartbeat is back and it has restarted the task; then it lands. A run that
//!   crawled before its first report (fenced on the version it started from) had landed would
//!   crawl the task while the new owner does.
//!
//! `make soak` runs both as cycles of its own (`tests/reliability.rs`).

use crate::support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crawler_operator::heartbeat;
use http::Method;
use support::{
    api_proxy::{Action, ApiProxy, Call},
    judge::Verdict,
    site::{Site, endless},
    story::{BOUND, Election, HEARTBEAT, POLL, Story},
    wait_for,
};

/// How late the controller's heartbeat Lease reads are answered: well under the controller's 2 s
/// bound on such a read (`HEARTBEAT_READ_TIMEOUT`), so they are answered, late.
const READ_DELAY: Duration = Duration::from_secs(1);

/// Stalls of the heartbeat watch (each ended by a read's answer) per run of the scenario.
const HEARTBEAT_CYCLES: usize = 8;

/// How late worker-1's reports of the task reach the API server once it is back: under its 5 s
/// bound on a report, and long past the release of the controller's held move.
const REPORT_DELAY: Duration = Duration::from_millis(2500);

/// Slack for a loaded 2-core machine on top of a stated bound.
const SLACK: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_applying_the_renewal_a_slow_heartbeat_read_returned_expires_no_live_worker() {
    let story = Story::new("race-heartbeat").await;
    let (expiry, overlap) = stalled_heartbeat_watch(story, HEARTBEAT_CYCLES).await;
    overlap.print_and_assert();
    expiry.print_and_assert();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_decided_during_a_lapse_and_landing_after_the_resume_never_runs_the_task_twice() {
    let story = Story::new("race-resume").await;
    let verdict = move_held_past_resume(story).await;
    verdict.print_and_assert();
}

/// The workers of [`stalled_heartbeat_watch`], none behind a proxy.
const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

/// Issue 21, item 1. Three live workers with two tasks each; the controller behind an
/// [`ApiProxy`] that stalls its heartbeat watch (headers pass, then nothing) and answers its
/// heartbeat Lease reads [`READ_DELAY`] late. Whenever the API server has answered one of those
/// reads, the stall ends: the watch's held events and end go through, it relists at once, and the
/// index applies the renewal the read returned (the workers renew every 400 ms, the relist follows
/// the read by milliseconds) a second before the read's answer reaches the controller. `cycles`
/// such stalls, then the proxy steps aside.
///
/// Judges: `live-worker-expiry` (judged: heartbeat reads answered under the fault): an expiry the
/// controller logged for a worker whose own log shows no lapse before it, and a task whose
/// assignment changed while its worker never lapsed, are violations (a lapse a loaded machine
/// really caused is counted as excused); `overlap` on the site's requests.
pub(crate) async fn stalled_heartbeat_watch(mut story: Story, cycles: usize) -> (Verdict, Verdict) {
    let site = Site::start().await;
    let proxy = ApiProxy::start(story.cp);
    for w in WORKERS {
        story.ready_worker(w).await;
    }
    story.start_controller_behind("controller-a", &proxy, &[]);
    for w in WORKERS {
        story.start_worker(w, None);
    }
    let tasks: Vec<String> = (1..=2 * WORKERS.len()).map(|i| format!("hb-{i}")).collect();
    for t in &tasks {
        story.apply_resource(t, endless(&site, t)).await;
    }
    let names: Vec<&str> = tasks.iter().map(String::as_str).collect();
    let placed = story.assert_all_assigned(&names).await;
    for t in &tasks {
        site.wait_for_hits(t, &placed[t], None, 3).await;
    }
    let before = assignments(&story).await;

    let stall = proxy.rule("the heartbeat watch", is_heartbeat_watch, Action::Stall);
    let reads = proxy.rule(
        "heartbeat Lease reads",
        is_heartbeat_read,
        Action::DelayResponse(READ_DELAY),
    );
    reads.release_on_answer(&stall);
    let started = Instant::now();
    let per_cycle = HEARTBEAT * 5;
    wait_for(
        &format!("{cycles} stalls of the heartbeat watch, each ended by a read's answer"),
        BOUND + per_cycle * u32::try_from(cycles).unwrap_or(u32::MAX),
        POLL,
        || async {
            // Each stalled watch ends (a read's answer released it) before the next one starts.
            let stalled = stall.matched();
            if stalled > cycles {
                Ok(())
            } else {
                Err(format!(
                    "{stalled} watches stalled, {} reads sent, {} answered",
                    reads.matched(),
                    reads.answered()
                ))
            }
        },
    )
    .await;
    proxy.remove(&reads);
    proxy.remove(&stall);
    let fault = started.elapsed();
    // A wrongful expiry moves tasks in one phase: give its writes and the new owners' first
    // requests time to show.
    tokio::time::sleep(HEARTBEAT * 2).await;
    let after = assignments(&story).await;
    let mut verdict = judge_expiries(&story, &before, &after);
    verdict.judged = usize::try_from(reads.answered()).unwrap_or(usize::MAX);
    verdict.count("watches-stalled", stall.matched());
    verdict.count("reads-sent", reads.matched());
    verdict.count(
        "reads-given-up",
        usize::try_from(reads.abandoned()).unwrap_or(0),
    );
    verdict.figure("fault_s", &format!("{:.1}", fault.as_secs_f64()));
    (verdict, site.overlap_verdict())
}

/// Judge `live-worker-expiry` of [`stalled_heartbeat_watch`] (its `judged` is the caller's):
/// every expiry the controller logged, and every task whose assignment changed from `before` to
/// `after`, checked against the lapses the workers themselves logged.
fn judge_expiries(
    story: &Story,
    before: &BTreeMap<String, (String, i64)>,
    after: &BTreeMap<String, (String, i64)>,
) -> Verdict {
    let mut verdict = Verdict::new("live-worker-expiry");
    let lapses: BTreeMap<&str, Vec<jiff::Timestamp>> = WORKERS
        .iter()
        .zip(&story.workers)
        .map(|(w, process)| {
            let lapsed = logged(&process.log, "heartbeat not renewed in time")
                .into_iter()
                .map(|(at, _)| at)
                .collect();
            (*w, lapsed)
        })
        .collect();
    let lapsed_before = |worker: &str, at: Option<jiff::Timestamp>| {
        lapses
            .get(worker)
            .is_some_and(|l| l.iter().any(|t| at.is_none_or(|at| *t <= at)))
    };
    for (at, worker) in logged(&story.controllers[0].log, "worker heartbeat expired") {
        if lapsed_before(&worker, Some(at)) {
            verdict.count("excused-expiries", 1);
        } else {
            verdict.violation(
                "live-worker-expired",
                format!("{worker} expired at {at}; its log shows no lapse before that"),
            );
        }
    }
    for (t, was) in before {
        let now = &after[t];
        if was == now {
            continue;
        }
        if lapsed_before(&was.0, None) {
            verdict.count("excused-moves", 1);
        } else {
            verdict.violation(
                "task-moved-off-live-worker",
                format!(
                    "{t}: {} (assignment {}) -> {} (assignment {}); {} never lapsed",
                    was.0, was.1, now.0, now.1, was.0
                ),
            );
        }
    }
    verdict.count(
        "worker-lapses",
        lapses.values().map(Vec::len).sum::<usize>(),
    );
    verdict
}

/// The controller's heartbeat watch: a watch of the Leases labelled as heartbeats.
fn is_heartbeat_watch(c: &Call) -> bool {
    c.is_watch() && c.path.ends_with("/leases") && c.query.contains(heartbeat::LABEL_VALUE)
}

/// A read of one heartbeat Lease (`GET .../leases/crawler-worker-<pod>`): the confirming read.
fn is_heartbeat_read(c: &Call) -> bool {
    c.method == Method::GET
        && !c.is_watch()
        && c.path
            .rsplit_once("/leases/")
            .is_some_and(|(_, name)| name.starts_with(&heartbeat::lease_name("")))
}

/// name -> (assigned worker, assignment number) of every resource in the story's namespace.
async fn assignments(story: &Story) -> BTreeMap<String, (String, i64)> {
    story
        .api()
        .list(&kube::api::ListParams::default())
        .await
        .expect("listing the resources")
        .into_iter()
        .map(|r| {
            let name = kube::ResourceExt::name_any(&r);
            let status = r.status.unwrap_or_default();
            let worker = status.assigned_worker.unwrap_or_default();
            (name, (worker, status.assignments.unwrap_or_default()))
        })
        .collect()
}

/// (when, `worker` field) of each line of the process log at `log` that contains `message`
/// (text format: the timestamp first).
fn logged(log: &Path, message: &str) -> Vec<(jiff::Timestamp, String)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(message))
        .filter_map(|l| {
            let at = l.split_whitespace().next()?.parse().ok()?;
            let worker = l
                .split_whitespace()
                .find_map(|f| f.strip_prefix("worker="))
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned();
            Some((at, worker))
        })
        .collect()
}

/// The task of [`move_held_past_resume`].
const TASK: &str = "task-r";

/// Issue 21, item 2. The controller behind one [`ApiProxy`], worker-1 behind another, worker-2
/// direct. Task [`TASK`] runs on worker-1. Then:
///
/// 1. worker-1's proxy closes every connection unanswered: its heartbeat lapses, it stops the
///    task, and nothing it sends meanwhile lands later;
/// 2. the controller confirms the lapse and moves the task to worker-2 in one phase: that status
///    write is held by the proxy;
/// 3. worker-1 is let through again: it renews, waits out its resume hold, restarts the task from
///    a fresh LIST (the move has not landed: the task is still its own), and sends its first
///    report, which its proxy delays [`REPORT_DELAY`];
/// 4. as that report reaches the proxy, worker-1's assignment watch goes silent (it will learn of
///    the move from its next LIST, its report's refusal, or its view going stale) and the held
///    move is released: it lands, on the version it was decided on, before worker-1's report.
///
/// With the fenced start, worker-1 made no request before its report landed, and the report is
/// refused (409): worker-1 never crawls. Without it, worker-1 crawls from step 3 until it learns of
/// the move, while worker-2 has started. Judge `resume-after-move` on the site's requests: a
/// request of the older assignment after the newer one's first is a violation (the `overlap`
/// judge's rule, applied to everything the site received); the scenario must have happened (the
/// held move answered 200 after worker-1's report was sent), else the test fails saying so.
pub(crate) async fn move_held_past_resume(mut story: Story) -> Verdict {
    let site = Site::start().await;
    // The held write must outlive neither the controller's write timeout nor its term: a long
    // term (renewed every 2 s, valid 20 s) and a 20 s write timeout.
    story.election = Election {
        lease: Duration::from_secs(30),
        renew: Duration::from_secs(20),
        retry: Duration::from_secs(2),
    };
    let controller_proxy = ApiProxy::start(story.cp);
    let worker_proxy = ApiProxy::start(story.cp);
    story.ready_worker("worker-1").await;
    story.start_controller_behind("controller-a", &controller_proxy, &["--write-timeout=20s"]);
    story.start_worker_behind("worker-1", &worker_proxy, &[]);
    story.crawl_on_worker_1(&site, TASK).await;
    story.start_worker_2().await;
    let (_, assignment) = assignments(&story).await[TASK].clone();

    let status_path = format!("/crawlerresources/{TASK}/status");
    let moves = controller_proxy.rule(
        "the controller's move of the task to worker-2",
        {
            let status_path = status_path.clone();
            move |c| {
                (c.method == Method::PATCH || c.method == Method::PUT)
                    && c.path.ends_with(&status_path)
                    && c.body_text().contains("\"worker-2\"")
            }
        },
        Action::Hold,
    );
    let cut_off = worker_proxy.rule("worker-1 cut off", |_| true, Action::Drop);
    let reports = worker_proxy.rule(
        "worker-1's reports of the task",
        move |c| c.method == Method::PATCH && c.path.ends_with(&status_path),
        Action::DelayRequest(REPORT_DELAY),
    );
    let view = worker_proxy.rule(
        "worker-1's assignment watch",
        |c| c.is_watch() && c.path.ends_with("/crawlerresources"),
        Action::Stall,
    );
    view.open();
    let cut = Instant::now();

    let decided = moves
        .wait_for_call("the move, held", |_| true, BOUND)
        .await
        .at;
    worker_proxy.remove(&cut_off);
    let healed = Instant::now();
    // The restarted run's first report: no page fetched yet.
    let resumed = reports
        .wait_for_call(
            "worker-1's first report of a restarted run",
            |c| c.at > healed && c.body_text().contains("\"pagesFetched\":0"),
            BOUND,
        )
        .await
        .at;
    view.close();
    moves.release();
    let released = Instant::now();
    story.assert_assigned(TASK, "worker-2").await;
    site.wait_for_hits(TASK, "worker-2", None, 3).await;
    // Absence is observed over a window: past worker-1's delayed report and its stale bound.
    tokio::time::sleep(REPORT_DELAY + support::story::stale_after() + SLACK).await;
    worker_proxy.remove(&view);
    worker_proxy.remove(&reports);
    controller_proxy.remove(&moves);

    let statuses = moves.statuses();
    assert_eq!(
        statuses.first(),
        Some(&200),
        "the held move did not land (answers {statuses:?}): the scenario did not happen; \
         controller log {}",
        story.controllers[0].log.display()
    );
    let hits = site.hits(TASK);
    let old_after_heal = hits
        .iter()
        .filter(|h| h.worker == "worker-1" && h.assignment == assignment && h.at > healed)
        .count();
    let mut verdict = Verdict::new("resume-after-move");
    verdict.judged = hits.len();
    for v in site.overlaps() {
        verdict.violation("request-after-newer-assignment", v);
    }
    verdict.count("moves-held", moves.matched());
    verdict.count("old-assignment-requests-after-heal", old_after_heal);
    verdict.count("worker-1-reports-delayed", reports.matched());
    let ms = |d: Duration| d.as_millis().to_string();
    verdict.figure("decided_after_cut_ms", &ms(decided - cut));
    verdict.figure(
        "resumed_after_heal_ms",
        &ms(resumed.saturating_duration_since(healed)),
    );
    verdict.figure("move_held_ms", &ms(released - decided));
    verdict
}

/// The proxy itself, on requests of a kube client (as the processes under test send them): a
/// dropped request fails at once (no retry, nothing forwarded), a `Fail(500)` is the client's
/// error with the proxy's message, a held write reaches the API server only when released, and
/// requests no rule matches pass untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_proxy_drops_fails_and_holds_requests_as_its_rules_say() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    let story = Story::new("api-proxy").await;
    let proxy = ApiProxy::start(story.cp);
    let mut config = story.cp.config();
    config.cluster_url = format!("https://{}", proxy.addr())
        .parse()
        .expect("proxy URL");
    let api: Api<ConfigMap> = Api::namespaced(
        kube::Client::try_from(config).expect("a client"),
        story.ns(),
    );
    let direct: Api<ConfigMap> = Api::namespaced(story.client.clone(), story.ns());
    let map = |name: &str| -> ConfigMap {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))
            .expect("a ConfigMap")
    };
    let bounded = Duration::from_secs(5);

    let dropped = proxy.rule("drop", |c| c.method == Method::POST, Action::Drop);
    let created =
        tokio::time::timeout(bounded, api.create(&PostParams::default(), &map("a"))).await;
    assert!(matches!(created, Ok(Err(_))), "{created:?}");
    proxy.remove(&dropped);
    let failed = proxy.rule("fail", |c| c.method == Method::POST, Action::Fail(500));
    let created =
        tokio::time::timeout(bounded, api.create(&PostParams::default(), &map("a"))).await;
    assert!(
        matches!(&created, Ok(Err(kube::Error::Api(s))) if s.code == 500 && s.message.contains("'fail'")),
        "{created:?}"
    );
    proxy.remove(&failed);
    assert_eq!((dropped.matched(), failed.matched()), (1, 1));
    assert_eq!(direct.get_opt("a").await.expect("a read").map(|_| ()), None);

    let held = proxy.rule("hold", |c| c.method == Method::POST, Action::Hold);
    let create = tokio::spawn({
        let api = api.clone();
        let cm = map("b");
        async move { api.create(&PostParams::default(), &cm).await }
    });
    let call = held
        .wait_for_call(
            "the create, held",
            |c| c.body_text().contains("\"b\""),
            BOUND,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_release = direct.get_opt("b").await.expect("a read").is_some();
    held.release();
    let created = create.await.expect("the create task");
    let after_release = direct.get_opt("b").await.expect("a read").is_some();
    println!(
        "api proxy: dropped {}, failed {}, held {} (then released; answered {:?}), forwarded {}",
        dropped.matched(),
        failed.matched(),
        held.matched(),
        held.statuses(),
        proxy.forwarded()
    );
    assert!(call.path.ends_with("/configmaps"), "{}", call.path);
    assert!(
        !before_release,
        "the held create reached the API server before its release"
    );
    assert!(created.is_ok() && after_release, "{created:?}");
    assert_eq!(held.statuses(), vec![201]);
}
