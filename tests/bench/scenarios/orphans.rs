//! Scenario 3: orphans.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) async fn scenario_orphans(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    let mut rows = Vec::new();
    let mut all = Samples::default();
    for (kind, trials) in [
        ("Pod deleted", 0..cfg.orphan_trials),
        ("Pod NotReady", cfg.orphan_trials..2 * cfg.orphan_trials),
    ] {
        let mut samples = Samples::default();
        let mut from_request = Samples::default();
        let mut totals = Samples::default();
        let mut extra_writes = 0;
        let mut moved = 0;
        for t in trials {
            let worker = format!("worker-{t:03}");
            let (holders, writes_before): (Vec<String>, HashMap<String, u32>) = {
                let s = fleet.resources.lock();
                let holders: Vec<String> = s
                    .objects
                    .iter()
                    .filter(|(_, o)| o.worker.as_deref() == Some(&worker))
                    .map(|(n, _)| n.clone())
                    .collect();
                let writes = holders
                    .iter()
                    .map(|h| (h.clone(), s.objects[h].writes))
                    .collect();
                (holders, writes)
            };
            // Each trial on a quiet API server (the Events of the previous one published).
            settle(fleet.pids, Duration::from_secs(60)).await;
            let t_req = Instant::now();
            let change = if kind == "Pod deleted" {
                pods::delete_pod(&fleet.client, fleet.ns(), &worker).await;
                // The first event of a delete is the Pod turning terminating; the controller
                // acts on that one.
                vec![PodChange::Terminating, PodChange::Deleted]
            } else {
                pods::set_pod_ready(&fleet.client, fleet.ns(), &worker, false, None).await;
                vec![PodChange::Ready(false)]
            };
            let wanted: HashSet<&String> = holders.iter().collect();
            let done = fleet
                .resources
                .wait_for(
                    &format!("{worker}'s resources to move"),
                    Duration::from_secs(60),
                    |s| {
                        wanted
                            .iter()
                            .all(|n| {
                                s.objects.get(*n).is_some_and(|o| {
                                    o.worker.is_some() && o.worker.as_deref() != Some(&worker)
                                })
                            })
                            .then_some(())
                    },
                    |s| {
                        format!(
                            "{} of {} moved",
                            wanted
                                .iter()
                                .filter(|n| s
                                    .objects
                                    .get(**n)
                                    .is_some_and(|o| o.worker.as_deref() != Some(&worker)))
                                .count(),
                            wanted.len()
                        )
                    },
                )
                .await;
            let () = done;
            let t_event = fleet
                .pods
                .wait_for(
                    "the Pod event",
                    Duration::from_secs(10),
                    |p| p.seen(&worker, &change, t_req),
                    |_| String::new(),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let s = fleet.resources.lock();
            let mut last = t_event;
            for h in &holders {
                if let Some(a) = s
                    .assignments
                    .iter()
                    .find(|a| &a.name == h && a.at >= t_req && a.from.as_deref() == Some(&worker))
                {
                    samples.push(a.at.saturating_duration_since(t_event));
                    from_request.push(a.at.saturating_duration_since(t_req));
                    last = last.max(a.at);
                }
                extra_writes += (s.objects[h].writes - writes_before[h]).saturating_sub(1);
            }
            moved += holders.len();
            totals.push(last.duration_since(t_event));
            println!(
                "bench: orphans: {kind} {worker}: {} moved, last after {:?} (request -> watch event {:?})",
                holders.len(),
                last.duration_since(t_event),
                t_event.duration_since(t_req)
            );
        }
        let sum = samples.summary();
        let req = from_request.summary();
        let tot = totals.summary();
        rows.push(vec![
            kind.to_owned(),
            cfg.orphan_trials.to_string(),
            moved.to_string(),
            ms(sum.p50),
            ms(sum.p90),
            ms(sum.p99),
            ms(sum.max),
            format!("{} / {}", ms(tot.p50), ms(tot.max)),
            format!("{} / {}", ms(req.p50), ms(req.p99)),
            extra_writes.to_string(),
        ]);
        all.extend(&samples);
    }
    let sum = all.summary();
    report.section(
        "3. Orphans: a worker holding ~N/workers resources goes away",
        format!(
            "While the bulk leader runs: each trial takes a worker holding about {} resources and deletes its Pod (grace 0) or sets its Ready condition False. Each trial starts on a quiet API server. Latency per resource: from this process's watch event of the Pod change (for a delete, its first one: the Pod turning terminating, which is what the controller acts on) to its watch event of the resource's new status (the goal's measure); the column *from the request* starts when the DELETE / status PATCH was sent instead, so it includes the API server's write and watch fan-out of the Pod change.\n\n{}\nA worker heartbeat expiring is not measured here yet: the worker process (issue 4) landed during this work; its expiry is bound by the heartbeat duration by design.\n",
            cfg.resources / cfg.workers.max(1),
            table(&["trigger", "trials", "resources moved", "p50 ms", "p90 ms", "p99 ms", "max ms", "last of a trial p50 / max ms", "from the request p50 / p99 ms", "extra writes"], rows)
        ),
    );
    report.goal(
        "orphans reassigned within 250 ms (p99)",
        format!(
            "p99 {} ms, max {} ms over {} resources",
            ms(sum.p99),
            ms(sum.max),
            sum.count
        ),
        Some(sum.count > 0 && sum.p99 <= Duration::from_millis(250)),
    );
}
