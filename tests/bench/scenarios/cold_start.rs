//! Scenario 5: cold start.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) async fn scenario_cold_start(fleet: &mut Fleet, cfg: &Config, report: &mut Report) {
    // Stop everything that runs (a graceful stop releases the Lease: the new leader may take it at
    // once, as in a rolling update).
    fleet.stop_all().await;
    settle(fleet.pids, Duration::from_secs(60)).await;
    let versions_before = fleet.resources.lock().versions();
    let writes_before = fleet.resources.lock().writes;
    let t0 = Instant::now();
    let idx = fleet.start("ctl-cold", Election::DEFAULTS);
    fleet.leaders.push("ctl-cold".to_owned());
    let t_lease = fleet
        .leader_is("ctl-cold", t0, Duration::from_secs(60))
        .await;
    let probe = "zz-cold-probe".to_owned();
    fleet.create(vec![probe.clone()], 900_000, 1).await;
    let t_probe = fleet
        .all_assigned(
            "the cold-start probe",
            std::slice::from_ref(&probe),
            Duration::from_secs(120),
        )
        .await;
    let usage_ready = fleet.controllers[idx].usage();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let usage = fleet.controllers[idx].usage();
    let logs = fleet.controllers[idx].log_lines();
    let t_pass = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .map(|l| fleet.clock.instant_of(l.at));
    let listed = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .and_then(|l| l.fields["resources"].as_u64());
    // Writes to the resources that existed: from the watch, and from a fresh list.
    let (watch_writes, changed_by_list) = {
        let s = fleet.resources.lock();
        let probe_writes = s.objects.get(&probe).map_or(0, |o| u64::from(o.writes));
        let watch = s.writes - writes_before - probe_writes;
        (watch, 0)
    };
    let listed_now: HashMap<String, u64> =
        Api::<CrawlerResource>::namespaced(fleet.client.clone(), fleet.ns())
            .list(&ListParams::default())
            .await
            .map(|l| {
                l.items
                    .iter()
                    .map(|r| (r.name_any(), observe::resource_version(&r.metadata)))
                    .collect()
            })
            .unwrap_or_default();
    let changed = versions_before
        .iter()
        .filter(|(n, v)| listed_now.get(*n).is_some_and(|now| now != *v))
        .count()
        + changed_by_list;
    let since = |t: Option<Instant>| {
        t.map_or_else(|| "-".to_owned(), |t| secs(t.saturating_duration_since(t0)))
    };
    fleet.footprint.push((
        format!(
            "new leader after its full pass over {} (cold start)",
            versions_before.len()
        ),
        usage,
    ));
    report.section(
        &format!("5. Cold start: a new leader over {} well-placed resources", versions_before.len()),
        format!(
            "All controllers stopped (SIGTERM: the Lease is released), then a fresh process starts. A probe resource named to sort last (`{probe}`) is created as soon as it holds the Lease; the full pass queues keys in name order, so the probe's placement marks the end of the pass.\n\n{}",
            table(&["", "value"], vec![
                vec!["process start -> Lease held".into(), format!("{} s", since(Some(t_lease)))],
                vec!["process start -> both watches listed, full pass queued (log)".into(), format!("{} s ({} resources)", since(t_pass), listed.map_or_else(|| "-".to_owned(), |l| l.to_string()))],
                vec!["process start -> probe placed (ready: pass done)".into(), format!("**{} s**", since(Some(t_probe)))],
                vec!["status writes to the existing resources (watch / list compare)".into(), format!("**{watch_writes} / {changed}**")],
                vec!["CPU at ready / RSS / peak RSS".into(), format!("{:.2} s / {:.1} MiB / {:.1} MiB", usage_ready.cpu.as_secs_f64(), usage.rss_mib(), usage.hwm_mib())],
            ])
        ),
    );
    report.goal(
        "0 status writes on cold start",
        format!(
            "{watch_writes} (watch), {changed} (list compare) of {}",
            versions_before.len()
        ),
        Some(watch_writes == 0 && changed == 0),
    );
    let _ = cfg;
}
