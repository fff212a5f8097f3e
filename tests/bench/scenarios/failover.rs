//! Scenario 4: failover.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) async fn scenario_failover(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    let [graceful, crash, fast_graceful, fast_crash] = cfg.failover;
    let mut rows = Vec::new();
    let mut goal_rows: Vec<(String, Duration, Duration, bool)> = Vec::new();
    let mut existing_writes = 0u64;
    let mut burst_not_one = 0usize;
    let mut bursts = 0usize;
    // The cold-start leader leads now, with the default timings.
    let mut current = fleet
        .controllers
        .iter()
        .rposition(Controller::is_alive)
        .map(|i| fleet.controllers[i].identity.clone());
    let mut serial = 0usize;
    for (election, label, g, c) in [
        (Election::DEFAULTS, "default", graceful, crash),
        (Election::FAST, "fast", fast_graceful, fast_crash),
    ] {
        if g + c == 0 {
            continue;
        }
        // A leader with these timings.
        let leader = match current.take() {
            Some(id) if label == "default" => id,
            _ => {
                fleet.stop_all().await;
                serial += 1;
                let id = format!("ctl-{label}-{serial}");
                let t = Instant::now();
                fleet.start(&id, election);
                fleet.leaders.push(id.clone());
                fleet.leader_is(&id, t, Duration::from_secs(60)).await;
                // Its full pass: a probe sorted last.
                let probe = format!("zz-{id}");
                fleet.create(vec![probe.clone()], 900_001 + serial, 1).await;
                fleet
                    .all_assigned("the leader's probe", &[probe], Duration::from_secs(120))
                    .await;
                id
            }
        };
        let mut leader = leader;
        settle(fleet.pids, Duration::from_secs(60)).await;
        let warm = Duration::from_millis(2000 + cfg.resources as u64 / 5);
        serial += 1;
        let mut standby = format!("ctl-{label}-{serial}");
        fleet.start(&standby, election);
        // The standby tries the Lease every retry period from its start: a fixed warm-up would
        // send every signal at the same phase of that cycle (and measure the same case each
        // time). Spread the signals evenly over the cycle instead.
        tokio::time::sleep(warm + jitter(0, election.retry)).await;
        if label == "default" {
            let s = fleet.by_identity(&standby).usage();
            fleet.footprint.push((
                format!("standby, warm caches over {} (never led)", cfg.resources),
                s,
            ));
        }
        let mut takeover = [Samples::default(), Samples::default()];
        let mut first_write = [Samples::default(), Samples::default()];
        for (trial, signal) in std::iter::repeat_n("TERM", g)
            .chain(std::iter::repeat_n("KILL", c))
            .enumerate()
        {
            // Mid-flight: the leader is placing a burst of new resources when it is stopped.
            let burst: Vec<String> = (0..100)
                .map(|j| format!("burst-{label}-{trial}-{j:03}"))
                .collect();
            let burst_task = {
                let (client, ns, names) =
                    (fleet.client.clone(), fleet.ns().to_owned(), burst.clone());
                tokio::spawn(async move {
                    create_resources(&client, &ns, Arc::new(names), 800_000, 4).await
                })
            };
            let wanted: HashSet<&String> = burst.iter().collect();
            fleet
                .resources
                .wait_for(
                    "part of the burst to be placed",
                    Duration::from_secs(60),
                    |s| {
                        (wanted
                            .iter()
                            .filter(|n| s.objects.get(**n).is_some_and(|o| o.worker.is_some()))
                            .count()
                            >= 20)
                            .then_some(())
                    },
                    |_| String::new(),
                )
                .await;
            let versions = fleet.resources.lock().versions();
            let t0 = Instant::now();
            fleet.by_identity(&leader).signal(signal);
            let probe = format!("aa-{label}-{trial}");
            fleet.create(vec![probe.clone()], 700_000 + trial, 1).await;
            let t_probe = fleet
                .all_assigned(
                    "the failover probe",
                    std::slice::from_ref(&probe),
                    Duration::from_secs(120),
                )
                .await;
            burst_task.await.expect("creating the burst");
            fleet
                .all_assigned("the burst", &burst, Duration::from_secs(120))
                .await;
            let t_lease = fleet.leader_is(&standby, t0, Duration::from_secs(60)).await;
            fleet.leaders.push(standby.clone());
            fleet
                .by_identity(&leader)
                .wait_exit(Duration::from_secs(20))
                .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            {
                let s = fleet.resources.lock();
                for (name, before) in &versions {
                    if wanted.contains(name) {
                        continue;
                    }
                    if s.objects
                        .get(name)
                        .is_some_and(|o| o.resource_version != *before)
                    {
                        existing_writes += 1;
                    }
                }
                for b in &burst {
                    if s.objects.get(b).map_or(0, |o| o.writes) != 1 {
                        burst_not_one += 1;
                    }
                }
                bursts += burst.len();
            }
            let k = usize::from(signal == "KILL");
            takeover[k].push(t_lease.duration_since(t0));
            first_write[k].push(t_probe.duration_since(t0));
            println!(
                "bench: failover {label} SIG{signal}: Lease taken after {:?}, probe placed after {:?}",
                t_lease.duration_since(t0),
                t_probe.duration_since(t0)
            );
            // The next standby.
            leader = standby;
            serial += 1;
            standby = format!("ctl-{label}-{serial}");
            fleet.start(&standby, election);
            tokio::time::sleep(warm + jitter(trial + 1, election.retry)).await;
        }
        for (k, signal) in ["SIGTERM", "SIGKILL"].iter().enumerate() {
            if takeover[k].is_empty() {
                continue;
            }
            let (t, w) = (takeover[k].summary(), first_write[k].summary());
            let bound = if k == 0 {
                Duration::from_secs(1)
            } else {
                election.lease + election.retry + Duration::from_secs(1)
            };
            rows.push(vec![
                format!("{signal}, {label} timings ({})", election.describe()),
                t.count.to_string(),
                format!("{} / {} / {}", secs(t.p50), secs(t.p90), secs(t.max)),
                format!("{} / {} / {}", secs(w.p50), secs(w.p90), secs(w.max)),
                format!("{} s", secs(bound)),
            ]);
            goal_rows.push((
                format!("{signal} ({label} timings)"),
                w.max,
                bound,
                w.max <= bound,
            ));
        }
        current = Some(leader);
    }
    // Zero writes from two leaders at once: (1) every `Assigned` Event names the replica that
    // wrote (reportingInstance) and the resource; this process's watch saw the resourceVersion of
    // that resource's first write (etcd's revision, a global order). Sorted by it, each leader's
    // writes must form one run. (2) Every write is logged with a timestamp: an old leader's last
    // write must precede its successor's "leading" line.
    let events: Vec<Event> = Api::<Event>::namespaced(fleet.client.clone(), fleet.ns())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut by_rv: Vec<(u64, String)> = {
        let s = fleet.resources.lock();
        events
            .iter()
            .filter(|e| e.reporting_controller.as_deref() == Some(FIELD_MANAGER))
            .filter(|e| e.reason.as_deref() == Some("Assigned"))
            .filter_map(|e| {
                let name = e.regarding.as_ref()?.name.as_ref()?;
                Some((
                    s.objects.get(name)?.first_write?,
                    e.reporting_instance.clone()?,
                ))
            })
            .collect()
    };
    by_rv.sort_unstable();
    let mut runs: Vec<&str> = Vec::new();
    for (_, instance) in &by_rv {
        if runs.last() != Some(&instance.as_str()) {
            runs.push(instance);
        }
    }
    let distinct: HashSet<&str> = runs.iter().copied().collect();
    let interleavings = runs.len() - distinct.len();
    let mut log_overlaps = 0;
    for pair in fleet.leaders.windows(2) {
        let (old, new) = (fleet.by_identity(&pair[0]), fleet.by_identity(&pair[1]));
        let last_old = old
            .log_lines()
            .iter()
            .filter(|l| l.is_assignment())
            .map(|l| l.at)
            .max();
        let lead_new = new
            .log_lines()
            .iter()
            .find(|l| l.message.starts_with("leading: full pass"))
            .map(|l| l.at);
        if let (Some(a), Some(b)) = (last_old, lead_new)
            && a >= b
        {
            log_overlaps += 1;
            println!(
                "bench: OVERLAP: {} wrote at {a} after {} led at {b}",
                pair[0], pair[1]
            );
        }
    }
    report.section(
        "4. Leader failover with a warm standby, mid-flight",
        format!(
            "Each trial: the leader is placing a burst of 100 new resources when it gets the signal; right after the signal a probe resource (named to sort first in the new leader's full pass) is created. *Lease* is when this process's watch saw the standby's name in the Lease; *first write* is when it saw the probe placed, both from the signal. The goal column is lease duration + retry period + 1 s for SIGKILL, 1 s for SIGTERM.\n\n{}\nChecks over all trials: status writes to resources that existed before a trial: **{existing_writes}** (goal 0); burst resources written other than exactly once: **{burst_not_one}** of {bursts}.\n\nNo two leaders wrote at once: {} `Assigned` Events (each names the writing replica), sorted by the resourceVersion of the write they report as this process's watch saw it (etcd's global order), form {} runs for {} replicas: **{interleavings} interleavings**; by the logs, writes of an old leader after its successor started leading: **{log_overlaps}** over {} handovers.\n",
            table(&["signal", "trials", "Lease taken s (p50 / p90 / max)", "first write s (p50 / p90 / max)", "goal"], rows),
            by_rv.len(),
            runs.len(),
            distinct.len(),
            fleet.leaders.len().saturating_sub(1),
        ),
    );
    for (what, measured, bound, met) in goal_rows {
        let goal = if what.starts_with("SIGTERM") {
            "graceful failover <= 1 s"
        } else {
            "crash failover <= lease + retry + 1 s"
        };
        report.goal(
            &format!("{goal}: {what}"),
            format!("max {} s (bound {} s)", secs(measured), secs(bound)),
            Some(met),
        );
    }
    report.goal("0 writes on leader change (existing resources)", format!("{existing_writes}; burst written != 1 time: {burst_not_one}; interleaved leaders: {interleavings} (Events), {log_overlaps} (logs)"), Some(existing_writes == 0 && burst_not_one == 0 && interleavings == 0 && log_overlaps == 0));
}

/// A reproducible, evenly spread offset in `[0, period)` for trial `k` (golden-ratio sequence).
pub(crate) fn jitter(k: usize, period: Duration) -> Duration {
    let frac = (k as f64 * 0.618_033_988_749_895).fract();
    period.mul_f64(frac)
}
