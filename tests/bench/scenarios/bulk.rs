//! Scenario 2: bulk.

#[allow(clippy::wildcard_imports)]
use crate::*;

/// The bulk namespace and everything running against it, for the scenarios that follow it.
pub(crate) struct Fleet {
    pub(crate) cp: &'static ControlPlane,
    pub(crate) client: Client,
    pub(crate) ns: TestNamespace,
    pub(crate) resources: Observer<Resources>,
    pub(crate) pods: Observer<Pods>,
    pub(crate) leases: Observer<Leases>,
    pub(crate) controllers: Vec<Controller>,
    pub(crate) concurrency: usize,
    pub(crate) clock: Clock,
    /// Usage snapshots for the footprint table: (what, usage).
    pub(crate) footprint: Vec<(String, Usage)>,
    /// Leaders in order of their terms, for the overlap check.
    pub(crate) leaders: Vec<String>,
    /// Assignments/s of the bulk run (first -> last).
    pub(crate) bulk_rate: f64,
    /// The controllers' kubeconfig.
    pub(crate) kubeconfig: std::path::PathBuf,
    pub(crate) pids: ServerPids,
}

impl Fleet {
    pub(crate) fn ns(&self) -> &str {
        self.ns.name()
    }

    pub(crate) fn start(&mut self, identity: &str, election: Election) -> usize {
        let c = Controller::start(
            self.cp,
            self.ns.name(),
            identity,
            self.concurrency,
            election,
            &self.kubeconfig,
        );
        println!("bench: started controller {identity} (pid {})", c.pid());
        self.controllers.push(c);
        self.controllers.len() - 1
    }

    pub(crate) fn by_identity(&self, identity: &str) -> &Controller {
        self.controllers
            .iter()
            .find(|c| c.identity == identity)
            .expect("a controller we started")
    }

    pub(crate) async fn stop_all(&self) {
        for c in &self.controllers {
            c.stop().await;
        }
    }

    pub(crate) async fn create(
        &self,
        names: Vec<String>,
        offset: usize,
        concurrency: usize,
    ) -> Duration {
        create_resources(
            &self.client,
            self.ns(),
            Arc::new(names),
            offset,
            concurrency,
        )
        .await
    }

    /// Waits until every name in `names` is assigned; returns when the last one was seen.
    pub(crate) async fn all_assigned(
        &self,
        what: &str,
        names: &[String],
        timeout: Duration,
    ) -> Instant {
        let wanted: HashSet<&String> = names.iter().collect();
        self.resources
            .wait_for(
                what,
                timeout,
                |s| {
                    let done = wanted
                        .iter()
                        .all(|n| s.objects.get(*n).is_some_and(|o| o.worker.is_some()));
                    done.then(|| {
                        s.assignments
                            .iter()
                            .rev()
                            .find(|a| wanted.contains(&a.name))
                            .map_or_else(Instant::now, |a| a.at)
                    })
                },
                |s| {
                    format!(
                        "{} of {} assigned",
                        wanted
                            .iter()
                            .filter(|n| s.objects.get(**n).is_some_and(|o| o.worker.is_some()))
                            .count(),
                        wanted.len()
                    )
                },
            )
            .await
    }

    pub(crate) async fn leader_is(
        &self,
        identity: &str,
        since: Instant,
        timeout: Duration,
    ) -> Instant {
        self.leases
            .wait_for(
                &format!("{identity} to hold the Lease"),
                timeout,
                |l| l.acquired(identity, since),
                |l| format!("holder {:?}", l.holder()),
            )
            .await
    }
}

pub(crate) async fn scenario_bulk(
    cp: &'static ControlPlane,
    cfg: &Config,
    pids: ServerPids,
    c_raw: Option<Ceiling>,
    report: &mut Report,
    cpu_rows: &mut Vec<Vec<String>>,
    as_user: BulkAs<'_>,
) -> Fleet {
    let client = cp.client();
    let variant = !matches!(as_user, BulkAs::Admin);
    let ns = cp.namespace(as_user.prefix()).await;
    let n = cfg.resources;
    create_workers(&client, ns.name(), cfg.workers).await;
    let names: Vec<String> = (0..n).map(|i| format!("r-{i:06}")).collect();
    let create_time = create_resources(&client, ns.name(), Arc::new(names.clone()), 0, 32).await;
    println!("bench: bulk: {n} resources created in {create_time:.1?}");
    let kubeconfig = match as_user {
        BulkAs::Admin => cp.kubeconfig_path().to_path_buf(),
        BulkAs::NoEvents(path) => path.to_path_buf(),
        BulkAs::ServiceAccount { fence } => fenced_identity(cp, ns.name(), fence).await,
    };
    let mut fleet = Fleet {
        cp,
        resources: resource_observer(&client, ns.name()),
        pods: pod_observer(&client, ns.name()),
        leases: lease_observer(&client, ns.name()),
        client,
        ns,
        controllers: Vec::new(),
        concurrency: cfg.concurrency,
        clock: Clock::now(),
        footprint: Vec::new(),
        leaders: Vec::new(),
        bulk_rate: 0.0,
        pids,
        kubeconfig,
    };
    fleet
        .resources
        .wait_for(
            "the bulk resources to be seen",
            Duration::from_secs(120),
            |s| (s.synced && s.objects.len() >= n).then_some(()),
            |s| format!("{} seen", s.objects.len()),
        )
        .await;
    fleet
        .pods
        .wait_for(
            "the worker Pods to be seen",
            Duration::from_secs(30),
            |s| s.synced.then_some(()),
            |_| String::new(),
        )
        .await;

    settle(pids, Duration::from_secs(60)).await;
    let cpu_before = CpuSnapshot::take(pids);
    let t_start = Instant::now();
    let identity = as_user.identity();
    let leader = fleet.start(identity, Election::DEFAULTS);
    fleet.leaders.push(identity.to_owned());
    let timeout = Duration::from_secs((n as u64 / 20).max(120));
    let t_all = fleet
        .all_assigned("the bulk resources to be assigned", &names, timeout)
        .await;
    let cpu = CpuSnapshot::take(pids).since(&cpu_before);
    let usage = fleet.controllers[leader].usage();
    let t_lease = fleet.leases.lock().acquired(identity, t_start);
    // Let late duplicate writes (if any) show before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (times, writes_hist, total_writes, loads) = {
        let s = fleet.resources.lock();
        let wanted: HashSet<&String> = names.iter().collect();
        let mut first: HashMap<&str, Instant> = HashMap::new();
        for a in &s.assignments {
            if wanted.contains(&a.name) {
                first.entry(a.name.as_str()).or_insert(a.at);
            }
        }
        let times: Vec<Instant> = first.values().copied().collect();
        let mut hist: BTreeMap<u32, usize> = BTreeMap::new();
        let mut total = 0u64;
        for name in &names {
            let w = s.objects.get(name).map_or(0, |o| o.writes);
            *hist.entry(w).or_default() += 1;
            total += u64::from(w);
        }
        (times, hist, total, s.loads())
    };
    let t_first = times.iter().min().copied().unwrap_or(t_all);
    let assigned = times.len();
    let span = t_all.duration_since(t_first);
    let rate = per_sec(assigned.saturating_sub(1), span);
    let rate_from_start = per_sec(assigned, t_all.duration_since(t_start));
    let buckets = stats::bucket_rates(&times);
    let mut full: Vec<usize> = if buckets.len() > 2 {
        buckets[1..buckets.len() - 1].to_vec()
    } else {
        buckets.clone()
    };
    full.sort_unstable();
    let pct = |p: f64| {
        full.get(((p / 100.0) * full.len() as f64) as usize)
            .copied()
            .unwrap_or(0)
    };

    let logs = fleet.controllers[leader].log_lines();
    let metrics = fleet.controllers[leader].metrics();
    let conflicts = logs.iter().filter(|l| l.message == "conflict").count();
    let failed = logs
        .iter()
        .filter(|l| l.message == "reconcile failed")
        .count();
    let write_logs = logs.iter().filter(|l| l.is_assignment()).count();
    let leading_log = logs
        .iter()
        .find(|l| l.message.starts_with("leading: full pass"))
        .map(|l| fleet.clock.instant_of(l.at));
    let events: Vec<Event> = Api::<Event>::namespaced(fleet.client.clone(), fleet.ns())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let assigned_events = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Assigned"))
        .count();

    let all_workers: Vec<usize> = (0..cfg.workers)
        .map(|i| loads.get(&format!("worker-{i:03}")).copied().unwrap_or(0))
        .collect();
    let spread = all_workers.iter().max().unwrap_or(&0) - all_workers.iter().min().unwrap_or(&0);
    let exactly_one = writes_hist.get(&1).copied().unwrap_or(0);
    let writes_per = total_writes as f64 / n as f64;

    let ratio = c_raw.map(|c| rate / c.rate);
    fleet.bulk_rate = rate;
    cpu_rows.push(cpu_row(
        as_user.cpu_label(),
        assigned,
        &cpu,
        Some(usage.cpu),
    ));
    fleet.footprint.push((
        format!("leader after placing {n} ({})", as_user.footprint_label()),
        usage,
    ));

    let hist_text = writes_hist
        .iter()
        .map(|(w, c)| format!("{c} with {w}"))
        .collect::<Vec<_>>()
        .join(", ");
    let since =
        |t: Option<Instant>| t.map_or_else(|| "-".to_owned(), |t| secs(t.duration_since(t_start)));
    let rows = vec![
        vec![
            "resources / ready workers".into(),
            format!("{n} / {}", cfg.workers),
        ],
        vec![
            "created before the controller started".into(),
            format!(
                "in {create_time:.1?} ({:.0}/s at 32 in flight)",
                per_sec(n, create_time)
            ),
        ],
        vec![
            "process start -> Lease held (watch)".into(),
            format!("{} s", since(t_lease)),
        ],
        vec![
            "process start -> \"leading: full pass\" logged (both watches listed)".into(),
            format!("{} s", since(leading_log)),
        ],
        vec![
            "process start -> first assignment seen".into(),
            format!("{} s", since(Some(t_first))),
        ],
        vec![
            "process start -> all assigned".into(),
            format!("**{} s**", secs(t_all.duration_since(t_start))),
        ],
        vec![
            "assignments/s, first -> last assignment".into(),
            format!("**{rate:.0}**"),
        ],
        vec![
            "assignments/s, process start -> last".into(),
            format!("{rate_from_start:.0}"),
        ],
        vec![
            "assignments/s per 1 s bucket (p10 / p50 / p90, full buckets)".into(),
            format!("{} / {} / {}", pct(10.0), pct(50.0), pct(90.0)),
        ],
        vec![
            "ratio to C_raw (same concurrency, same run)".into(),
            ratio.map_or_else(|| "-".to_owned(), |r| format!("**{r:.2}**")),
        ],
        vec![
            "status writes per resource (resourceVersion changes seen by a watch)".into(),
            format!("{writes_per:.3} ({hist_text})"),
        ],
        vec![
            "409 Conflicts (controller log, debug)".into(),
            conflicts.to_string(),
        ],
        vec![
            "failed reconciles (controller log)".into(),
            failed.to_string(),
        ],
        vec![
            "assignment writes logged by the controller".into(),
            write_logs.to_string(),
        ],
        vec![
            "controller /metrics: status writes ok / conflict / error / timeout".into(),
            metrics.as_deref().map_or_else(
                || "-".to_owned(),
                |m| {
                    ["\"ok\"", "\"conflict\"", "\"error\"", "\"timeout\""]
                        .map(|r| {
                            Controller::metric_sum(m, "crawler_controller_status_writes_total", r)
                                .to_string()
                        })
                        .join(" / ")
                },
            ),
        ],
        vec![
            "controller /metrics: reconciles, mean reconcile time (decision + write)".into(),
            metrics.as_deref().map_or_else(
                || "-".to_owned(),
                |m| {
                    let count = Controller::metric_sum(
                        m,
                        "crawler_controller_reconcile_duration_seconds_count",
                        "",
                    );
                    let sum = Controller::metric_sum(
                        m,
                        "crawler_controller_reconcile_duration_seconds_sum",
                        "",
                    );
                    format!(
                        "{count} reconciles, {:.1} ms mean",
                        if count > 0.0 { sum / count * 1e3 } else { 0.0 }
                    )
                },
            ),
        ],
        vec![
            "`Assigned` Events created (best effort, one publisher)".into(),
            format!("{assigned_events} of {n}"),
        ],
        vec![
            "final spread (max - min resources per worker)".into(),
            format!(
                "**{spread}** (min {}, max {})",
                all_workers.iter().min().unwrap_or(&0),
                all_workers.iter().max().unwrap_or(&0)
            ),
        ],
        vec![
            "controller CPU / RSS / peak RSS".into(),
            format!(
                "{:.2} s / {:.1} MiB / {:.1} MiB",
                usage.cpu.as_secs_f64(),
                usage.rss_mib(),
                usage.hwm_mib()
            ),
        ],
    ];
    if let BulkAs::ServiceAccount { fence } = as_user {
        report.section(
            &format!(
                "{}: {n} resources over {} ready workers",
                as_user.cpu_label(),
                cfg.workers
            ),
            format!(
                "Same as 2, except that the controller runs as ServiceAccount `{FENCED_ACCOUNT}` of the bulk namespace (its kubeconfig impersonates it; a FlowSchema keeps it exempt from API Priority and Fairness, like the admin), {}. Compare 2c with 2d for the fence's cost per write (same identity, same RBAC; impersonation adds an RBAC evaluation to every request in both).\n\n{}",
                if fence {
                    "with the chart's leader fence (`templates/leader-fence-policy.yaml`, rendered by `helm template` for this namespace and account) installed: every status write is evaluated against the election Lease"
                } else {
                    "without the leader fence"
                },
                table(&["", "value"], rows)
            ),
        );
    } else if variant {
        report.section(
            &format!("2b. Bulk again, Events refused by RBAC: {n} resources over {} ready workers", cfg.workers),
            format!(
                "Same as 2, except that the controller runs as a user whom RBAC refuses `events create` (its kubeconfig impersonates `{NO_EVENTS_USER}`; a FlowSchema keeps that user exempt from API Priority and Fairness, like the admin), as in a deployment whose RBAC lacks the Events permission. Meant to show the bulk without Event writes, it is not that: a refused Event is still a request (and, no longer waiting on etcd, the one publisher now attempts every one of them), and impersonation adds an RBAC evaluation to every request. Compare the CPU table.\n\n{}",
                table(&["", "value"], rows)
            ),
        );
    } else {
        report.section(
            &format!("2. Bulk: {n} resources over {} ready workers, controller started after they exist", cfg.workers),
            format!(
                "Release binary, `--concurrency {}`, default election timings. Times are when this process's watch saw each status change.\n\n{}",
                cfg.concurrency,
                table(&["", "value"], rows)
            ),
        );
    }
    if variant {
        return fleet;
    }
    if let (Some(r), Some(c)) = (ratio, c_raw) {
        report.goal(
            "bulk throughput >= 0.9 x C_raw",
            format!("{rate:.0} vs C_raw {:.0} writes/s: {r:.2} x", c.rate),
            Some(r >= 0.9),
        );
    }
    report.goal(
        "exactly 1 status write per assignment",
        format!("{writes_per:.3} writes per resource; {exactly_one} of {n} with exactly 1; {conflicts} conflicts"),
        Some(exactly_one == n),
    );
    fleet
}

/// Who the bulk run's controller is.
#[derive(Clone, Copy)]
pub(crate) enum BulkAs<'a> {
    /// The admin (scenario 2).
    Admin,
    /// A user RBAC refuses `events create`, through this kubeconfig (scenario 2b).
    NoEvents(&'a Path),
    /// `ServiceAccount` [`FENCED_ACCOUNT`] of the bulk namespace, with or without the chart's
    /// leader fence (scenarios 2c and 2d).
    ServiceAccount { fence: bool },
}

impl BulkAs<'_> {
    fn prefix(self) -> &'static str {
        match self {
            Self::Admin => "bulk",
            Self::NoEvents(_) => "bulk-noevents",
            Self::ServiceAccount { fence: false } => "bulk-sa",
            Self::ServiceAccount { fence: true } => "bulk-fence",
        }
    }

    fn identity(self) -> &'static str {
        match self {
            Self::Admin => "ctl-bulk",
            Self::NoEvents(_) => "ctl-noevents",
            Self::ServiceAccount { fence: false } => "ctl-sa",
            Self::ServiceAccount { fence: true } => "ctl-fence",
        }
    }

    fn cpu_label(self) -> &'static str {
        match self {
            Self::Admin => "2. bulk: controller placing",
            Self::NoEvents(_) => "2b. bulk, Events refused by RBAC",
            Self::ServiceAccount { fence: false } => {
                "2c. bulk as a ServiceAccount, no leader fence"
            }
            Self::ServiceAccount { fence: true } => "2d. bulk as a ServiceAccount, leader fence",
        }
    }

    fn footprint_label(self) -> &'static str {
        match self {
            Self::Admin => "bulk",
            Self::NoEvents(_) => "2b, Events refused",
            Self::ServiceAccount { fence: false } => "2c, no fence",
            Self::ServiceAccount { fence: true } => "2d, leader fence",
        }
    }
}

/// The `ServiceAccount` the 2c and 2d bulk runs impersonate (in the bulk namespace).
const FENCED_ACCOUNT: &str = "bench-controller";

/// RBAC for `ServiceAccount` [`FENCED_ACCOUNT`] of `ns` (everything the controller needs), a
/// `FlowSchema` that keeps it exempt from API Priority and Fairness (as the admin is), a
/// kubeconfig that impersonates it, and, with `fence`, the chart's leader fence for it
/// (rendered by `helm template`, applied, and waited for until enforced). Returns the
/// kubeconfig's path.
async fn fenced_identity(cp: &ControlPlane, ns: &str, fence: bool) -> std::path::PathBuf {
    use k8s_openapi::api::{
        flowcontrol::v1::FlowSchema,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let client = cp.client();
    let apply = PatchParams::apply("crawler-bench").force();
    let name = format!("{ns}-{FENCED_ACCOUNT}");
    let user = format!("system:serviceaccount:{ns}:{FENCED_ACCOUNT}");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": name },
        "rules": [
            { "apiGroups": ["crawler.dev"], "resources": ["crawlerresources", "crawlerresources/status"], "verbs": ["*"] },
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"] },
            { "apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"] },
        ],
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": FENCED_ACCOUNT, "namespace": ns }],
    }))
    .unwrap();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "priorityLevelConfiguration": { "name": "exempt" },
            "matchingPrecedence": 2,
            "rules": [{
                "subjects": [{ "kind": "ServiceAccount", "serviceAccount": { "name": FENCED_ACCOUNT, "namespace": ns } }],
                "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true }],
                "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            }],
        },
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .patch(&name, &apply, &Patch::Apply(&role))
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(&name, &apply, &Patch::Apply(&binding))
        .await
        .expect("ClusterRoleBinding");
    Api::<FlowSchema>::all(client.clone())
        .patch(&name, &apply, &Patch::Apply(&schema))
        .await
        .expect("FlowSchema");
    let path = impersonating_kubeconfig(cp, &user, &format!("kubeconfig-{ns}"));
    // The election Lease, released by a holder (a replica takes it at once): the policy's
    // parameter exists before the controller starts, so the fence is enforced from its first
    // write on (and in 2c the start is the same).
    let mut released = serde_json::Map::new();
    released.insert(
        crawler_operator::leader::RELEASED_ANNOTATION.to_owned(),
        json!("0/bench"),
    );
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": "crawler-operator-leader", "annotations": released },
        "spec": { "leaseDurationSeconds": 1, "leaseTransitions": 0 },
    }))
    .unwrap();
    Api::<Lease>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &lease)
        .await
        .expect("the election Lease");
    if fence {
        let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/crawler-operator");
        let values = format!(
            "fullnameOverride={ns},controller.serviceAccount.create=false,\
             controller.serviceAccount.name={FENCED_ACCOUNT},\
             controller.leaderElection.leaseName=crawler-operator-leader"
        );
        let rendered = command_line(
            support::tools::cache_dir()
                .join("helm")
                .to_str()
                .expect("a UTF-8 path"),
            &[
                "template",
                ns,
                chart,
                "--namespace",
                ns,
                "--set",
                &values,
                "--show-only",
                "templates/leader-fence-policy.yaml",
            ],
        );
        let manifest = cp.dir().join(format!("{ns}-leader-fence.yaml"));
        std::fs::write(&manifest, rendered).expect("writing the rendered policy");
        let applied = std::process::Command::new(support::tools::binary("kubectl"))
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .args(["apply", "-f"])
            .arg(&manifest)
            .output()
            .expect("running kubectl apply");
        assert!(
            applied.status.success(),
            "kubectl apply of the leader fence: {}",
            String::from_utf8_lossy(&applied.stderr)
        );
        // Enforced once the API server's policy informer has it (and the Lease): a dry-run
        // status write of the account stamped with no one's term is refused.
        let mut config = cp.config();
        config.auth_info.impersonate = Some(user.clone());
        let as_user = Client::try_from(config).expect("an impersonating client");
        let probe = json!({
            "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
            "status": { "controllerTerm": { "holder": "nobody", "leaseTransitions": -1 } },
        });
        let params = PatchParams::apply("fence-probe").force().dry_run();
        let api: Api<CrawlerResource> = Api::namespaced(as_user, ns);
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            match api
                .patch_status("r-000000", &params, &Patch::Apply(&probe))
                .await
            {
                Err(kube::Error::Api(status)) if status.message.contains("leader fence:") => break,
                other => assert!(
                    Instant::now() < until,
                    "the leader fence is not enforced after 60 s: {other:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    path
}

/// The admin's kubeconfig, impersonating `user`, written to `file` in the control plane's dir.
fn impersonating_kubeconfig(cp: &ControlPlane, user: &str, file: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(cp.kubeconfig_path()).expect("reading the kubeconfig");
    let marker = "    client-key-data:";
    let at = text
        .find(marker)
        .expect("client-key-data in our kubeconfig");
    let line_end = at + text[at..].find('\n').expect("end of line");
    let impersonating = format!("{}\n    as: {user}{}", &text[..line_end], &text[line_end..]);
    let path = cp.dir().join(file);
    std::fs::write(&path, impersonating).expect("writing the impersonating kubeconfig");
    path
}

/// The user the no-Events bulk run impersonates.
const NO_EVENTS_USER: &str = "crawler-bench-no-events";

/// RBAC for a controller that may do everything it needs except create Events, a `FlowSchema`
/// that keeps it exempt from API Priority and Fairness (as the admin is), and a kubeconfig that
/// impersonates it. Returns the kubeconfig's path.
pub(crate) async fn no_events_identity(cp: &ControlPlane) -> std::path::PathBuf {
    use k8s_openapi::api::{
        flowcontrol::v1::FlowSchema,
        rbac::v1::{ClusterRole, ClusterRoleBinding},
    };
    let client = cp.client();
    let apply = PatchParams::apply("crawler-bench").force();
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "rules": [
            { "apiGroups": ["crawler.dev"], "resources": ["crawlerresources", "crawlerresources/status"], "verbs": ["*"] },
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"] },
        ],
    }))
    .unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NO_EVENTS_USER },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": NO_EVENTS_USER }],
    }))
    .unwrap();
    let schema: FlowSchema = serde_json::from_value(json!({
        "metadata": { "name": NO_EVENTS_USER },
        "spec": {
            "priorityLevelConfiguration": { "name": "exempt" },
            "matchingPrecedence": 2,
            "rules": [{
                "subjects": [{ "kind": "User", "user": { "name": NO_EVENTS_USER } }],
                "resourceRules": [{ "verbs": ["*"], "apiGroups": ["*"], "resources": ["*"], "namespaces": ["*"], "clusterScope": true }],
                "nonResourceRules": [{ "verbs": ["*"], "nonResourceURLs": ["*"] }],
            }],
        },
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&role))
        .await
        .expect("ClusterRole");
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&binding))
        .await
        .expect("ClusterRoleBinding");
    Api::<FlowSchema>::all(client.clone())
        .patch(NO_EVENTS_USER, &apply, &Patch::Apply(&schema))
        .await
        .expect("FlowSchema");
    impersonating_kubeconfig(cp, NO_EVENTS_USER, "kubeconfig-no-events")
}
