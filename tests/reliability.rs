//! Reliability scenarios against the real control plane: faults are injected, then the invariant
//! checker (tests/support/invariants.rs) and the site's request log are asked what went wrong.
//! Each scenario prints one `RELIABILITY` line with its figures (RELIABILITY.md collects them).
//!
//! CI runs the short versions; `make soak` sets `CRAWLER_SOAK=1` for many more cycles.
//! The scenarios restart and pause the shared API server, so they run one at a time.

mod support;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use crawler_operator::{crd::TaskState, heartbeat};
use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    invariants,
    pods::{create_worker_pod, delete_pod, set_pod_ready},
    site::{Site, endless},
    story::{BOUND, LEASE_DURATION, POLL, Story, WORKER_LABEL},
    wait_for,
};
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn soak() -> bool {
    std::env::var("CRAWLER_SOAK").is_ok_and(|v| v == "1")
}

/// Waits until the invariants hold; returns how long that took. Panics with the violations if
/// they still fail after the bound.
async fn settle(story: &Story, expected: &BTreeSet<String>) -> Duration {
    let started = Instant::now();
    let mut last = Vec::new();
    while started.elapsed() < BOUND {
        let snapshot = invariants::check(&story.client, story.ns(), Some(expected)).await;
        if snapshot.violations.is_empty() {
            return started.elapsed();
        }
        last = snapshot.violations;
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "invariants still violated after {BOUND:?}:\n{}\n{}",
        last.join("\n"),
        story.logs()
    );
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

fn report(
    scenario: &str,
    faults: usize,
    resources: usize,
    started: Instant,
    recoveries: &[Duration],
) {
    println!(
        "RELIABILITY scenario={scenario} faults={faults} resources={resources} duration={:.1}s violations=0 recovery_p50={:?} recovery_p99={:?} recovery_max={:?}",
        started.elapsed().as_secs_f64(),
        percentile(recoveries, 0.5),
        percentile(recoveries, 0.99),
        recoveries.iter().max().copied().unwrap_or_default(),
    );
}

async fn add(story: &Story, expected: &mut BTreeSet<String>, name: String) {
    story
        .apply_resource(&name, json!({ "seeds": ["https://books.example.org/"] }))
        .await;
    expected.insert(name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_and_paused_in_cycles_while_resources_come_and_go() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cycles = if soak() { 30 } else { 4 };
    let mut story = Story::new("leaderloop").await;
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    let mut next_id = 0;
    let mut identities: Vec<String> = Vec::new();
    for _ in 0..2 {
        identities.push(format!("c-{next_id}"));
        story.start_controller(&format!("c-{next_id}"));
        next_id += 1;
    }
    let mut expected = BTreeSet::new();
    for i in 0..6 {
        add(&story, &mut expected, format!("r-{i}")).await;
    }
    let mut recoveries = vec![settle(&story, &expected).await];
    let timeline = invariants::LeaseTimeline::start(
        story.client.clone(),
        story.ns(),
        "crawler-operator-leader",
    );
    let mut paused = 0;
    let mut serial = 6;
    for cycle in 0..cycles {
        let leader = wait_for("a leader", BOUND, POLL, || async {
            story.lease_holder().await.ok_or("none")
        })
        .await;
        let index = identities
            .iter()
            .position(|i| *i == leader)
            .expect("the leader is one of ours");
        let fault = Instant::now();
        if cycle % 2 == 0 {
            // Crash: SIGKILL, and a replacement replica starts (as a Deployment would).
            story.controllers[index].signal("KILL");
            identities.push(format!("c-{next_id}"));
            story.start_controller(&format!("c-{next_id}"));
            next_id += 1;
            identities[index] = String::new();
        } else {
            // Stall: SIGSTOP past the lease, changes meanwhile, then SIGCONT: it must not write.
            story.controllers[index].signal("STOP");
            wait_for("another leader", BOUND, POLL, || async {
                match story.lease_holder().await {
                    Some(h) if h != leader => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
            tokio::time::sleep(LEASE_DURATION).await;
            story.controllers[index].signal("CONT");
            paused += 1;
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
        settle(&story, &expected).await;
        recoveries.push(fault.elapsed());
    }
    // No write by a non-leader: every Assigned/Reassigned Event (one per status write) comes
    // from a replica that held the Lease around that moment.
    let events: Vec<Event> = Api::<Event>::namespaced(story.client.clone(), story.ns())
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    let (judged, violations) = timeline.judge(&events);
    assert_eq!(violations, Vec::<String>::new());
    println!(
        "{judged} writes judged against the Lease holder timeline; {paused} leaders paused past their lease and resumed"
    );
    report(
        "leader-kill-and-pause",
        cycles,
        expected.len(),
        started,
        &recoveries[1..],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_server_and_etcd_restarted_mid_flight() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let site = Site::start().await;
    let mut story = Story::new("restart").await;
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
    settle(&story, &expected).await;
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
        settle(&story, &expected).await;
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
    assert_eq!(site.overlaps(), Vec::<String>::new());
    report(
        "apiserver-etcd-restart",
        3,
        expected.len(),
        started,
        &recoveries,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_churn_pods_readiness_and_heartbeats() {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let steps = if soak() { 120 } else { 12 };
    let mut story = Story::new("churn").await;
    for i in 0..3 {
        story.ready_worker(&format!("w-{i}")).await;
    }
    story.start_controller("controller-a");
    let mut expected = BTreeSet::new();
    for i in 0..20 {
        add(&story, &mut expected, format!("r-{i}")).await;
    }
    settle(&story, &expected).await;
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
                settle(&story, &expected).await;
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
                settle(&story, &expected).await;
                leases
                    .delete(&heartbeat::lease_name(&target), &DeleteParams::default())
                    .await
                    .unwrap();
            }
        }
        settle(&story, &expected).await;
        recoveries.push(fault.elapsed());
    }
    report("worker-churn", steps, expected.len(), started, &recoveries);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_target_does_not_stall_the_other_tasks_of_its_worker() {
    let _serial = SERIAL.lock().await;
    let site = Site::start().await;
    let mut story = Story::new("slow").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.start_worker("worker-1", None);
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
    let _serial = SERIAL.lock().await;
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
