//! 6c. Worker footprint: one real worker process, its RSS and CPU as the number of running crawl
//! tasks grows (each task an endless crawl of the loopback test site at 1 request/s).

use std::time::{Duration, Instant};

use crawler_operator::crd::CrawlerResource;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;

use crate::{
    Config, create_workers,
    procs::{Controller, Election, Usage},
    report::{Report, table},
    support::{ControlPlane, site::Site},
};

/// How long a step runs at its task count before it is measured: long enough for every task to
/// have fetched pages, grown its frontier and reported progress a few times (every 2 s).
const SETTLE: Duration = Duration::from_secs(15);

pub async fn run(cp: &ControlPlane, cfg: &Config, report: &mut Report) {
    let site = Site::start().await;
    let client = cp.client();
    let ns = cp.namespace("worker-footprint").await;
    create_workers(&client, ns.name(), 1).await;
    let pod = "worker-000";
    let controller = Controller::start(
        cp,
        ns.name(),
        "footprint-controller",
        cfg.concurrency,
        Election::FAST,
        cp.kubeconfig_path(),
    );
    let output = cp.dir().join("worker-footprint.jsonl");
    let worker = Controller::start_worker(cp, ns.name(), pod, &output);
    let started = Instant::now();
    running_tasks_reach(&worker, 0, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let base = worker.usage();
    let mut rows = vec![row(0, &base, &base, None)];
    let api: Api<CrawlerResource> = Api::namespaced(client.clone(), ns.name());
    let mut created = 0;
    let mut last = (0, base);
    for &tasks in &cfg.worker_tasks {
        while created < tasks {
            let name = format!("crawl-{created:04}");
            let body = json!({
                "apiVersion": "crawler.dev/v1alpha1",
                "kind": "CrawlerResource",
                "metadata": { "name": name },
                "spec": {
                    "seeds": [site.seed(&name)],
                    "maxDepth": 10,
                    "rateLimit": { "requestsPerSecond": 1, "burst": 1 },
                },
            });
            api.patch(
                &name,
                &PatchParams::apply("crawler-bench"),
                &Patch::Apply(&body),
            )
            .await
            .unwrap_or_else(|e| panic!("creating {name}: {e}"));
            created += 1;
        }
        let reached = running_tasks_reach(&worker, tasks, Duration::from_secs(120)).await;
        println!("bench: worker footprint: {tasks} tasks running after {reached:.1?}");
        tokio::time::sleep(SETTLE).await;
        let usage = worker.usage();
        rows.push(row(tasks, &usage, &base, Some(&last)));
        last = (tasks, usage);
    }
    let pages = std::fs::read_to_string(&output).map_or(0, |t| t.lines().count());
    let elapsed = started.elapsed();
    worker.stop().await;
    controller.stop().await;
    let per_task = (last.0 > 0)
        .then(|| last.1.rss_kib.saturating_sub(base.rss_kib) as f64 / 1024.0 / last.0 as f64);
    report.section(
        "6c. Footprint of a worker as its running tasks grow",
        format!(
            "One worker process (release build), each task an endless crawl of a loopback site at 1 request/s \
             (depth 10), progress written every 2 s; measured {SETTLE:?} after the worker reported the step's \
             task count running. {pages} page records written in {:.0} s.\n\n{}\n\n\
             Per running task (RSS above the idle worker, at the last step): **{} MiB**.\n",
            elapsed.as_secs_f64(),
            table(
                &[
                    "running tasks",
                    "VmRSS MiB",
                    "VmHWM (peak) MiB",
                    "RSS above idle, per task KiB",
                    "CPU s since the previous step",
                ],
                rows
            ),
            per_task.map_or_else(|| "n/a".to_owned(), |m| format!("{m:.2}"))
        ),
    );
}

fn row(
    tasks: usize,
    usage: &Usage,
    base: &Usage,
    previous: Option<&(usize, Usage)>,
) -> Vec<String> {
    let per_task = if tasks == 0 {
        "-".to_owned()
    } else {
        format!(
            "{:.0}",
            usage.rss_kib.saturating_sub(base.rss_kib) as f64 / tasks as f64
        )
    };
    let cpu = previous.map_or_else(
        || format!("{:.2} (since start)", usage.cpu.as_secs_f64()),
        |(_, p)| format!("{:.2}", usage.cpu.saturating_sub(p.cpu).as_secs_f64()),
    );
    vec![
        tasks.to_string(),
        format!("{:.1}", usage.rss_mib()),
        format!("{:.1}", usage.hwm_mib()),
        per_task,
        cpu,
    ]
}

/// Waits until the worker's `crawler_worker_running_tasks` is `n`; returns how long it took.
async fn running_tasks_reach(worker: &Controller, n: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let running = worker
            .metrics()
            .map(|m| Controller::metric_sum(&m, "crawler_worker_running_tasks", ""));
        if running.is_some_and(|r| (r - n as f64).abs() < 0.5) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < timeout,
            "the worker did not run {n} tasks within {timeout:?} (it says {running:?}); log {}",
            worker.log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
