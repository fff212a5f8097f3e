//! Reliability scenarios against the real control plane: faults are injected, then the invariant
//! checker (tests/support/invariants.rs) and the site's request log are asked what went wrong.
//! Each scenario prints one `RELIABILITY` line with its figures (RELIABILITY.md collects them).
//!
//! CI runs the short versions; `make soak` sets `CRAWLER_SOAK=1` for many more cycles.
//! The scenarios restart and pause the shared API server, so they run one at a time.

use crate::{races, support};

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crawler_operator::{crd::TaskState, heartbeat};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    invariants::{self, Settler},
    judge::Verdict,
    pods::{create_worker_pod, delete_pod, set_pod_ready},
    proxy::Proxy,
    site::{Site, endless, gap_figures},
    story::{BOUND, Election, LEASE, POLL, Story, WORKER_LABEL, worker_1_running},
    wait_for,
};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The scenarios share one control plane. The one that restarts etcd and the API server runs
/// alone (a writer); the others run side by side (readers): each has its own namespace, workers
/// and proxies, and the judges count per scenario. A soak runs every scenario alone.
static SHARED: RwLock<()> = RwLock::const_new(());

#[allow(dead_code)] // the guards are held until the scenario ends, never read
enum Turn {
    Shared(RwLockReadGuard<'static, ()>),
    Alone(RwLockWriteGuard<'static, ()>),
}

/// A scenario's turn on the control plane: beside the others, except under a soak.
async fn beside_others() -> Turn {
    if soak() {
        Turn::Alone(SHARED.write().await)
    } else {
        Turn::Shared(SHARED.read().await)
    }
}

pub(crate) fn soak() -> bool {
    std::env::var("CRAWLER_SOAK").is_ok_and(|v| v == "1")
}

/// How many control planes (each its own etcd + kube-apiserver) a soak scenario splits its cycles
/// between: most of a cycle is spent waiting out a lease or a stale bound, so independent
/// shards overlap their waits (`CRAWLER_SOAK_SHARDS`, default 4).
fn shards() -> usize {
    std::env::var("CRAWLER_SOAK_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4)
}

/// Cycles of a soak scenario: `var` if set (a shorter trial run), else `default`.
pub(crate) fn soak_cycles(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Cycles of shard `i` when `total` are split between `n` shards.
fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

/// Election flags of the soak's leader cycles: a third of the tests' usual ones, so that 1,000
/// kill/pause cycles fit in minutes. The safety argument rests only on their order
/// (`retry < renew deadline < lease`, each term ended on the leader's own monotonic clock before
/// any standby may take over); RELIABILITY.md says why the absolute values do not matter.
const SOAK_ELECTION: Election = Election {
    lease: Duration::from_secs(1),
    renew: Duration::from_millis(750),
    retry: Duration::from_millis(250),
};

/// A control plane of its own for one shard of a soak scenario (it lives until the binary exits).
async fn own_control_plane() -> &'static support::ControlPlane {
    tokio::task::spawn_blocking(|| &*Box::leak(Box::new(support::ControlPlane::builder().start())))
        .await
        .expect("starting a control plane")
}

/// Waits until the invariants hold; returns how long that took. Records what is still violated
/// after the bound in the settler's verdict and panics with it.
async fn settle(story: &Story, settler: &mut Settler, expected: &BTreeSet<String>) -> Duration {
    let settled = settler
        .settle(&story.client, story.ns(), expected, BOUND, POLL)
        .await;
    settled.unwrap_or_else(|| {
        let verdict = std::mem::take(&mut settler.verdict);
        println!("{}", story.logs());
        verdict.print_and_assert();
        unreachable!("a verdict with violations panics")
    })
}

fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Prints every judge's line and the scenario's `RELIABILITY` line (its violations are the sum of
/// the judges'), then fails if any judge found a violation.
fn report(
    scenario: &str,
    faults: usize,
    resources: usize,
    started: Instant,
    recoveries: &[Duration],
    verdicts: &[Verdict],
) {
    for v in verdicts {
        println!("{}", v.line());
    }
    let judged: usize = verdicts.iter().map(|v| v.judged).sum();
    let violations: usize = verdicts.iter().map(Verdict::violation_count).sum();
    println!(
        "RELIABILITY scenario={scenario} faults={faults} resources={resources} duration={:.1}s judged={judged} violations={violations} recovery_p50={:?} recovery_p99={:?} recovery_max={:?}",
        started.elapsed().as_secs_f64(),
        percentile(recoveries, 0.5),
        percentile(recoveries, 0.99),
        recoveries.iter().max().copied().unwrap_or_default(),
    );
    for v in verdicts {
        v.assert_clean();
    }
}

async fn add(story: &Story, expected: &mut BTreeSet<String>, name: String) {
    story
        .apply_resource(&name, json!({ "seeds": ["https://books.example.org/"] }))
        .await;
    expected.insert(name);
}

/// What one shard of the leader scenario saw.
#[derive(Default)]
struct LeaderShard {
    kills: usize,
    pauses: usize,
    resources: usize,
    recoveries: Vec<Duration>,
    settler: Settler,
    writes: Option<Verdict>,
    events: Option<Verdict>,
}

/// `cycles` faults on the leader of `story`'s two controller replicas, alternating: SIGKILL (a
/// replacement replica starts, as a Deployment would) and SIGSTOP until another replica leads and
/// then past the judge's look-back, then SIGCONT (it must not write). Each cycle adds two
/// resources and deletes one, then waits for the invariants.
async fn leader_cycles(mut story: Story, cycles: usize) -> LeaderShard {
    let mut shard = LeaderShard::default();
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    let timeline = invariants::LeaseTimeline::start(story.client.clone(), story.ns(), LEASE);
    let mut next_id = 0;
    let mut dead = BTreeSet::new();
    for _ in 0..2 {
        story.start_controller(&format!("c-{next_id}"));
        next_id += 1;
    }
    let mut expected = BTreeSet::new();
    for i in 0..6 {
        add(&story, &mut expected, format!("r-{i}")).await;
    }
    settle(&story, &mut shard.settler, &expected).await;
    // A paused leader stays stopped this long after another replica leads: past its lease, and
    // past the writes judge's look-back, so a write it made on resuming would be caught.
    let hold = story
        .election
        .lease
        .max(invariants::WRITE_LOOKBACK + Duration::from_millis(200));
    let mut serial = 6;
    for cycle in 0..cycles {
        let (index, leader) = wait_for("a live leader", BOUND, POLL, || async {
            let holder = story.lease_holder().await.ok_or("none")?;
            match story.controller_ids.iter().position(|i| *i == holder) {
                Some(i) if !dead.contains(&i) => Ok((i, holder)),
                _ => Err("the holder is gone"),
            }
        })
        .await;
        let fault = Instant::now();
        if cycle % 2 == 0 {
            story.controllers[index].signal("KILL");
            dead.insert(index);
            story.start_controller(&format!("c-{next_id}"));
            next_id += 1;
            shard.kills += 1;
        } else {
            story.controllers[index].signal("STOP");
            wait_for("another leader", BOUND, POLL, || async {
                match story.lease_holder().await {
                    Some(h) if h != leader => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            tokio::time::sleep(hold).await;
            story.controllers[index].signal("CONT");
            shard.pauses += 1;
        }
        for _ in 0..2 {
            add(&story, &mut expected, format!("r-{serial}")).await;
            serial += 1;
        }
        let victim = expected.iter().next().cloned().unwrap();
        story
            .api()
            .delete(&victim, &DeleteParams::default())
            .await
            .unwrap();
        expected.remove(&victim);
        settle(&story, &mut shard.settler, &expected).await;
        shard.recoveries.push(fault.elapsed());
        if (cycle + 1) % 50 == 0 {
            eprintln!("{}: {} of {cycles} leader cycles", story.ns(), cycle + 1);
        }
    }
    // Let the last writes' readings come in, then judge every write the replicas logged and
    // every Event they published against the Lease's holders.
    tokio::time::sleep(invariants::WRITE_LOOKAHEAD + Duration::from_millis(200)).await;
    let logs = story.controller_logs();
    let mut writes = timeline.judge_logs(&logs);
    // The judge's control: the same logs with each one attributed to the next replica must be
    // caught (every replica that wrote did so in a term of its own).
    let mut shifted = logs.clone();
    shifted.rotate_left(1);
    let shifted: Vec<_> = logs
        .iter()
        .map(|(id, _)| id.clone())
        .zip(shifted.into_iter().map(|(_, path)| path))
        .collect();
    writes.count(
        "control_misattributed",
        timeline.judge_logs(&shifted).violation_count(),
    );
    shard.writes = Some(writes);
    shard.events = Some(timeline.judge(&story.events().await));
    shard.resources = expected.len();
    shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_and_paused_in_cycles_while_resources_come_and_go() {
    let _turn = beside_others().await;
    let started = Instant::now();
    let shards: Vec<LeaderShard> = if soak() {
        let (total, n) = (soak_cycles("CRAWLER_SOAK_LEADER_CYCLES", 1000), shards());
        futures::future::join_all((0..n).map(|i| async move {
            let mut story = Story::on(own_control_plane().await, &format!("leaderloop-{i}")).await;
            story.election = SOAK_ELECTION;
            leader_cycles(story, share(total, n, i)).await
        }))
        .await
    } else {
        vec![leader_cycles(Story::new("leaderloop").await, 4).await]
    };
    let n = shards.len();
    let mut total = LeaderShard::default();
    let mut writes = Verdict::new("leader-writes");
    let mut events = Verdict::new("leader-events");
    for s in shards {
        total.kills += s.kills;
        total.pauses += s.pauses;
        total.resources += s.resources;
        total.recoveries.extend(s.recoveries);
        total.settler.absorb(s.settler);
        writes.absorb(s.writes.expect("judged"));
        events.absorb(s.events.expect("judged"));
    }
    println!(
        "leader cycles: {} kills, {} pauses past the lease, on {n} control plane(s)",
        total.kills, total.pauses
    );
    let control = writes
        .counts
        .iter()
        .find(|(name, _)| *name == "control_misattributed")
        .map_or(0, |(_, n)| *n);
    assert!(
        control > 0,
        "the writes judge caught none of the writes attributed to the wrong replica: it judges nothing"
    );
    report(
        "leader-kill-and-pause",
        total.kills + total.pauses,
        total.resources,
        started,
        &total.recoveries,
        &[total.settler.finish(), writes, events],
    );
}

/// Slack on top of the worker's stale bound before a frozen worker is thawed.
const SILENCE_SLACK: Duration = Duration::from_millis(500);

/// What one shard of the silent-freeze scenario saw.
struct FreezeShard {
    moves: usize,
    recoveries: Vec<Duration>,
    overlap: Verdict,
    gaps: Vec<i128>,
}

/// `cycles` silent freezes: the worker running the tasks has every open connection to the API
/// server frozen (no byte passes, nothing is closed; new connections work) and its Pod turned
/// `NotReady`, so the controller moves its tasks to the other worker; once the other worker
/// fetched every moved task and the victim had the whole stale bound to notice the silence by
/// itself, it is thawed and Ready again, and the next cycle freezes the other one. Judged from the site's log: no task's older assignment fetched anything after a newer one
/// started.
async fn freeze_cycles(mut story: Story, cycles: usize) -> FreezeShard {
    let site = Site::start().await;
    let workers = ["w-a", "w-b"];
    let proxies = [
        Proxy::start(story.cp.apiserver_addr()),
        Proxy::start(story.cp.apiserver_addr()),
    ];
    story.start_controller("controller-a");
    for (w, proxy) in workers.iter().zip(&proxies) {
        story.ready_worker(w).await;
        story.start_worker(w, Some(proxy));
    }
    let tasks = ["t-0", "t-1", "t-2"];
    for t in tasks {
        let mut spec = endless(&site, t);
        spec["rateLimit"]["requestsPerSecond"] = json!(10);
        story.apply_resource(t, spec).await;
    }
    let placed = story.assert_all_assigned(&tasks).await;
    for (t, w) in &placed {
        site.wait_for_hits(t, w, None, 1).await;
    }
    let leases: Api<Lease> = Api::namespaced(story.client.clone(), story.ns());
    let mut shard = FreezeShard {
        moves: 0,
        recoveries: Vec::new(),
        overlap: Verdict::new("overlap"),
        gaps: Vec::new(),
    };
    for cycle in 0..cycles {
        let placed = story.assert_all_assigned(&tasks).await;
        let mut v = cycle % 2;
        if !placed.values().any(|w| w == workers[v]) {
            v = 1 - v;
        }
        let (victim, other) = (workers[v], workers[1 - v]);
        let moved: Vec<&str> = tasks
            .iter()
            .copied()
            .filter(|t| placed[*t] == victim)
            .collect();
        let fault = Instant::now();
        proxies[v].freeze();
        set_pod_ready(&story.client, story.ns(), victim, false, None).await;
        for t in &moved {
            story.assert_assigned(t, other).await;
            site.wait_for_hits(t, other, Some(fault), 1).await;
        }
        shard.recoveries.push(fault.elapsed());
        // The silence, not the thaw, must end the victim's tasks: it stays frozen until it has
        // had the whole stale bound to notice on its own.
        tokio::time::sleep(
            (fault + support::story::stale_after() + SILENCE_SLACK)
                .saturating_duration_since(Instant::now()),
        )
        .await;
        shard.moves += moved.len();
        proxies[v].thaw();
        let thawed = jiff::Timestamp::now();
        set_pod_ready(&story.client, story.ns(), victim, true, None).await;
        // Ready again only once it renewed its heartbeat after the thaw (until then the
        // controller would not place anything on it).
        wait_for("the thawed worker's heartbeat", BOUND, POLL, || async {
            let lease = leases
                .get(&heartbeat::lease_name(victim))
                .await
                .map_err(|e| e.to_string())?;
            let spec = lease.spec.unwrap_or_default();
            match (spec.holder_identity, spec.renew_time) {
                (Some(h), Some(t)) if !h.is_empty() && t.0 > thawed => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        if (cycle + 1) % 10 == 0 {
            eprintln!("{}: {} of {cycles} freeze cycles", story.ns(), cycle + 1);
        }
    }
    // The last victim has had the stale bound to stop by now (its heartbeat came back after the
    // thaw); the judge reads everything the site received.
    shard.overlap = site.overlap_verdict();
    shard.gaps = site.handover_gaps();
    shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_frozen_silently_in_cycles_while_their_tasks_move() {
    let _turn = beside_others().await;
    let started = Instant::now();
    let shards: Vec<FreezeShard> = if soak() {
        let (total, n) = (soak_cycles("CRAWLER_SOAK_FREEZE_CYCLES", 100), shards());
        futures::future::join_all((0..n).map(|i| async move {
            let story = Story::on(own_control_plane().await, &format!("freeze-{i}")).await;
            freeze_cycles(story, share(total, n, i)).await
        }))
        .await
    } else {
        vec![freeze_cycles(Story::new("freeze").await, 2).await]
    };
    let n = shards.len();
    let cycles: usize = shards.iter().map(|s| s.recoveries.len()).sum();
    let moves: usize = shards.iter().map(|s| s.moves).sum();
    let mut recoveries = Vec::new();
    let mut overlap = Verdict::new("overlap");
    let mut gaps = Vec::new();
    for s in shards {
        recoveries.extend(s.recoveries);
        gaps.extend(s.gaps);
        overlap.absorb(s.overlap);
    }
    overlap.count("tasks_moved", moves);
    gap_figures(&mut overlap, &gaps);
    println!("silent freezes: {cycles} cycles, {moves} task moves");
    report(
        "silent-freeze",
        cycles,
        3 * n,
        started,
        &recoveries,
        &[overlap],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarted_mid_flight() {
    let _turn = SHARED.write().await;
    let started = Instant::now();
    let site = Site::start().await;
    let mut story = Story::new("restart").await;
    let mut settler = Settler::default();
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    story.start_controller("controller-a");
    story.start_worker("worker-1", None);
    story.start_worker("worker-2", None);
    let mut expected = BTreeSet::new();
    for i in 0..4 {
        let name = format!("crawl-{i}");
        let mut spec = endless(&site, &name);
        spec["rateLimit"]["requestsPerSecond"] = json!(5);
        story.apply_resource(&name, spec).await;
        expected.insert(name);
    }
    settle(&story, &mut settler, &expected).await;
    let mut recoveries = Vec::new();
    for (i, what) in ["kube-apiserver", "etcd", "kube-apiserver"]
        .iter()
        .enumerate()
    {
        let before = site.hits("crawl-0").len();
        let fault = Instant::now();
        match *what {
            "etcd" => story.cp.restart_etcd().await,
            _ => story.cp.restart_apiserver().await,
        }
        // Everyone reconnects by themselves: new work is placed, old work keeps crawling.
        let name = format!("after-{i}");
        add(&story, &mut expected, name.clone()).await;
        settle(&story, &mut settler, &expected).await;
        wait_for("crawl-0 to keep crawling", BOUND, POLL, || async {
            let n = site.hits("crawl-0").len();
            if n > before + 3 {
                Ok(())
            } else {
                Err(format!("{} new requests", n - before))
            }
        })
        .await;
        recoveries.push(fault.elapsed());
        println!(
            "restart of {what}: recovered (new work placed, old work crawling) {:?} after the restart began",
            fault.elapsed()
        );
    }
    report(
        "apiserver-etcd-restart",
        3,
        expected.len(),
        started,
        &recoveries,
        &[settler.finish(), site.overlap_verdict()],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_churn_pods_readiness_and_heartbeats() {
    let _turn = beside_others().await;
    let started = Instant::now();
    let steps = if soak() { 120 } else { 12 };
    let mut story = Story::new("churn").await;
    let mut settler = Settler::default();
    for i in 0..3 {
        story.ready_worker(&format!("w-{i}")).await;
    }
    story.start_controller("controller-a");
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        add(&story, &mut expected, format!("r-{i}")).await;
    }
    settle(&story, &mut settler, &expected).await;
    let leases: Api<Lease> = Api::namespaced(story.client.clone(), story.ns());
    let mut next = 3;
    let mut recoveries = Vec::new();
    for step in 0..steps {
        let pods: Vec<String> = invariants::check(&story.client, story.ns(), None)
            .await
            .ready
            .into_iter()
            .collect();
        let target = pods[step % pods.len()].clone();
        let fault = Instant::now();
        match step % 4 {
            0 if pods.len() > 1 => delete_pod(&story.client, story.ns(), &target).await,
            0 | 1 => {
                create_worker_pod(
                    &story.client,
                    story.ns(),
                    &format!("w-{next}"),
                    &[WORKER_LABEL],
                )
                .await;
                set_pod_ready(
                    &story.client,
                    story.ns(),
                    &format!("w-{next}"),
                    true,
                    Some("10.2.0.1"),
                )
                .await;
                next += 1;
            }
            2 => {
                set_pod_ready(&story.client, story.ns(), &target, false, None).await;
                settle(&story, &mut settler, &expected).await;
                set_pod_ready(&story.client, story.ns(), &target, true, None).await;
            }
            _ => {
                // A released heartbeat (the worker said goodbye) takes the worker out at once.
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": { "name": heartbeat::lease_name(&target), "labels": { heartbeat::LABEL: heartbeat::LABEL_VALUE } },
                    "spec": { "leaseDurationSeconds": 2 },
                });
                leases
                    .patch(
                        &heartbeat::lease_name(&target),
                        &PatchParams::apply("churn-test").force(),
                        &Patch::Apply(&lease),
                    )
                    .await
                    .unwrap();
                settle(&story, &mut settler, &expected).await;
                leases
                    .delete(&heartbeat::lease_name(&target), &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        settle(&story, &mut settler, &expected).await;
        recoveries.push(fault.elapsed());
    }
    report(
        "worker-churn",
        steps,
        expected.len(),
        started,
        &recoveries,
        &[settler.finish()],
    );
}

/// Issue 21, item 1, in cycles: the controller's heartbeat watch stalled and its Lease reads
/// answered late, each stall ended by a read's answer (see [`races::stalled_heartbeat_watch`]).
/// CI runs 3 stalls; `make soak` `CRAWLER_SOAK_HEARTBEAT_STALL_CYCLES` (30).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_watch_stalled_with_slow_lease_reads_in_cycles() {
    let _turn = beside_others().await;
    let started = Instant::now();
    let cycles = if soak() {
        soak_cycles("CRAWLER_SOAK_HEARTBEAT_STALL_CYCLES", 30)
    } else {
        3
    };
    let story = Story::new("stalled-heartbeats").await;
    let (expiry, overlap) = races::stalled_heartbeat_watch(story, cycles).await;
    report(
        "heartbeat-watch-stall",
        cycles,
        6,
        started,
        &[],
        &[expiry, overlap],
    );
}

/// Issue 21, item 2, in cycles: a one-phase move decided during a worker's lapse, held by the
/// proxy until that worker resumed and restarted the task, then landing (see
/// [`races::move_held_past_resume`]); each cycle in a namespace of its own. CI runs 1;
/// `make soak` `CRAWLER_SOAK_DELAYED_MOVE_CYCLES` (5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_delayed_past_a_workers_resume_in_cycles() {
    let _turn = beside_others().await;
    let started = Instant::now();
    let cycles = if soak() {
        soak_cycles("CRAWLER_SOAK_DELAYED_MOVE_CYCLES", 5)
    } else {
        1
    };
    let mut verdict = Verdict::new("resume-after-move");
    for cycle in 0..cycles {
        let story = Story::new(&format!("delayed-move-{cycle}")).await;
        verdict.absorb(races::move_held_past_resume(story).await);
    }
    report("delayed-move", cycles, cycles, started, &[], &[verdict]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_stall_the_other_tasks_of_its_worker() {
    let _turn = beside_others().await;
    let (site, story) = worker_1_running("slow").await;
    story
        .apply_resource("slow", json!({ "seeds": [site.slow_seed("slow")], "maxDepth": 5, "rateLimit": { "requestsPerSecond": 20 } }))
        .await;
    story.apply_resource("fast", endless(&site, "fast")).await;
    story.assert_all_assigned(&["slow", "fast"]).await;
    // While the slow task waits 3 s per page, the fast one keeps going at its own rate.
    site.wait_for_hits("fast", "worker-1", None, 20).await;
    let slow = site.hits("slow").len();
    assert!(
        slow <= 3,
        "the slow site answers one page per 3 s, saw {slow}"
    );
    let progress = story
        .wait_for_progress("fast", "fast progress", |p| {
            p.pages_fetched >= 10 && p.state == TaskState::Running
        })
        .await;
    println!(
        "fast task: {} pages while the slow one had {slow}",
        progress.pages_fetched
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_invalid_resources_is_refused_with_messages_naming_the_field() {
    let _turn = beside_others().await;
    let story = Story::new("corpus").await;
    let corpus = invalid_specs();
    let resource = ApiResource::erase::<crawler_operator::crd::CrawlerResource>(&());
    let dynamic: Api<DynamicObject> =
        Api::namespaced_with(story.client.clone(), story.ns(), &resource);
    let url = "https://a.example/";
    // A POST, as `kubectl create` / client-side `kubectl apply` send (a server-side apply of a
    // value of the wrong type is answered 500 "failed to create typed patch object" instead).
    for (spec, field) in &corpus {
        let body: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
            "metadata": { "name": "bad" }, "spec": spec,
        }))
        .unwrap();
        match dynamic.create(&PostParams::default(), &body).await {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{spec}: {status:?}");
                assert!(
                    status.message.contains(field),
                    "{spec}: {:?} does not name {field}",
                    status.message
                );
            }
            other => panic!("{spec} was accepted: {:?}", other.map(|r| r.name_any())),
        }
    }
    assert!(
        story.api().get_opt("bad").await.unwrap().is_none(),
        "a refused apply created nothing"
    );

    // The longest valid name is accepted and placed like any other.
    let mut story = story;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    let long = "a".repeat(253);
    story.apply_resource(&long, json!({ "seeds": [url] })).await;
    story.assert_assigned(&long, "worker-1").await;
    println!(
        "RELIABILITY scenario=bad-input corpus={} refused={} violations=0",
        corpus.len(),
        corpus.len()
    );
}

/// Specs the API server must refuse, each with the field its message must name.
fn invalid_specs() -> Vec<(serde_json::Value, &'static str)> {
    let url = "https://a.example/";
    let long_url = format!("https://a.example/{}", "x".repeat(2048));
    let many_seeds: Vec<String> = (0..101).map(|i| format!("https://a.example/{i}")).collect();
    let many_hosts: Vec<String> = (0..101).map(|i| format!("h{i}.example")).collect();
    vec![
        (json!({}), "spec.seeds"),
        (json!({ "seeds": [] }), "spec.seeds"),
        (json!({ "seeds": many_seeds }), "spec.seeds"),
        (json!({ "seeds": [long_url] }), "spec.seeds"),
        (json!({ "seeds": ["ftp://a.example/"] }), "spec.seeds"),
        (json!({ "seeds": ["javascript:alert(1)"] }), "spec.seeds"),
        (json!({ "seeds": ["https://"] }), "spec.seeds"),
        (json!({ "seeds": "https://a.example/" }), "spec.seeds"),
        (json!({ "seeds": [url], "maxDepth": -1 }), "spec.maxDepth"),
        (json!({ "seeds": [url], "maxDepth": 11 }), "spec.maxDepth"),
        (
            json!({ "seeds": [url], "maxDepth": "deep" }),
            "spec.maxDepth",
        ),
        (json!({ "seeds": [url], "maxPages": 0 }), "spec.maxPages"),
        (json!({ "seeds": [url], "weight": 0 }), "spec.weight"),
        (json!({ "seeds": [url], "weight": 1001 }), "spec.weight"),
        (json!({ "seeds": [url], "weight": "heavy" }), "spec.weight"),
        (
            json!({ "seeds": [url], "rateLimit": { "requestsPerSecond": 0 } }),
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            json!({ "seeds": [url], "rateLimit": { "requestsPerSecond": 1000 } }),
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            json!({ "seeds": [url], "rateLimit": { "burst": 0 } }),
            "spec.rateLimit.burst",
        ),
        (
            json!({ "seeds": [url], "allowedHosts": many_hosts }),
            "spec.allowedHosts",
        ),
        (
            json!({ "seeds": [url], "allowedHosts": ["not a host"] }),
            "spec.allowedHosts",
        ),
        (json!({ "seeds": [url], "task": "" }), "spec.task"),
        (json!({ "seeds": [url], "task": "has space" }), "spec.task"),
        (
            json!({ "seeds": [url], "task": "x".repeat(254) }),
            "spec.task",
        ),
        (json!({ "seeds": [url], "suspend": "yes" }), "spec.suspend"),
        (
            json!({ "seeds": [url], "cookieSecretRef": { "name": "s" } }),
            "spec.cookieSecretRef.key",
        ),
        (
            json!({ "seeds": [url], "cookieSecretRef": { "name": "Bad_Name", "key": "k" } }),
            "spec.cookieSecretRef.name",
        ),
        (
            json!({ "seeds": [url], "workerSelector": { "matchLabels": "gpu" } }),
            "spec.workerSelector.matchLabels",
        ),
    ]
}
