//! The leader fence (`templates/leader-fence-policy.yaml`, installed by `helm install`, not a
//! copy) against the real API server: a status write held in the network past its leader's term
//! must not land, also on a resource the next leader never writes (which the resourceVersion
//! fence cannot catch: nothing wrote it since the decision).
//!
//! The controllers run as the chart's controller `ServiceAccount` (a token from the `TokenRequest`
//! API, with the chart's RBAC), which is what the policy matches. The scenario: everything
//! controller-a sends is held in the network (a proxy that holds what the client sends and
//! still delivers what the server sends), worker-1 turns not ready, and controller-a moves every
//! resource off it, writes that are held until its term ends and it abandons them. worker-1 is
//! ready again, so controller-b, which takes the Lease over, keeps every resource where it is
//! and writes none. Then the held bytes are delivered, each request served in full before what
//! its client sent after it (its close) reaches the API server. Judge `late-writes`: every
//! resource's version before and after the delivery.
//!
//! The same scenario without the policy (`admissionPolicy.leaderFence.enabled=false`) shows the
//! hazard is real: held writes land there.
//!
//! The policies are cluster-scoped, so this suite has a control plane of its own
//! ([`support::OWN_CONTROL_PLANE`]).

use crate::{admission, chart, reliability, support};

use std::{collections::BTreeMap, time::Duration};

use crawler_operator::crd::CrawlerResource;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use support::{
    invariants::LeaseTimeline,
    judge::Verdict,
    pods::set_pod_ready,
    proxy::Proxy,
    story::{BOUND, LEASE, POLL, Story, assigned_worker, worker_ip},
    wait_for,
};

const RESOURCES: usize = 120;

/// CI runs the scenario once; `make soak` (`CRAWLER_SOAK=1`) `CRAWLER_SOAK_FENCE_CYCLES` times
/// (5), each in a namespace and release of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_write_held_past_the_term_is_refused_by_the_leader_fence() {
    let cycles = if reliability::soak() {
        reliability::soak_cycles("CRAWLER_SOAK_FENCE_CYCLES", 5)
    } else {
        1
    };
    let (mut late, mut writes) = (Verdict::new("late-writes"), Verdict::new("leader-writes"));
    for cycle in 0..cycles {
        let release = if cycle == 0 {
            "fence-on".to_owned()
        } else {
            format!("fence-on-{cycle}")
        };
        let run = held_writes_delivered_after_the_term(&release, true).await;
        assert!(
            run.abandoned > 0,
            "no write of controller-a was in flight at the freeze, the scenario did not \
             happen:\n{}",
            run.logs
        );
        assert!(
            run.refused > 0,
            "the fence refused none of the held writes: did they reach the API server? ({})",
            run.late.line()
        );
        late.absorb(run.late);
        writes.absorb(run.writes);
    }
    for v in [&late, &writes] {
        println!("{}", v.line());
    }
    for v in [&late, &writes] {
        v.assert_clean();
    }
}

/// The control: without the policy, the same held writes land (so the fenced run's zero is the
/// fence's doing, not the scenario's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_leader_fence_a_write_held_past_the_term_lands() {
    let run = held_writes_delivered_after_the_term("fence-off", false).await;
    println!("{}", run.late.line());
    assert!(
        run.abandoned > 0,
        "no write of controller-a was in flight at the freeze, the scenario did not happen:\n{}",
        run.logs
    );
    assert!(
        run.late_by_a > 0,
        "no write held past controller-a's term landed without the fence: the scenario no longer \
         shows the hazard the fence closes ({}):\n{}",
        run.late.line(),
        run.logs
    );
}

/// `kubectl explain` describes the stamp and what checks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_describes_the_controller_term() {
    let story = Story::new("fence-explain").await;
    for (path, expected) in [
        (
            "crawlerresources.status.controllerTerm",
            "`<fullname>-leader-fence` refuses a controller status write whose term is not the Lease's current one",
        ),
        (
            "crawlerresources.status.controllerTerm.holder",
            "the Lease's `holderIdentity` while it led",
        ),
        (
            "crawlerresources.status.controllerTerm.leaseTransitions",
            "one more for every acquisition",
        ),
    ] {
        story.wait_for_explain(path, expected).await;
    }
}

/// What one run of the scenario found.
struct Run {
    /// Judge `late-writes`: resources changed after the held bytes were delivered.
    late: Verdict,
    /// Of those, the ones whose `status.controllerTerm` names controller-a.
    late_by_a: usize,
    /// Judge `leader-writes` over the controllers' logs.
    writes: Verdict,
    /// Writes controller-a logged as abandoned at the end of its term (in flight at the freeze).
    abandoned: usize,
    /// Requests the fence denied once the held bytes were delivered (the API server's metric).
    refused: usize,
    logs: String,
}

#[allow(clippy::too_many_lines)] // one story, read top to bottom
async fn held_writes_delivered_after_the_term(release: &str, fence: bool) -> Run {
    let mut story = Story::new(release).await;
    let ns = story.ns().to_owned();
    let cp = story.cp;
    let fence_value = format!("admissionPolicy.leaderFence.enabled={fence}");
    let fullname = format!("fullnameOverride={release}");
    chart::helm_install(
        cp,
        &ns,
        release,
        &[
            &fullname,
            &format!("controller.leaderElection.leaseName={LEASE}"),
            &fence_value,
        ],
    )
    .await;
    let account = format!("{release}-controller");
    story.controller_kubeconfig = Some(admission::token_kubeconfig(cp, &ns, &account).await);
    let timeline = LeaseTimeline::start(story.client.clone(), &ns, LEASE);

    let names: Vec<String> = (0..RESOURCES).map(|i| format!("held-{i:03}")).collect();
    futures::future::join_all(names.iter().map(|n| story.apply_simple(n))).await;
    // controller-a first: worker Pods that appear later are judged at once (a read finds no
    // heartbeat Lease: a move off such a worker is one write).
    let proxy = Proxy::start(cp.apiserver_addr());
    story.start_controller_via("controller-a", Some(&proxy));
    story.wait_for_leader("controller-a").await;
    if fence {
        // The policy is enforced once the API server's policy informer has it and the Lease
        // (its parameter) exists: until then a status write of the controller's account stamped
        // with no one's term passes (a dry run, so nothing is written).
        let as_controller: Api<CrawlerResource> =
            Api::namespaced(admission::user_token(cp, &ns, &account).await, &ns);
        let probe = json!({
            "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
            "status": { "controllerTerm": { "holder": "nobody", "leaseTransitions": -1 } },
        });
        let params = PatchParams::apply("fence-probe").force().dry_run();
        wait_for("the leader fence to be enforced", BOUND, POLL, || async {
            match as_controller
                .patch_status(&names[0], &params, &Patch::Apply(&probe))
                .await
            {
                Err(kube::Error::Api(status))
                    if status.code == 403 && status.message.contains("leader fence:") =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        })
        .await;
    }

    story.ready_worker("worker-1").await;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    story.assert_all_assigned(&refs).await;
    story.ready_worker("worker-2").await;

    // From now on every request controller-a sends is held in the network, while it still sees
    // the world: worker-1 turns not ready, and it moves every resource to worker-2 (up to 32
    // writes at once, on the connections it has open), until its term ends (its renewals are
    // held too) and it abandons them.
    let frozen = proxy.freeze_all_upstream();
    story.unready_worker("worker-1").await;
    let log = story.controllers[0].log.clone();
    let abandoned = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("status write abandoned"))
            .count()
    };
    wait_for(
        "controller-a to abandon its writes",
        BOUND,
        POLL,
        || async {
            match abandoned() {
                0 => Err("none yet".to_owned()),
                n => Ok(n),
            }
        },
    )
    .await;
    // worker-1 is back: for the next leader every resource is well placed where it is.
    set_pod_ready(
        &story.client,
        &ns,
        "worker-1",
        true,
        Some(&worker_ip("worker-1")),
    )
    .await;
    story.start_controller("controller-b");
    story.wait_for_leader("controller-b").await;
    let api = story.api();
    // controller-b's full pass writes nothing; wait until nothing changes for a second.
    let mut before = terms(&api).await;
    let settle_until = tokio::time::Instant::now() + BOUND;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = terms(&api).await;
        if now == before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < settle_until,
            "the resources kept changing for {BOUND:?} after controller-b took over"
        );
        before = now;
    }
    let on_worker_1 = before
        .values()
        .filter(|(_, w, _)| w.as_deref() == Some("worker-1"))
        .count();

    // Deliver what controller-a sent after the freeze, each request served in full, and give it
    // time to land.
    let denied_before = fence_denials(&story.client, release).await;
    proxy.thaw_delaying_the_rest(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = terms(&api).await;
    let abandoned = abandoned();
    let mut late = Verdict::new("late-writes");
    late.judged = before.len();
    let mut late_by_a = 0;
    for (name, (rv, worker, term)) in &before {
        let Some((rv_after, worker_after, term_after)) = after.get(name) else {
            late.violation("gone-after-thaw", name.clone());
            continue;
        };
        if rv_after != rv {
            if term_after.as_deref() == Some("controller-a") {
                late_by_a += 1;
            }
            late.violation(
                "changed-after-thaw",
                format!(
                    "{name}: {rv} on {worker:?} (term of {term:?}) -> {rv_after} on \
                     {worker_after:?} (term of {term_after:?})"
                ),
            );
        }
    }
    late.count("frozen_connections", frozen);
    late.count("abandoned_writes", abandoned);
    late.count("left_on_worker_1", on_worker_1);
    late.count("late_by_controller_a", late_by_a);
    let writes = timeline.judge_logs(&story.controller_logs());

    let refused = fence_denials(&story.client, release).await - denied_before;
    late.count("refused_by_the_fence", refused);
    if fence {
        // The fence does not stand in the next leader's way: controller-b's writes, stamped with
        // its own term, land (worker-1 turns not ready, everything moves to worker-2).
        story.unready_worker("worker-1").await;
        wait_for(
            "every resource moved to worker-2 by controller-b",
            BOUND,
            POLL,
            || async {
                let left = terms(&api)
                    .await
                    .into_values()
                    .filter(|(_, w, t)| {
                        w.as_deref() != Some("worker-2") || t.as_deref() != Some("controller-b")
                    })
                    .count();
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} not on worker-2 by controller-b yet"))
                }
            },
        )
        .await;
    }
    Run {
        late,
        late_by_a,
        writes,
        abandoned,
        refused,
        logs: story.logs(),
    }
}

/// name -> (resourceVersion, assigned worker, holder of the term its status was written in).
async fn terms(
    api: &Api<CrawlerResource>,
) -> BTreeMap<String, (String, Option<String>, Option<String>)> {
    api.list(&ListParams::default())
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let worker = assigned_worker(&r);
            let term = r
                .status
                .as_ref()
                .and_then(|s| s.controller_term.as_ref())
                .map(|t| t.holder.clone());
            (r.name_any(), (r.resource_version().unwrap(), worker, term))
        })
        .collect()
}

/// How many requests the API server's leader fence of `release` denied so far (its metric
/// `apiserver_validating_admission_policy_check_total`, enforcement action deny).
async fn fence_denials(client: &kube::Client, release: &str) -> usize {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a GET /metrics request");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's metrics");
    let policy = format!("policy=\"{release}-leader-fence\"");
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_validating_admission_policy_check_total{")
                && l.contains(&policy)
                && l.contains("enforcement_action=\"deny\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum()
}
