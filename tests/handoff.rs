//! The confirmed handoff, against a real API server: a task moved or suspended off a worker that
//! is still alive is first released there (phase `Releasing`); the new worker starts only after
//! the old one confirmed the stop, or its heartbeat lapsed. Judged from what the site received
//! (who fetched which task, when): the old worker's last request comes strictly before the new
//! worker's first.

use crate::support;

use std::time::{Duration, Instant};

use crawler_operator::{
    crd::{CONDITION_ASSIGNED, CrawlerResource, Phase, TaskProgress, TaskState},
    heartbeat,
    worker::RELEASE_CONFIRM_BOUND,
};
use k8s_openapi::api::{
    admissionregistration::v1::{ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding},
    coordination::v1::Lease,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::{
    pods::delete_pod,
    site::{Site, endless},
    story::{
        BOUND, HEARTBEAT, POLL, Story, assigned_worker, handoff_stage, handoff_stage_via_proxy,
        phase, stale_after, successor_hold, worker_1_running, worker_1_running_via_proxy,
    },
    wait_for,
};

/// Slack for a loaded 2-core machine on top of a stated bound.
const SLACK: Duration = Duration::from_millis(700);

/// [`Story::wait_for_resource`], also returning when `done` was first seen.
async fn wait_until(
    story: &Story,
    name: &str,
    what: &str,
    done: impl Fn(&CrawlerResource) -> bool,
) -> (CrawlerResource, Instant) {
    let r = story.wait_for_resource(name, what, done).await;
    (r, Instant::now())
}

/// Waits until `task` is placed on worker-2 and worker-2 crawls it (three requests); returns the
/// resource and when the placement was first seen.
async fn placed_on_worker_2(story: &Story, site: &Site, task: &str) -> (CrawlerResource, Instant) {
    let placed = wait_until(story, task, "assigned to worker-2", |r| {
        assigned_worker(r).as_deref() == Some("worker-2")
    })
    .await;
    site.wait_for_hits(task, "worker-2", None, 3).await;
    placed
}

/// The verdict on a handoff from what the site received: worker-1's last request came strictly
/// before worker-2's first, and no task was ever crawled by two workers at once.
fn assert_handed_over(site: &Site, last_old: Instant, first_new: Instant) {
    assert!(
        last_old < first_new,
        "overlap: worker-1 still crawled {:?} after worker-2 started",
        last_old - first_new
    );
    assert_eq!(site.overlaps(), Vec::<String>::new());
}

fn assigned_message(r: &CrawlerResource) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_ASSIGNED))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_moved_off_a_live_worker_starts_elsewhere_only_after_the_old_one_confirmed() {
    let (site, story) = handoff_stage("handoff-live", "task-h").await;

    // worker-1's Pod turns not ready; its process (and heartbeat) lives on.
    story.unready_worker("worker-1").await;
    let changed = Instant::now();
    let (r, moved) = placed_on_worker_2(&story, &site, "task-h").await;
    let handoff = moved - changed;
    assert_eq!(r.status.as_ref().unwrap().assignments, Some(2));
    let message = assigned_message(&r);
    assert!(
        message.contains("moved from worker worker-1 (it confirmed the stop) to worker-2"),
        "{message}"
    );
    let (last_old, first_new) = site.handover("task-h", "worker-1", "worker-2");
    println!(
        "handoff off a live worker (Pod not ready): worker-1's last request {:?} after the change, \
         worker-2's first {:?} after it: gap {:?}; handoff took {handoff:?}",
        last_old.saturating_duration_since(changed),
        first_new.saturating_duration_since(changed),
        first_new.saturating_duration_since(last_old)
    );
    assert_handed_over(&site, last_old, first_new);
    let log = std::fs::read_to_string(&story.workers[0].log).unwrap();
    assert!(log.contains("release confirmed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_on_a_live_worker_is_written_only_after_the_confirmed_stop() {
    let (site, story) = worker_1_running("handoff-suspend").await;
    story.crawl_on_worker_1(&site, "task-p").await;

    story.set_suspend("task-p", true).await;
    let asked = Instant::now();
    let (r, suspended) = wait_until(&story, "task-p", "phase Suspended", |r| {
        phase(r) == Some(Phase::Suspended)
    })
    .await;
    let progress = r.status.as_ref().unwrap().progress.clone().unwrap();
    assert!(
        progress.released && progress.state == TaskState::Stopped,
        "{progress:?}"
    );
    assert_eq!(
        (progress.worker.as_str(), progress.assignment),
        ("worker-1", 1)
    );
    // Absence is observed over a window: nothing more comes after Suspended was seen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let last = site.hits("task-p").iter().map(|h| h.at).max().unwrap();
    println!(
        "suspend on a live worker: last request {:?} after the suspend, Suspended seen {:?} after it",
        last.saturating_duration_since(asked),
        suspended - asked
    );
    assert!(
        last < suspended,
        "worker-1 still crawled {:?} after Suspended was seen",
        last - suspended
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_whose_old_worker_is_killed_midway_completes_after_its_heartbeat_lapses() {
    let (site, story, proxy) = handoff_stage_via_proxy("handoff-kill", "task-k").await;

    // worker-1 can no longer confirm (every byte to the API server is held), the move starts,
    // and worker-1 is killed before anything could reach it.
    proxy.freeze_all();
    story.unready_worker("worker-1").await;
    let changed = Instant::now();
    let (r, releasing) = wait_until(&story, "task-k", "phase Releasing", |r| {
        phase(r) == Some(Phase::Releasing)
    })
    .await;
    assert_eq!(assigned_worker(&r).as_deref(), Some("worker-1"));
    story.workers[0].signal("KILL");
    let killed = Instant::now();
    let (r, moved) = placed_on_worker_2(&story, &site, "task-k").await;
    let message = assigned_message(&r);
    assert!(
        message.contains("(its heartbeat lapsed or was released)"),
        "{message}"
    );
    let (last_old, first_new) = site.handover("task-k", "worker-1", "worker-2");
    println!(
        "handoff, old worker killed midway: Releasing seen {:?} after the change, killed {:?}, \
         placed on worker-2 {:?} after it (heartbeat {HEARTBEAT:?}); gap between worker-1's last \
         and worker-2's first request {:?}",
        releasing - changed,
        killed - changed,
        moved - changed,
        first_new.saturating_duration_since(last_old)
    );
    assert_handed_over(&site, last_old, first_new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_off_a_live_worker_whose_heartbeat_lease_was_deleted_is_still_a_handoff() {
    let (site, story, proxy) = handoff_stage_via_proxy("handoff-lease", "task-l").await;

    // worker-1's open connections go silent (its assignment watch sees nothing; new connections
    // work), then its Pod is force-deleted and its heartbeat Lease garbage-collected with it,
    // while its process runs on: what `kubectl delete pod --force` leaves behind.
    proxy.freeze();
    let froze = Instant::now();
    delete_pod(&story.client, story.ns(), "worker-1").await;
    Api::<Lease>::namespaced(story.client.clone(), story.ns())
        .delete(&heartbeat::lease_name("worker-1"), &DeleteParams::default())
        .await
        .expect("deleting worker-1's heartbeat Lease");
    // Not a worker without a heartbeat: the move is a handoff.
    let (r, _) = wait_until(&story, "task-l", "phase Releasing (or moved)", |r| {
        phase(r) == Some(Phase::Releasing) || assigned_worker(r).as_deref() == Some("worker-2")
    })
    .await;
    assert_eq!(
        phase(&r),
        Some(Phase::Releasing),
        "moved at once, as off a worker without a heartbeat: {}",
        assigned_message(&r)
    );
    let (r, moved) = placed_on_worker_2(&story, &site, "task-l").await;
    // Absence is observed over a window: wait past worker-1's freshness bound.
    tokio::time::sleep((froze + stale_after() + SLACK).saturating_duration_since(Instant::now()))
        .await;
    let (last_old, first_new) = site.handover("task-l", "worker-1", "worker-2");
    println!(
        "Lease deleted under a live worker whose connections went silent: worker-1's last request \
         {:?} after the freeze, placed on worker-2 {:?} after it ({}), worker-2's first request \
         {:?} after it: gap {:?}",
        last_old.saturating_duration_since(froze),
        moved - froze,
        assigned_message(&r),
        first_new.saturating_duration_since(froze),
        first_new.saturating_duration_since(last_old)
    );
    assert_handed_over(&site, last_old, first_new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_created_again_under_a_deleted_ones_name_starts_only_after_the_old_worker_stopped()
 {
    let (site, mut story, proxy) = worker_1_running_via_proxy("handoff-again").await;
    story.crawl_on_worker_1(&site, "task-a").await;
    let old_uid = story.api().get("task-a").await.unwrap().uid();
    story.worker("worker-2", &[("zone", "b")]).await;
    story.start_worker("worker-2", None);

    // worker-1's view goes silent; the resource is deleted and created again at once, this
    // time for worker-2 only (same crawl, same name, another object).
    proxy.freeze();
    let froze = Instant::now();
    let api = story.api();
    api.delete("task-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("task-a to be gone", BOUND, POLL, || async {
        match api.get_opt("task-a").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|r| r.map(|r| r.uid())))),
        }
    })
    .await;
    let deleted = Instant::now();
    let mut spec = endless(&site, "task-a");
    spec["workerSelector"] = json!({ "matchLabels": { "zone": "b" } });
    story.apply_resource("task-a", spec).await;
    let (r, placed) = wait_until(
        &story,
        "task-a",
        "the new object assigned to worker-2",
        |r| assigned_worker(r).as_deref() == Some("worker-2"),
    )
    .await;
    assert_ne!(r.uid(), old_uid, "another object");
    assert_eq!(r.status.as_ref().unwrap().assignments, Some(1));
    site.wait_for_hits("task-a", "worker-2", None, 3).await;
    tokio::time::sleep((froze + stale_after() + SLACK).saturating_duration_since(Instant::now()))
        .await;
    let (last_old, first_new) = site.handover("task-a", "worker-1", "worker-2");
    println!(
        "deleted and created again while worker-1's view was silent: worker-1's last request {:?} \
         after the freeze; the new object placed {:?} after the deletion (hold {:?}), \
         worker-2's first request {:?} after the freeze: gap {:?}",
        last_old.saturating_duration_since(froze),
        placed - deleted,
        successor_hold(),
        first_new.saturating_duration_since(froze),
        first_new.saturating_duration_since(last_old)
    );
    assert!(
        last_old < first_new,
        "overlap: worker-1 still crawled the deleted object's task {:?} after worker-2 started \
         the new one's",
        last_old - first_new
    );
    let log = std::fs::read_to_string(&story.controllers[0].log).unwrap();
    assert!(
        log.contains("deleted while its worker may still run it"),
        "{log}"
    );
}

/// A `ValidatingAdmissionPolicy` (and its binding, confined to namespace `ns`) that refuses every
/// status write confirming a release (`progress.released: true`) from `worker`: a worker that is
/// alive but whose confirmations are refused.
async fn refuse_confirmations_from(story: &Story, worker: &str) -> String {
    let name = format!("{}-refuse-confirmations", story.ns());
    let message = format!("test: {worker} may not confirm a release");
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": ["crawler.dev"], "apiVersions": ["*"],
                "operations": ["UPDATE"], "resources": ["crawlerresources/status"],
            }]},
            "validations": [{
                "expression": format!(
                    "!(has(object.status) && has(object.status.progress) && \
                     has(object.status.progress.released) && object.status.progress.released && \
                     object.status.progress.worker == '{worker}')"
                ),
                "message": message,
            }],
        },
    }))
    .expect("a valid policy");
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": { "namespaceSelector": {
                "matchLabels": { "kubernetes.io/metadata.name": story.ns() },
            }},
        },
    }))
    .expect("a valid binding");
    Api::<ValidatingAdmissionPolicy>::all(story.client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .expect("creating the policy");
    Api::<ValidatingAdmissionPolicyBinding>::all(story.client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("creating the binding");
    message
}

/// Removes what [`refuse_confirmations_from`] created.
async fn allow_confirmations(story: &Story) {
    let name = format!("{}-refuse-confirmations", story.ns());
    let _ = Api::<ValidatingAdmissionPolicyBinding>::all(story.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(story.client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_whose_old_worker_cannot_write_its_confirmation_completes_on_the_withheld_heartbeat()
 {
    let (site, story) = handoff_stage("handoff-refused", "task-v").await;

    // worker-1 stays alive and reachable, but the API server refuses its confirmations.
    let message = refuse_confirmations_from(&story, "worker-1").await;
    let api = story.api();
    let probe = json!({
        "apiVersion": "crawler.dev/v1alpha1", "kind": "CrawlerResource",
        "metadata": { "name": "task-v" },
        "status": { "progress": TaskProgress {
            worker: "worker-1".into(),
            assignment: 1,
            state: TaskState::Stopped,
            released: true,
            ..TaskProgress::default()
        }},
    });
    let mut dry_run = PatchParams::apply("policy-probe").force();
    dry_run.dry_run = true;
    wait_for("the policy to be in force", BOUND, POLL, || async {
        match api
            .patch_status("task-v", &dry_run, &Patch::Apply(&probe))
            .await
        {
            Err(kube::Error::Api(s)) if s.message.contains(&message) => Ok(()),
            other => Err(format!("{:?}", other.map(|_| "accepted"))),
        }
    })
    .await;

    story.unready_worker("worker-1").await;
    let changed = Instant::now();
    let (r, moved) = placed_on_worker_2(&story, &site, "task-v").await;
    let handoff = moved - changed;
    let note = assigned_message(&r);
    let (last_old, first_new) = site.handover("task-v", "worker-1", "worker-2");
    // The bound stated in docs/architecture.md for a worker that cannot confirm:
    // F + B + D + the expiry tick and the confirming read.
    let bound = stale_after() + RELEASE_CONFIRM_BOUND + HEARTBEAT + Duration::from_millis(2200);
    println!(
        "confirmations refused by an admission policy: placed on worker-2 {handoff:?} after the \
         Pod turned not ready (bound {bound:?}; {note}); worker-1's last request {:?} after the \
         change, worker-2's first {:?}: gap {:?}",
        last_old.saturating_duration_since(changed),
        first_new.saturating_duration_since(changed),
        first_new.saturating_duration_since(last_old)
    );
    allow_confirmations(&story).await;
    assert!(
        note.contains("(its heartbeat lapsed or was released)"),
        "{note}"
    );
    assert!(handoff < bound + SLACK, "took {handoff:?}, bound {bound:?}");
    assert_handed_over(&site, last_old, first_new);
    let log = std::fs::read_to_string(&story.workers[0].log).unwrap();
    assert!(log.contains("cannot confirm the release yet"), "{log}");
    assert!(log.contains(&message), "{log}");
    assert!(
        log.contains("a release stayed unconfirmed past its bound"),
        "{log}"
    );
}
