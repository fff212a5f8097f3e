//! Scenario 7a: placement alone, no API server. Our policies against the original Go master's
//! algorithm (sort every worker for every resource), and the controller's whole decision
//! (`Index::plan`: filters, policy, status and Event text, assume) for the same batch.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use crawler_core::{PolicyKind, Request, Schedule, Worker, original_algorithm};
use crawler_operator::{
    controller::{Index, Key, Plan, PlanContext},
    crd::CrawlerResource,
};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::stats::median;

pub struct MicroResult {
    pub name: &'static str,
    pub what: &'static str,
    /// Median of the repetitions, for the whole batch.
    pub batch: Duration,
    pub per_placement: Duration,
    /// max - min load after the batch.
    pub spread: u64,
}

pub fn run(resources: usize, workers: usize, repetitions: usize) -> Vec<MicroResult> {
    let pool: Vec<Worker> = (0..workers)
        .map(|i| Worker::new(format!("worker-{i:03}")))
        .collect();
    let requests = vec![Request::unit(); resources];
    let mut results = Vec::new();

    let spread =
        |loads: &[u64]| loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);

    for (name, kind) in [
        ("LeastLoaded (ours, default)", PolicyKind::LeastLoaded),
        ("BinPack (ours)", PolicyKind::BinPack),
    ] {
        let mut times = Vec::new();
        let mut last = 0;
        for _ in 0..repetitions {
            let mut schedule = Schedule::new(kind.build(), pool.clone());
            let started = Instant::now();
            let outcomes = schedule.place_all(black_box(&requests));
            times.push(started.elapsed());
            assert!(
                outcomes.iter().all(Result::is_ok),
                "{name}: every request placed"
            );
            let loads: Vec<u64> = schedule.workers().iter().map(|w| w.load).collect();
            last = spread(&loads);
        }
        let batch = median(times);
        results.push(MicroResult {
            name,
            what: "scheduler::Schedule::place_all: filter + policy + tie-break, assume",
            batch,
            per_placement: batch / resources as u32,
            spread: last,
        });
    }

    let mut times = Vec::new();
    let mut last = 0;
    for _ in 0..repetitions {
        let started = Instant::now();
        let outcomes = original_algorithm(black_box(&pool), black_box(&requests));
        times.push(started.elapsed());
        let mut loads = vec![0u64; workers];
        for o in &outcomes {
            let name = o.as_ref().expect("placed");
            let i: usize = name["worker-".len()..].parse().unwrap();
            loads[i] += 1;
        }
        last = spread(&loads);
    }
    let batch = median(times);
    results.push(MicroResult {
        name: "original algorithm (baseline)",
        what: "scheduler::original_algorithm: sort all workers per resource",
        batch,
        per_placement: batch / resources as u32,
        spread: last,
    });

    // The controller's decision path: Index::plan for every resource (under the lock in the
    // controller), including the status it would write and the Event text; with host affinity
    // (the default: one host lookup per namespace for each of the task's hosts, and the holds
    // kept with the loads) and without.
    let policy = PolicyKind::LeastLoaded.build();
    for (name, affinity) in [
        ("controller decision (ours)", false),
        ("controller decision, host affinity (ours, default)", true),
    ] {
        let mut times = Vec::new();
        let mut last = 0;
        for _ in 0..repetitions.min(7) {
            let (index, keys) = index_with(resources, workers);
            let mut index = index.with_host_affinity(affinity);
            let ctx = PlanContext {
                policy: policy.as_ref(),
                worker_port: 8080,
                now: jiff::Timestamp::now(),
            };
            let started = Instant::now();
            let mut writes = 0;
            for key in &keys {
                if let Plan::Write(w) = index.plan(black_box(key), &ctx) {
                    writes += 1;
                    black_box(w);
                }
            }
            times.push(started.elapsed());
            assert_eq!(writes, resources, "every resource gets one write");
            let loads: Vec<u64> = (0..workers)
                .map(|i| index.load("bench", &format!("worker-{i:03}")))
                .collect();
            last = spread(&loads);
        }
        let batch = median(times);
        results.push(MicroResult {
            name,
            what: "controller::Index::plan: the above + desired status, condition, Event note, assume",
            batch,
            per_placement: batch / resources as u32,
            spread: last,
        });
    }
    results
}

/// Benchmark resource `i` (`r-NNNNNN` in namespace `bench`, [`crate::resource_spec`]) as the
/// watch would show it, with `status` when it was placed before: every index the micro
/// benchmarks build starts from these.
fn bench_resource(i: usize, status: Option<serde_json::Value>) -> CrawlerResource {
    let mut object = json!({
        "apiVersion": "crawler.dev/v1alpha1",
        "kind": "CrawlerResource",
        "metadata": {
            "name": format!("r-{i:06}"),
            "namespace": "bench",
            "resourceVersion": (1000 + i).to_string(),
            "generation": 1,
        },
        "spec": crate::resource_spec(i),
    });
    if let Some(status) = status {
        object["status"] = status;
    }
    serde_json::from_value(object).unwrap()
}

/// An index holding `workers` ready worker Pods and `resources` unassigned resources.
fn index_with(resources: usize, workers: usize) -> (Index, Vec<Key>) {
    let pods: Vec<Pod> = (0..workers)
        .map(|i| {
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("worker-{i:03}"),
                    "namespace": "bench",
                    "labels": { "app.kubernetes.io/component": "crawler-worker" },
                },
                "status": {
                    "phase": "Running",
                    "podIP": format!("10.1.{}.{}", i / 250, i % 250 + 1),
                    "conditions": [{ "type": "Ready", "status": "True" }],
                },
            }))
            .unwrap()
        })
        .collect();
    let crs: Vec<CrawlerResource> = (0..resources).map(|i| bench_resource(i, None)).collect();
    let mut index = Index::default();
    index.reset_pods(&pods);
    index.reset_resources(&crs);
    let keys = (0..resources)
        .map(|i| Key::new("bench", format!("r-{i:06}")))
        .collect();
    (index, keys)
}

/// One rebalance round's cost under the controller's lock (`Index::rebalance`), no API server.
pub struct RebalanceRound {
    pub name: &'static str,
    pub budget: usize,
    /// Median of the repetitions.
    pub round: Duration,
    pub moves: usize,
}

/// Scenario 7d: what a rebalance round costs the controller. `resources` placed on `workers`
/// workers, either all on one worker (the others joined empty: every round has moves to make)
/// or spread evenly (a balanced cluster: nothing to plan).
pub fn rebalance(resources: usize, workers: usize, repetitions: usize) -> Vec<RebalanceRound> {
    let policy = PolicyKind::LeastLoaded.build();
    let hysteresis = crawler_core::Hysteresis {
        threshold: 2,
        cooldown: Duration::from_secs(60),
    };
    let mut rounds = Vec::new();
    for (name, budget, all_on_one) in [
        ("all on one worker, the others joined", 1, true),
        ("all on one worker, the others joined", 10, true),
        ("balanced: nothing to plan", 10, false),
    ] {
        let mut times = Vec::new();
        let mut moves = 0;
        for _ in 0..repetitions.min(7) {
            let mut index = placed_index(resources, workers, all_on_one);
            let ctx = PlanContext {
                policy: policy.as_ref(),
                worker_port: 8080,
                now: jiff::Timestamp::now(),
            };
            let started = Instant::now();
            let writes = index.rebalance(black_box(&ctx), hysteresis, budget);
            times.push(started.elapsed());
            moves = writes.len();
        }
        rounds.push(RebalanceRound {
            name,
            budget,
            round: median(times),
            moves,
        });
    }
    rounds
}

/// An index holding `workers` ready worker Pods and `resources` resources assigned long ago, all
/// to `worker-000` or round-robin.
fn placed_index(resources: usize, workers: usize, all_on_one: bool) -> Index {
    let (mut index, _) = index_with(0, workers);
    let crs: Vec<CrawlerResource> = (0..resources)
        .map(|i| {
            let worker = if all_on_one { 0 } else { i % workers };
            let status = json!({
                "phase": "Assigned",
                "assignedWorker": format!("worker-{worker:03}"),
                "assignedAt": "2026-01-01T00:00:00Z",
                "assignments": 1,
                "observedGeneration": 1,
            });
            bench_resource(i, Some(status))
        })
        .collect();
    index.reset_resources(&crs);
    index
}
