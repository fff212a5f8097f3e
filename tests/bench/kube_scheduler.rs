//! Scenario 7b: kube-scheduler placing the same number of Pods on `workers` Nodes, against the
//! same API server in the same run. The Nodes are plain objects whose status this process writes
//! (Ready, room for 1000 Pods each); binding needs nothing else, so no kubelet or kwok runs.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{
    Config, pod_observer, pool,
    procs::{CpuSnapshot, ServerPids, Usage},
    report::{Report, table},
    stats::{per_sec, secs},
    support::{ControlPlane, process::Server, tools},
};

/// One kube-scheduler run: its client limits, and how many Pods it places.
struct Run {
    label: &'static str,
    qps: Option<u32>,
    pods: usize,
}

pub async fn run(
    cp: &'static ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
    ours: Option<f64>,
) {
    let binary = tools::cache_dir().join("kube-scheduler");
    if !binary.is_file() {
        report.section(
            "7b. kube-scheduler side by side",
            format!("Not run: `{}` is missing. `hack/install-tools.sh kube-scheduler` builds it (about a minute with a warm Go cache); `make bench` does that first.\n", binary.display()),
        );
        report.goal(
            "bulk ahead of kube-scheduler (pods/s, same server)",
            "kube-scheduler not built",
            None,
        );
        return;
    }
    let client = cp.client();
    create_nodes(&client, cfg.workers).await;
    let runs = [
        Run {
            label: "client QPS 5000 (unthrottled)",
            qps: Some(5000),
            pods: cfg.scheduler_pods,
        },
        Run {
            label: "default client QPS 50, burst 100",
            qps: None,
            pods: cfg.scheduler_default_qps_pods,
        },
    ];
    let mut rows = Vec::new();
    let mut fastest: f64 = 0.0;
    for (i, run) in runs.iter().enumerate() {
        if run.pods == 0 {
            continue;
        }
        let ns = cp.namespace(&format!("ks-{i}")).await;
        let created = create_pods(&client, ns.name(), run.pods).await;
        let observer = pod_observer(&client, ns.name());
        observer
            .wait_for(
                "the Pods to be seen",
                Duration::from_secs(120),
                |s| s.synced.then_some(()),
                |_| String::new(),
            )
            .await;
        let config = write_config(cp, i, run.qps);
        let log = cp.dir().join(format!("kube-scheduler-{i}.log"));
        let server = Server::new(
            "kube-scheduler",
            binary.clone(),
            vec![
                format!("--config={}", config.display()),
                "--secure-port=0".to_owned(),
                "-v=1".to_owned(),
            ],
            log.clone(),
        );
        crate::settle(pids, Duration::from_secs(60)).await;
        let cpu_before = CpuSnapshot::take(pids);
        let t0 = Instant::now();
        server.start();
        let n = run.pods;
        let timeout = Duration::from_secs((n as u64 / 10).max(120));
        observer
            .wait_for(
                "kube-scheduler to bind every Pod",
                timeout,
                |s| (s.bound_count() >= n).then_some(()),
                |s| format!("{} of {n} bound; log {}", s.bound_count(), log.display()),
            )
            .await;
        let usage = Usage::of(server.pid()).unwrap_or_default();
        let cpu = CpuSnapshot::take(pids).since(&cpu_before);
        server.stop().await;
        let (first, last, spread) = {
            let s = observer.lock();
            let times: Vec<Instant> = s
                .events
                .iter()
                .filter(|e| matches!(e.change, crate::observe::PodChange::Bound(_)))
                .map(|e| e.at)
                .collect();
            let per = s.bound_per_node();
            let counts: Vec<usize> = (0..cfg.workers)
                .map(|i| per.get(&node_name(i)).copied().unwrap_or(0))
                .collect();
            (
                times.iter().min().copied().unwrap_or(t0),
                times.iter().max().copied().unwrap_or(t0),
                counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0),
            )
        };
        let rate = per_sec(n.saturating_sub(1), last.duration_since(first));
        if run.qps.is_some() {
            fastest = fastest.max(rate);
        }
        cpu_rows.push(crate::cpu_row(
            &format!("7b. kube-scheduler, {}", run.label),
            n,
            &cpu,
            Some(usage.cpu),
        ));
        rows.push(vec![
            run.label.to_owned(),
            n.to_string(),
            format!("{created:.1?}"),
            secs(first.duration_since(t0)),
            secs(last.duration_since(t0)),
            format!("**{rate:.0}**"),
            spread.to_string(),
            format!("{:.1} / {:.1}", usage.rss_mib(), usage.hwm_mib()),
        ]);
        println!(
            "bench: kube-scheduler {}: {n} Pods bound at {rate:.0}/s",
            run.label
        );
    }
    let comparison = ours.map_or_else(String::new, |ours| {
        format!(
            "\nOur controller in the bulk run: **{ours:.0} assignments/s**, {:.1}x kube-scheduler unthrottled.\n",
            ours / fastest.max(1e-9)
        )
    });
    report.section(
        &format!("7b. kube-scheduler side by side ({} Nodes, same API server, same run)", cfg.workers),
        format!(
            "kube-scheduler {} with leader election off and the admin kubeconfig (like our controller, so both are exempt from API Priority and Fairness). Pods are created first, then the scheduler starts. Each binding is one `pods/binding` create; like ours, it also publishes an Event per placement.\n\n{}{comparison}",
            crate::command_line(binary.to_str().unwrap_or_default(), &["--version"]),
            table(&["kube-scheduler", "Pods", "created in", "start -> first bound s", "start -> all bound s", "pods/s (first -> last)", "spread", "RSS / peak MiB"], rows)
        ),
    );
    if let Some(ours) = ours {
        report.goal(
            "bulk ahead of kube-scheduler (pods/s, same server)",
            format!("{ours:.0} vs {fastest:.0} (unthrottled kube-scheduler)"),
            Some(ours > fastest),
        );
    }
}

fn node_name(i: usize) -> String {
    format!("bench-node-{i:03}")
}

async fn create_nodes(client: &kube::Client, count: usize) {
    let api: Api<Node> = Api::all(client.clone());
    pool(count, 16, move |i| {
        let api = api.clone();
        async move {
            let name = node_name(i);
            let node: Node = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name } },
            }))
            .unwrap();
            api.create(&PostParams::default(), &node).await.unwrap_or_else(|e| panic!("creating Node {name}: {e}"));
            let now = jiff::Timestamp::now();
            let resources = json!({ "cpu": "64", "memory": "256Gi", "pods": "1000" });
            let status = json!({ "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "KubeletReady",
                    "message": "a benchmark node", "lastHeartbeatTime": now, "lastTransitionTime": now,
                }],
            }});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap_or_else(|e| panic!("Node {name} status: {e}"));
            // The API server taints new Nodes not-ready (TaintNodesByCondition); the node
            // lifecycle controller would lift it once the Node is Ready. We play that part.
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&json!({ "spec": { "taints": null } })))
                .await
                .unwrap_or_else(|e| panic!("Node {name} taints: {e}"));
        }
    })
    .await;
    // Make sure every Node is visible before any Pod is scheduled.
    let listed = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_or(0, |l| l.items.len());
    assert!(listed >= count, "{listed} Nodes listed, {count} created");
}

async fn create_pods(client: &kube::Client, ns: &str, count: usize) -> Duration {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    let api = Arc::new(api);
    pool(count, 32, move |i| {
        let api = Arc::clone(&api);
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": format!("p-{i:06}"), "labels": { "app": "bench" } },
                "spec": {
                    "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }],
                    "terminationGracePeriodSeconds": 0,
                },
            }))
            .unwrap();
            api.create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("creating Pod p-{i:06}: {e}"));
        }
    })
    .await;
    started.elapsed()
}

fn write_config(cp: &ControlPlane, i: usize, qps: Option<u32>) -> PathBuf {
    let limits = qps.map_or_else(String::new, |q| format!("  qps: {q}\n  burst: {q}\n"));
    let text = format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: \"{}\"\n{limits}leaderElection:\n  leaderElect: false\n",
        cp.kubeconfig_path().display()
    );
    let path = cp.dir().join(format!("kube-scheduler-{i}.yaml"));
    std::fs::write(&path, text).expect("writing the kube-scheduler config");
    path
}
