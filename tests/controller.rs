//! The controller against a real kube-apiserver: the original demonstration and what the issue
//! adds (unschedulable, readiness, selectors, weights, leader failover, bad input). Each test has
//! its own namespace and its own controller processes (the real binary), whose Lease lives in
//! that namespace, so tests run side by side without seeing each other.

use crate::support;

use std::time::Duration;

use crawler_operator::crd::{CONDITION_ASSIGNED, CrawlerResource, Phase};
use k8s_openapi::api::events::v1::Event;
use kube::{
    ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
};
use serde_json::json;
use support::{
    pods::{create_worker_pod, delete_pod, set_pod_ready},
    story::{BOUND, LEASE_DURATION, POLL, Story, WORKER_LABEL, count_by_worker},
    wait_for,
};

const FIVE: [&str; 5] = [
    "douban-book-list",
    "task-test-1",
    "task-test-2",
    "task-test-3",
    "xxx",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_demonstration() {
    let mut story = Story::new("demo").await;
    story.ready_worker("worker-1").await;
    story.ready_worker("worker-2").await;
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;
    for name in FIVE {
        story.apply_simple(name).await;
    }

    // Two ready workers, five resources: a 3/2 split.
    let placed = story.assert_all_assigned(&FIVE).await;
    let mut counts: Vec<usize> = count_by_worker(&placed).into_values().collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![2, 3], "placement {placed:?}\n{}", story.logs());

    // worker-1's Pod deleted: all five end on worker-2.
    delete_pod(&story.client, story.ns(), "worker-1").await;
    for name in FIVE {
        story.assert_assigned(name, "worker-2").await;
    }
    let moved: Vec<CrawlerResource> = story
        .api()
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for r in &moved {
        let status = r.status.as_ref().unwrap();
        if placed[&r.name_any()] == "worker-1" {
            assert_eq!(
                status.assignments,
                Some(2),
                "{} was moved once",
                r.name_any()
            );
            assert_eq!(
                status.condition(CONDITION_ASSIGNED).unwrap().reason,
                "Reassigned"
            );
        } else {
            assert_eq!(status.assignments, Some(1), "{} never moved", r.name_any());
        }
    }

    // A new worker joins: nothing moves to it (well placed work stays where it is).
    let before = story.resource_versions().await;
    story.ready_worker("worker-3").await;

    // A new leader takes over (the old one is killed): it writes no status at all.
    story.start_controller("controller-b");
    story.controllers[0].signal("KILL");
    story.wait_for_leader("controller-b").await;
    // The new leader listed worker-3 before it took over, and queued its full pass before
    // anything applied afterwards: once task-test-4 is placed, the pass over the five is done.
    story.apply_simple("task-test-4").await;
    story.assert_assigned("task-test-4", "worker-3").await;
    let after = story.resource_versions().await;
    for name in FIVE {
        assert_eq!(
            before[name],
            after[name],
            "{name} was written by the new leader\n{}",
            story.logs()
        );
    }

    // Delete it: gone, and the next placement sees worker-3's lower load.
    story
        .api()
        .delete("task-test-4", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("task-test-4 to be gone", BOUND, POLL, || async {
        match story.api().get_opt("task-test-4").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.map(|r| r.name_any())))),
        }
    })
    .await;
    story.apply_simple("task-test-5").await;
    story.assert_assigned("task-test-5", "worker-3").await;
}

/// `kubectl get crr` (`-o wide` if `wide`) in the story's namespace: the header's words and the
/// whole output.
fn kubectl_get_crr(story: &Story, wide: bool) -> (Vec<String>, String) {
    let mut args = vec!["get", "crr", "-n", story.ns()];
    if wide {
        args.extend(["-o", "wide"]);
    }
    let out = story.cp.kubectl().args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (header, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_until_a_worker_is_ready() {
    let mut story = Story::new("unsched").await;
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;
    create_worker_pod(&story.client, story.ns(), "worker-1", &[WORKER_LABEL]).await;
    story.apply_simple("task-test-4").await;

    let api = story.api();
    let condition = wait_for("task-test-4 unschedulable", BOUND, POLL, || async {
        let r = api.get("task-test-4").await.map_err(|e| e.to_string())?;
        let status = r.status.unwrap_or_default();
        match (status.phase, status.condition(CONDITION_ASSIGNED)) {
            (Some(Phase::Unschedulable), Some(c)) => Ok(c.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(condition.status, "False");
    assert_eq!(condition.message, "0/1 workers eligible: 1 not ready");
    let events = wait_for("an Unschedulable event", BOUND, POLL, || async {
        let events: Vec<Event> = story
            .events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Unschedulable"))
            .collect();
        if events.is_empty() {
            Err("none yet")
        } else {
            Ok(events)
        }
    })
    .await;
    assert_eq!(events[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        events[0].regarding.as_ref().unwrap().name.as_deref(),
        Some("task-test-4")
    );

    // The worker turns ready: placed.
    set_pod_ready(
        &story.client,
        story.ns(),
        "worker-1",
        true,
        Some("10.1.0.9"),
    )
    .await;
    story.assert_assigned("task-test-4", "worker-1").await;
    let r = story.api().get("task-test-4").await.unwrap();
    let status = r.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Assigned));
    assert_eq!(status.assigned_address.as_deref(), Some("10.1.0.9:9090"));
    assert_eq!(status.observed_generation, r.metadata.generation);

    // What a user sees: plain `kubectl get` shows the state and the pages fetched, the wide
    // view the rest of the printer columns.
    let (plain, _) = kubectl_get_crr(&story, false);
    assert_eq!(
        plain,
        ["NAME", "WORKER", "PHASE", "STATE", "PAGES", "AGE"],
        "plain kubectl get"
    );
    let (header, text) = kubectl_get_crr(&story, true);
    assert_eq!(
        header,
        [
            "NAME",
            "WORKER",
            "PHASE",
            "STATE",
            "PAGES",
            "AGE",
            "TASK",
            "ADDRESS",
            "WEIGHT",
            "ASSIGNMENTS",
            "SUSPENDED",
            "FAILURES",
            "RUN",
            "NEXT",
            "COMPLETED"
        ],
        "{text}"
    );
    let row: Vec<&str> = text
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        (row[0], row[1], row[2]),
        ("task-test-4", "worker-1", "Assigned"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_workers_selectors_and_weights() {
    let mut story = Story::new("select").await;
    story.worker("cpu-1", &[("crawler.dev/gpu", "false")]).await;
    story.worker("gpu-1", &[("crawler.dev/gpu", "true")]).await;
    story.worker("gpu-2", &[("crawler.dev/gpu", "true")]).await;
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;

    // A heavy resource that needs a GPU, then unit ones that need one too: weights spread them.
    let gpu = json!({ "matchLabels": { "crawler.dev/gpu": "true" } });
    story
        .apply_resource(
            "heavy",
            json!({ "seeds": ["https://a.example/"], "weight": 3, "workerSelector": gpu }),
        )
        .await;
    let heavy = story.assert_all_assigned(&["heavy"]).await["heavy"].clone();
    assert!(heavy.starts_with("gpu-"), "heavy went to {heavy}");
    for name in ["light-1", "light-2", "light-3"] {
        story
            .apply_resource(
                name,
                json!({ "seeds": ["https://a.example/"], "workerSelector": gpu }),
            )
            .await;
        story.assert_all_assigned(&[name]).await;
    }
    let placed = story
        .assert_all_assigned(&["heavy", "light-1", "light-2", "light-3"])
        .await;
    let other = if heavy == "gpu-1" { "gpu-2" } else { "gpu-1" };
    // Loads end 3 and 3: the three light ones went to the other GPU worker.
    for name in ["light-1", "light-2", "light-3"] {
        assert_eq!(placed[name], other, "{placed:?}");
    }

    // The heavy one's worker goes NotReady: it moves to the other GPU worker, never to cpu-1.
    set_pod_ready(&story.client, story.ns(), &heavy, false, None).await;
    story.assert_assigned("heavy", other).await;
    let r = story.api().get("heavy").await.unwrap();
    let condition = r
        .status
        .unwrap()
        .condition(CONDITION_ASSIGNED)
        .unwrap()
        .clone();
    assert!(
        condition.message.contains("not ready"),
        "{}",
        condition.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_the_standby_takes_over_when_it_dies() {
    let mut story = Story::new("failover").await;
    story.ready_worker("worker-1").await;
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;
    story.start_controller("controller-b");
    for name in FIVE {
        story.apply_simple(name).await;
    }
    story.assert_all_assigned(&FIVE).await;
    // Every decision was published as an Event by the leader, none by the standby.
    let events = wait_for("five Assigned events", BOUND, POLL, || async {
        let events: Vec<Event> = story
            .events()
            .await
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("Assigned"))
            .collect();
        if events.len() >= 5 {
            Ok(events)
        } else {
            Err(format!("{} so far", events.len()))
        }
    })
    .await;
    for e in &events {
        assert_eq!(
            e.reporting_instance.as_deref(),
            Some("controller-a"),
            "{e:?}"
        );
    }

    // Operations: both replicas are ready; the leader says so and counts its assignments. The
    // index gauges are refreshed once a second, so wait for a snapshot taken after the placements.
    let leader_metrics = wait_for(
        "the leader's gauges to show the worker",
        BOUND,
        POLL,
        || async {
            match Story::http_get(&story.controllers[0], "/metrics").await {
                (200, text) if text.contains("crawler_controller_worker_load{namespace=") => {
                    Ok(text)
                }
                (code, text) => Err(format!("{code}: {text}")),
            }
        },
    )
    .await;
    assert!(
        leader_metrics.contains("crawler_controller_leader 1"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics.contains("crawler_controller_assignments_total{kind=\"assigned\"} 5"),
        "{leader_metrics}"
    );
    assert!(
        leader_metrics.contains("crawler_controller_worker_load{namespace="),
        "{leader_metrics}"
    );
    let (_, standby_metrics) = Story::http_get(&story.controllers[1], "/metrics").await;
    assert!(
        standby_metrics.contains("crawler_controller_leader 0"),
        "{standby_metrics}"
    );
    for controller in &story.controllers {
        wait_for("the replica to be ready", BOUND, POLL, || async {
            match Story::http_get(controller, "/readyz").await {
                (200, _) => Ok(()),
                (code, body) => Err(format!("{code} {body}")),
            }
        })
        .await;
    }

    // SIGKILL the leader: the standby leads within lease duration + retry period (+ slack), and
    // then places new work.
    let killed = std::time::Instant::now();
    story.controllers[0].signal("KILL");
    story.wait_for_leader("controller-b").await;
    let takeover = killed.elapsed();
    println!("takeover after SIGKILL: {takeover:?}");
    assert!(
        takeover < LEASE_DURATION + Duration::from_millis(500) + Duration::from_secs(2),
        "took {takeover:?}"
    );
    story.apply_simple("task-test-4").await;
    story.assert_assigned("task-test-4", "worker-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_over_at_once() {
    let mut story = Story::new("handover").await;
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;
    story.start_controller("controller-b");
    let stopped = std::time::Instant::now();
    story.controllers[0].signal("TERM");
    story.wait_for_leader("controller-b").await;
    let takeover = stopped.elapsed();
    println!("takeover after SIGTERM: {takeover:?}");
    assert!(
        takeover < LEASE_DURATION,
        "a released Lease is taken over within a retry period, took {takeover:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_by_the_api_server_naming_the_field() {
    let story = Story::new("invalid").await;
    let cases = [
        (json!({ "seeds": ["ftp://example.org/"] }), "spec.seeds"),
        (json!({ "seeds": ["not a url"] }), "spec.seeds"),
        (json!({ "seeds": [] }), "spec.seeds"),
        (
            json!({ "seeds": ["https://a.example/"], "weight": 0 }),
            "spec.weight",
        ),
        (
            json!({ "seeds": ["https://a.example/"], "maxDepth": 11 }),
            "spec.maxDepth",
        ),
        (
            json!({ "seeds": ["https://a.example/"], "rateLimit": { "requestsPerSecond": 0 } }),
            "spec.rateLimit.requestsPerSecond",
        ),
        (
            json!({ "seeds": ["https://a.example/"], "task": "bad task!" }),
            "spec.task",
        ),
        (json!({}), "spec.seeds"),
    ];
    for (spec, field) in cases {
        let message = story.refused_spec(&spec).await;
        assert!(
            message.contains(field),
            "{spec}: message {message:?} does not name {field}"
        );
    }
    // Nothing was created by any refused apply.
    assert!(story.api().get_opt("bad").await.unwrap().is_none());
    let ok = story
        .api()
        .create(
            &PostParams::default(),
            &CrawlerResource::new(
                "good",
                serde_json::from_value(json!({"seeds": ["https://x.example/"]})).unwrap(),
            ),
        )
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

/// spec.workerSelector: what the API server refuses in a Pod's selectors (unknown operators,
/// In/NotIn without values, Exists/DoesNotExist with values, invalid label keys and values) is
/// refused at apply too, naming the field and saying what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_selectors_are_refused_by_the_api_server_naming_the_field() {
    let story = Story::new("invalid-selector").await;
    let selectors = [
        (
            json!({ "matchExpressions": [{ "key": "pool", "operator": "Equals", "values": ["a"] }] }),
            "spec.workerSelector.matchExpressions[0].operator",
            "must be In, NotIn, Exists or DoesNotExist, not Equals",
        ),
        (
            json!({ "matchExpressions": [{ "key": "pool", "operator": "In" }] }),
            "spec.workerSelector.matchExpressions[0]",
            "operator In needs at least one value",
        ),
        (
            json!({ "matchExpressions": [{ "key": "pool", "operator": "NotIn", "values": [] }] }),
            "spec.workerSelector.matchExpressions[0]",
            "operator NotIn needs at least one value",
        ),
        (
            json!({ "matchExpressions": [{ "key": "gpu", "operator": "Exists", "values": ["true"] }] }),
            "spec.workerSelector.matchExpressions[0]",
            "operator Exists takes no values",
        ),
        (
            json!({ "matchExpressions": [{ "key": "bad key!", "operator": "Exists" }] }),
            "spec.workerSelector.matchExpressions[0].key",
            "must be a valid label key",
        ),
        (
            json!({ "matchExpressions": [{ "key": "pool", "operator": "In", "values": ["ok", "not ok"] }] }),
            "spec.workerSelector.matchExpressions[0].values",
            "must be a valid label value",
        ),
        (
            json!({ "matchLabels": { "Crawler.Dev/pool": "a" } }),
            "spec.workerSelector.matchLabels",
            "every key of matchLabels must be a valid label key",
        ),
        (
            json!({ "matchLabels": { "pool": "-gpu" } }),
            "spec.workerSelector.matchLabels",
            "every value of matchLabels must be a valid label value",
        ),
        (
            json!({ "matchLabels": { "pool": "a".repeat(64) } }),
            "spec.workerSelector.matchLabels.pool",
            "may not be more than 63",
        ),
    ];
    for (selector, field, words) in selectors {
        let spec = json!({ "seeds": ["https://a.example/"], "workerSelector": selector });
        let message = story.refused_spec(&spec).await;
        assert!(
            message.contains(field) && message.contains(words),
            "{selector}: message {message:?} does not name {field} or say {words:?}"
        );
    }
    assert!(story.api().get_opt("bad").await.unwrap().is_none());
    // Every form of a valid selector is accepted.
    let fine = story
        .api()
        .create(
            &PostParams::default(),
            &CrawlerResource::new(
                "good-selector",
                serde_json::from_value(json!({"seeds": ["https://x.example/"], "workerSelector": {
                    "matchLabels": { "crawler.dev/pool": "gpu", "tier": "" },
                    "matchExpressions": [
                        { "key": "example.org/zone", "operator": "In", "values": ["a", "b-2", "C_3.x"] },
                        { "key": "spot", "operator": "DoesNotExist" },
                        { "key": "gpu", "operator": "Exists", "values": [] },
                    ],
                }}))
                .unwrap(),
            ),
        )
        .await;
    assert!(fine.is_ok(), "{fine:?}");
}

/// Room freed by a move is offered to what waits for it (issue 21, item 5), as a user met it:
/// worker-1 (capacity 1) runs r1; r2, which may only run on worker-1, is `Unschedulable`; r1's
/// selector changes so that it moves to worker-2. r2 must be placed on worker-1 at once, not at
/// the next unrelated Pod event nor at the controller's 30 s safety resync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_freed_by_a_move_goes_to_the_resource_waiting_for_it() {
    let mut story = Story::new("room").await;
    story.worker("worker-1", &[("zone", "a")]).await;
    story.worker("worker-2", &[("zone", "b")]).await;
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(story.client.clone(), story.ns())
        .patch(
            "worker-1",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({ "metadata": { "annotations": { "crawler.dev/capacity": "1" } } }),
            ),
        )
        .await
        .unwrap();
    story.start_controller("controller-a");
    story.wait_for_leader("controller-a").await;
    let spec = |zone: &str| {
        json!({
            "seeds": ["https://books.example.org/tag/"],
            "workerSelector": { "matchLabels": { "zone": zone } },
        })
    };
    story.apply_resource("r1", spec("a")).await;
    story.assert_assigned("r1", "worker-1").await;
    story.apply_resource("r2", spec("a")).await;
    let api = story.api();
    wait_for("r2 unschedulable", BOUND, POLL, || async {
        let r = api.get("r2").await.map_err(|e| e.to_string())?;
        match r.status.and_then(|s| s.phase) {
            Some(Phase::Unschedulable) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    story.apply_resource("r1", spec("b")).await;
    story.assert_assigned("r1", "worker-2").await;
    let moved = std::time::Instant::now();
    // Well under the 30 s resync: only the freed room can have placed it this soon.
    wait_for(
        "r2 placed on worker-1",
        Duration::from_secs(5),
        POLL,
        || async {
            let r = api.get("r2").await.map_err(|e| e.to_string())?;
            match support::story::assigned_worker(&r) {
                Some(w) if w == "worker-1" => Ok(()),
                other => Err(format!("{other:?} ({:?})", r.status.map(|s| s.phase))),
            }
        },
    )
    .await;
    println!(
        "room: r2 placed {:?} after r1's move was seen",
        moved.elapsed()
    );
}
