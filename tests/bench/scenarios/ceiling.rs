//! Scenario 1: ceiling.

#[allow(clippy::wildcard_imports)]
use crate::*;

#[derive(Clone, Copy)]
pub(crate) struct Ceiling {
    pub(crate) rate: f64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WriteKind {
    Ssa,
    Merge,
    /// PUT of the whole object to `/status` (an Update).
    Replace,
    /// `Ssa` while a second client watches the namespace, as the controller does.
    SsaSecondWatch,
}

impl WriteKind {
    pub(crate) fn short(self) -> &'static str {
        match self {
            WriteKind::Ssa => "SSA",
            WriteKind::Merge => "merge",
            WriteKind::Replace => "PUT",
            WriteKind::SsaSecondWatch => "SSA + 2nd watch",
        }
    }
}

pub(crate) async fn scenario_ceiling(
    cp: &ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
) -> Ceiling {
    let client = cp.client();
    let ns = cp.namespace("ceiling").await;
    let n = cfg.resources;
    let names: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("r-{i:06}")).collect());
    let (observer, create_time) =
        created_and_seen(&client, ns.name(), &names, "the ceiling resources").await;
    println!("bench: created {n} resources in {create_time:.1?}");

    let small = (n / 5).max(1);
    let passes = [
        (
            WriteKind::Ssa,
            cfg.concurrency,
            n,
            "fresh objects: the controller's first write",
        ),
        (WriteKind::Ssa, 1, small, "status rewritten"),
        (WriteKind::Ssa, cfg.concurrency, n, "status rewritten"),
        (WriteKind::Ssa, 64, n, "status rewritten"),
        (WriteKind::Merge, cfg.concurrency, n, "status rewritten"),
        (WriteKind::Replace, cfg.concurrency, n, "status rewritten"),
        (
            WriteKind::SsaSecondWatch,
            cfg.concurrency,
            n,
            "fresh objects (a second set), watched twice",
        ),
    ];
    // The last pass: fresh objects again, in a second namespace, with one more watch of it (the
    // one a controller keeps), to measure what that watch costs the API server per write.
    let ns2 = cp.namespace("ceiling-watched").await;
    let (observer2, _) =
        created_and_seen(&client, ns2.name(), &names, "the second ceiling set").await;
    let mut rows = Vec::new();
    let mut ceiling = Ceiling { rate: 0.0 };
    for (pass, (kind, concurrency, count, note)) in passes.into_iter().enumerate() {
        let (ns_name, observer) = if kind == WriteKind::SsaSecondWatch {
            (ns2.name(), &observer2)
        } else {
            (ns.name(), &observer)
        };
        let versions = Arc::new(observer.lock().versions());
        let writes_before = observer.lock().writes;
        let api: Api<CrawlerResource> = Api::namespaced(client.clone(), ns_name);
        let second_watch = (kind == WriteKind::SsaSecondWatch).then(|| {
            let stream = watcher(api.clone(), watch_config());
            tokio::spawn(async move {
                use futures::StreamExt;
                stream.for_each(|_| async {}).await;
            })
        });
        let errors = Arc::new(AtomicUsize::new(0));
        let workers = cfg.workers;
        settle(pids, Duration::from_secs(60)).await;
        let cpu_before = CpuSnapshot::take(pids);
        let started = Instant::now();
        let latencies = {
            let (names, errors) = (Arc::clone(&names), Arc::clone(&errors));
            pool(count, concurrency, move |i| {
                let (api, names, versions, errors) = (
                    api.clone(),
                    Arc::clone(&names),
                    Arc::clone(&versions),
                    Arc::clone(&errors),
                );
                async move {
                    let name = &names[i];
                    let rv = versions[name].to_string();
                    let status = assigned_status(i % workers, i / workers, pass + 1);
                    let result = match kind {
                        WriteKind::Ssa | WriteKind::SsaSecondWatch => {
                            let body = json!({
                                "apiVersion": "crawler.dev/v1alpha1",
                                "kind": "CrawlerResource",
                                "metadata": { "name": name, "resourceVersion": rv },
                                "status": status,
                            });
                            api.patch_status(
                                name,
                                &PatchParams::apply(FIELD_MANAGER).force(),
                                &Patch::Apply(&body),
                            )
                            .await
                        }
                        WriteKind::Merge => {
                            let body =
                                json!({ "metadata": { "resourceVersion": rv }, "status": status });
                            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
                                .await
                        }
                        WriteKind::Replace => {
                            let mut body: serde_json::Value =
                                serde_json::to_value(resource_body(name, i))
                                    .expect("a resource as JSON");
                            body["metadata"]["resourceVersion"] = json!(rv);
                            body["status"] = status;
                            let body: CrawlerResource =
                                serde_json::from_value(body).expect("a resource");
                            api.replace_status(name, &PostParams::default(), &body)
                                .await
                        }
                    };
                    if let Err(e) = result
                        && errors.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("bench: ceiling write of {name} failed: {e}");
                    }
                }
            })
            .await
        };
        let client_elapsed = started.elapsed();
        let ok = count - errors.load(Ordering::Relaxed);
        if let Some(task) = second_watch {
            task.abort();
        }
        let seen_at = observer
            .wait_for(
                "the ceiling writes to be seen",
                Duration::from_secs(120),
                |s| (s.writes >= writes_before + ok as u64).then(Instant::now),
                |s| format!("{} of {ok} seen", s.writes - writes_before),
            )
            .await;
        let cpu = CpuSnapshot::take(pids).since(&cpu_before);
        let rate = per_sec(ok, client_elapsed);
        let sum = latencies.summary();
        let label = match kind {
            WriteKind::Ssa => "server-side apply + resourceVersion (the controller's write)",
            WriteKind::Merge => "merge patch + resourceVersion",
            WriteKind::Replace => "update (PUT /status of the whole object, resourceVersion)",
            WriteKind::SsaSecondWatch => {
                "server-side apply + resourceVersion, a second client watching (as the controller does)"
            }
        };
        if pass == 0 {
            ceiling.rate = rate;
        }
        cpu_rows.push(cpu_row(
            &format!(
                "1. ceiling: {} x{concurrency}{}",
                kind.short(),
                if note.starts_with("fresh") {
                    ", fresh"
                } else {
                    ""
                }
            ),
            ok,
            &cpu,
            None,
        ));
        rows.push(vec![
            label.to_owned(),
            concurrency.to_string(),
            note.to_owned(),
            ok.to_string(),
            errors.load(Ordering::Relaxed).to_string(),
            format!("**{rate:.0}**"),
            format!("{:.0}", per_sec(ok, seen_at.duration_since(started))),
            ms(sum.p50),
            ms(sum.p90),
            ms(sum.p99),
            ms(sum.max),
        ]);
    }
    report.section(
        "1. Ceiling C_raw: status writes with no operator logic",
        format!(
            "{} CrawlerResources created first ({:.0}/s at 32 in flight: {create_time:.1?}); then each pass writes the status the controller would write (same fields, same sizes, `resourceVersion` fence) from this process, `concurrency` requests in flight, one kube::Client (the controller's HTTP stack). The benchmark also watches the namespace, as it does during the bulk run. The last row repeats the first on a second set of fresh objects while a second client also watches their namespace, as the controller does: the difference is what the controller's own watch costs the API server.\n\n{}\n**C_raw = {:.0} writes/s** (first row: fresh objects at the controller's concurrency) is what the bulk run is compared with.\n",
            n,
            per_sec(n, create_time),
            table(
                &["write", "in flight", "objects", "writes", "errors", "writes/s (responses)", "writes/s (until seen in watch)", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                rows
            ),
            ceiling.rate
        ),
    );
    drop(observer);
    drop(observer2);
    // Keep the objects: deleting 10k of them costs API time later.
    std::mem::forget(ns);
    std::mem::forget(ns2);
    ceiling
}
