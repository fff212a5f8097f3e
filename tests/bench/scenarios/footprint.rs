//! Scenario 6: footprint.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) fn footprint_section(fleet: &Fleet, cfg: &Config, report: &mut Report) {
    let rows: Vec<Vec<String>> = fleet
        .footprint
        .iter()
        .map(|(what, u)| {
            vec![
                what.clone(),
                mib(u.rss_kib),
                mib(u.hwm_kib),
                format!("{:.2}", u.cpu.as_secs_f64()),
            ]
        })
        .collect();
    let bulk = fleet
        .footprint
        .iter()
        .filter(|(w, _)| !w.starts_with("standby"))
        .map(|(_, u)| u.hwm_kib)
        .max()
        .unwrap_or(0);
    report.section(
        "6. Footprint of the controller (from /proc/<pid>/status and /stat)",
        format!(
            "{}\nThe worker's footprint per running task is in 6c.\n",
            table(
                &[
                    "process",
                    "VmRSS MiB",
                    "VmHWM (peak) MiB",
                    "CPU s since start"
                ],
                rows
            )
        ),
    );
    report.goal(
        &format!("controller RSS <= 64 MiB at {}", cfg.resources),
        format!("peak {} MiB (leaders)", mib(bulk)),
        Some(bulk > 0 && bulk <= 64 * 1024),
    );
}

pub(crate) async fn scenario_large(
    cp: &ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
) {
    let client = cp.client();
    let ns = cp.namespace("large").await;
    let n = cfg.large;
    create_workers(&client, ns.name(), cfg.workers).await;
    let names: Vec<String> = (0..n).map(|i| format!("r-{i:07}")).collect();
    let create_time = create_resources(&client, ns.name(), Arc::new(names.clone()), 0, 32).await;
    println!("bench: large: {n} created in {create_time:.1?}");
    let observer = resource_observer(&client, ns.name());
    observer
        .wait_for(
            "the large set to be seen",
            Duration::from_secs(600),
            |s| (s.synced && s.objects.len() >= n).then_some(()),
            |s| format!("{} seen", s.objects.len()),
        )
        .await;
    settle(pids, Duration::from_secs(120)).await;
    let cpu_before = CpuSnapshot::take(pids);
    let t0 = Instant::now();
    let c = Controller::start(
        cp,
        ns.name(),
        "ctl-large",
        cfg.concurrency,
        Election::DEFAULTS,
        cp.kubeconfig_path(),
    );
    observer
        .wait_for(
            "the large set to be assigned",
            Duration::from_secs((n as u64 / 20).max(300)),
            |s| (s.assigned() >= n).then_some(()),
            |s| format!("{} assigned", s.assigned()),
        )
        .await;
    let elapsed = t0.elapsed();
    let usage = c.usage();
    let cpu = CpuSnapshot::take(pids).since(&cpu_before);
    let (first, last) = {
        let s = observer.lock();
        (
            s.assignments.iter().map(|a| a.at).min(),
            s.assignments.iter().map(|a| a.at).max(),
        )
    };
    let rate = match (first, last) {
        (Some(f), Some(l)) => per_sec(n - 1, l.duration_since(f)),
        _ => 0.0,
    };
    cpu_rows.push(cpu_row(
        &format!("6. large: controller placing {n}"),
        n,
        &cpu,
        Some(usage.cpu),
    ));
    c.stop().await;
    report.section(
        &format!("6b. Large: {n} resources over {} workers", cfg.workers),
        table(
            &["", "value"],
            vec![
                vec![
                    "created in".into(),
                    format!("{create_time:.1?} ({:.0}/s)", per_sec(n, create_time)),
                ],
                vec![
                    "process start -> all assigned".into(),
                    format!("{} s", secs(elapsed)),
                ],
                vec!["assignments/s (first -> last)".into(), format!("{rate:.0}")],
                vec![
                    "controller RSS / peak RSS / CPU".into(),
                    format!(
                        "{} MiB / {} MiB / {:.2} s",
                        mib(usage.rss_kib),
                        mib(usage.hwm_kib),
                        usage.cpu.as_secs_f64()
                    ),
                ],
            ],
        ),
    );
    std::mem::forget(ns);
}
