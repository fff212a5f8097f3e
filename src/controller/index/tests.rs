//! The index as a whole: placement, triggers, heartbeats and loads, without a cluster.

use k8s_openapi::{
    api::core::v1::{PodCondition, PodStatus},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time},
};
use kube::{ResourceExt, api::ObjectMeta};

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;

use super::{apply::listed, *};
use crawler_core::{LeastLoaded, Policy, WorkerSelector};

use std::collections::HashSet;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::{
    crd::{CONDITION_ASSIGNED, CrawlerResource, CrawlerResourceSpec, Phase},
    heartbeat,
};

const NS: &str = "crawl";

fn pod(name: &str, ready: bool, labels: &[(&str, &str)]) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            pod_ip: Some(format!("10.0.0.{}", name.len())),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..PodCondition::default()
            }]),
            ..PodStatus::default()
        }),
    }
}

fn resource(name: &str, weight: i32) -> CrawlerResource {
    let mut spec: CrawlerResourceSpec =
        serde_json::from_value(serde_json::json!({"seeds": ["https://example.org/"]})).unwrap();
    spec.weight = weight;
    let mut r = CrawlerResource::new(name, spec);
    r.metadata.namespace = Some(NS.into());
    r.metadata.uid = Some(format!("uid-{name}"));
    r.metadata.resource_version = Some("1".into());
    r.metadata.generation = Some(1);
    r
}

fn ctx(policy: &dyn Policy) -> PlanContext<'_> {
    PlanContext {
        policy,
        worker_port: 8080,
        now: Timestamp::from_second(1_700_000_000).unwrap(),
    }
}

/// Moves `r` one resource version on, as the API server does on every write: the index tells
/// its own writes from other changes by that version, so each simulated write needs a new one.
fn bump_resource_version(r: &mut CrawlerResource) {
    let rv = r
        .metadata
        .resource_version
        .as_deref()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        + 1;
    r.metadata.resource_version = Some(rv.to_string());
}

/// [`place_at`] at `ctx().now` with the default policy: what most tests need.
fn place(index: &mut Index, r: &mut CrawlerResource) -> Plan {
    place_at(index, r, &ctx(&LeastLoaded))
}

/// Plans `r` at `at`, pretends the write landed and the watch showed it, as the reconciler does.
fn place_at(index: &mut Index, r: &mut CrawlerResource, at: &PlanContext<'_>) -> Plan {
    let key = Key::new(NS, r.name_any());
    let plan = index.plan(&key, at);
    if let Plan::Write(w) = &plan {
        bump_resource_version(r);
        r.status = Some(w.status.clone());
        index.written(&key, r.metadata.resource_version.clone());
        index.apply_resource(r);
    }
    index.check_loads();
    index.check_hosts();
    plan
}

/// A resource created after the others: the watch shows it, then it is placed. What the tests
/// that ask "where does the next one go?" do.
fn create_and_place(index: &mut Index, name: &str) -> CrawlerResource {
    let mut r = resource(name, 1);
    index.apply_resource(&r);
    place(index, &mut r);
    r
}

fn worker_of(r: &CrawlerResource) -> Option<&str> {
    r.status.as_ref()?.assigned_worker.as_deref()
}

fn two_workers_five_resources() -> (Index, Vec<CrawlerResource>) {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    let mut resources: Vec<CrawlerResource> = [
        "douban-book-list",
        "task-test-1",
        "task-test-2",
        "task-test-3",
        "xxx",
    ]
    .iter()
    .map(|n| resource(n, 1))
    .collect();
    index.reset_resources(&resources);
    for r in &mut resources {
        assert!(matches!(place(&mut index, r), Plan::Write(_)));
    }
    (index, resources)
}

#[test]
fn the_original_demonstration_splits_five_resources_three_two() {
    let (index, resources) = two_workers_five_resources();
    assert!(index.synced());
    assert_eq!(index.load(NS, "worker-1"), 3);
    assert_eq!(index.load(NS, "worker-2"), 2);
    let first = resources[0].status.as_ref().unwrap();
    assert_eq!(first.phase, Some(Phase::Assigned));
    assert_eq!(first.assigned_address.as_deref(), Some("10.0.0.8:8080"));
    assert_eq!(first.assignments, Some(1));
    assert_eq!(
        first.condition(CONDITION_ASSIGNED).unwrap().reason,
        "Assigned"
    );
}

#[test]
fn well_placed_resources_are_not_written_again() {
    let (mut index, mut resources) = two_workers_five_resources();
    for r in &mut resources {
        assert_eq!(place(&mut index, r), Plan::Nothing, "{}", r.name_any());
    }
    // A fresh index (a new leader) over the same objects decides nothing either.
    let mut fresh = Index::default();
    fresh.reset_pods(&[pod("worker-2", true, &[]), pod("worker-1", true, &[])]);
    fresh.reset_resources(&resources);
    for r in &mut resources {
        assert_eq!(place(&mut fresh, r), Plan::Nothing);
    }
}

#[test]
fn a_lost_worker_releases_its_resources_to_the_others() {
    let (mut index, mut resources) = two_workers_five_resources();
    let mut redo = index.delete_pod(NS, "worker-1");
    redo.sort();
    let on_worker_1: Vec<Key> = resources
        .iter()
        .filter(|r| worker_of(r) == Some("worker-1"))
        .map(|r| Key::new(NS, r.name_any()))
        .collect();
    assert_eq!(redo, on_worker_1);
    for r in &mut resources {
        let was = worker_of(r).map(str::to_owned);
        let plan = place(&mut index, r);
        if was.as_deref() == Some("worker-1") {
            let Plan::Write(w) = plan else {
                panic!("expected a write")
            };
            assert_eq!(w.event.as_ref().unwrap().reason, Reason::Reassigned);
            assert!(w.event.unwrap().note.contains("its Pod is gone"));
            assert_eq!(w.status.assignments, Some(2));
        }
    }
    assert!(resources.iter().all(|r| worker_of(r) == Some("worker-2")));
    assert_eq!(index.load(NS, "worker-2"), 5);
}

#[test]
fn a_relist_removes_a_worker_deleted_while_the_watch_was_down() {
    let (mut index, resources) = two_workers_five_resources();
    let redo = index.reset_pods(&[pod("worker-2", true, &[])]);
    let on_worker_1 = resources
        .iter()
        .filter(|r| worker_of(r) == Some("worker-1"))
        .count();
    assert_eq!(redo.len(), on_worker_1);
    // Resources deleted meanwhile go too, and their load with them.
    let kept: Vec<CrawlerResource> = resources
        .iter()
        .filter(|r| worker_of(r) == Some("worker-1"))
        .cloned()
        .collect();
    index.reset_resources(&kept);
    assert_eq!(index.load(NS, "worker-2"), 0);
    assert_eq!(index.all_keys().len(), on_worker_1);
    index.check_loads();
}

#[test]
fn a_not_ready_worker_loses_its_resources() {
    let (mut index, mut resources) = two_workers_five_resources();
    let redo = index.apply_pod(&pod("worker-2", false, &[]));
    assert_eq!(redo.len(), 2);
    for r in &mut resources {
        place(&mut index, r);
    }
    assert!(resources.iter().all(|r| worker_of(r) == Some("worker-1")));
}

#[test]
fn no_worker_means_unschedulable_with_the_reason_then_placed_when_one_is_ready() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", false, &[])]);
    let mut r = resource("task-test-4", 1);
    index.reset_resources(std::slice::from_ref(&r));
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.phase, Some(Phase::Unschedulable));
    let event = w.event.unwrap();
    assert!(event.warning);
    let condition = r
        .status
        .as_ref()
        .unwrap()
        .condition(CONDITION_ASSIGNED)
        .unwrap()
        .clone();
    assert_eq!(condition.status, "False");
    assert!(
        condition.message.starts_with("0/1 workers"),
        "{}",
        condition.message
    );
    // Deciding again writes nothing: same reason, same message.
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    // The worker turns ready: the waiting resource is queued and placed.
    assert_eq!(
        index.apply_pod(&pod("worker-1", true, &[])),
        vec![Key::new(NS, "task-test-4")]
    );
    place(&mut index, &mut r);
    assert_eq!(worker_of(&r), Some("worker-1"));
}

#[test]
fn decisions_in_flight_count_before_they_are_written() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    index.reset_resources(&[resource("a", 1), resource("b", 1)]);
    let pa = index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded));
    let pb = index.plan(&Key::new(NS, "b"), &ctx(&LeastLoaded));
    let (Plan::Write(a), Plan::Write(b)) = (pa, pb) else {
        panic!("expected two writes")
    };
    assert_ne!(
        a.assumes, b.assumes,
        "two decisions in flight must see each other"
    );
    // While a's write is in flight, a is not decided again.
    assert_eq!(
        index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded)),
        Plan::Wait
    );
    // A failed write is forgotten: the load is what the resources say again.
    index.forget(&Key::new(NS, "a"));
    assert_eq!(index.load(NS, a.assumes.as_deref().unwrap()), 0);
    index.check_loads();
}

#[test]
fn a_watch_event_that_overtakes_the_write_response_confirms_the_decision() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[])]);
    let mut r = resource("a", 1);
    index.reset_resources(std::slice::from_ref(&r));
    let key = Key::new(NS, "a");
    let Plan::Write(w) = index.plan(&key, &ctx(&LeastLoaded)) else {
        panic!("expected a write")
    };
    // The watch event of the write arrives first, then the write's response.
    r.metadata.resource_version = Some("2".into());
    r.status = Some(w.status);
    index.apply_resource(&r);
    index.written(&key, Some("2".into()));
    index.check_loads();
    assert_eq!(index.load(NS, "worker-1"), 1);
    // Not stuck waiting: the worker is lost, so it is decided again (unschedulable now).
    index.delete_pod(NS, "worker-1");
    assert!(matches!(
        index.plan(&key, &ctx(&LeastLoaded)),
        Plan::Write(_)
    ));
}

#[test]
fn an_assumed_decision_whose_write_a_relist_skipped_is_settled_not_kept_forever() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let mut r = resource("a", 3);
    index.reset_resources(std::slice::from_ref(&r));
    let key = Key::new(NS, "a");
    let Plan::Write(w) = index.plan(&key, &ctx(&LeastLoaded)) else {
        panic!("expected a write")
    };
    let ours = w.status.assigned_worker.clone().expect("placed");
    let other = if ours == "worker-1" {
        "worker-2"
    } else {
        "worker-1"
    };
    index.written(&key, Some("2".into()));
    // The watch expired (410) before it showed version 2; meanwhile another writer (a later
    // leader) moved the resource, and the relist shows only version 3, naming the other worker.
    r.metadata.resource_version = Some("3".into());
    let mut moved = w.status;
    moved.assigned_worker = Some(other.to_owned());
    r.status = Some(moved);
    index.reset_resources(std::slice::from_ref(&r));
    index.check_loads();
    assert_eq!(
        index.load(NS, &ours),
        0,
        "no weight left on the worker we had assumed"
    );
    assert_eq!(index.load(NS, other), 3);
    // Not waiting forever: the resource is decided again (here: it stays where it is, no write).
    assert!(matches!(
        index.plan(&key, &ctx(&LeastLoaded)),
        Plan::Nothing
    ));
}

#[test]
fn suspend_unassigns_and_resume_places_again() {
    let (mut index, mut resources) = two_workers_five_resources();
    let r = &mut resources[0];
    r.spec.suspend = true;
    index.apply_resource(r);
    let Plan::Write(w) = place(&mut index, r) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.phase, Some(Phase::Suspended));
    assert_eq!(worker_of(r), None);
    assert_eq!(index.load(NS, "worker-1") + index.load(NS, "worker-2"), 4);
    r.spec.suspend = false;
    index.apply_resource(r);
    place(&mut index, r);
    assert!(worker_of(r).is_some());
    assert_eq!(r.status.as_ref().unwrap().assignments, Some(2));
}

#[test]
fn worker_selector_and_weights_are_respected() {
    let mut index = Index::default();
    index.reset_pods(&[
        pod("cpu-1", true, &[("crawler.dev/gpu", "false")]),
        pod("gpu-1", true, &[("crawler.dev/gpu", "true")]),
    ]);
    let mut heavy = resource("heavy", 5);
    heavy.spec.worker_selector = Some(LabelSelector {
        match_labels: Some([("crawler.dev/gpu".to_owned(), "true".to_owned())].into()),
        match_expressions: None,
    });
    let mut light = resource("light", 1);
    index.reset_resources(&[heavy.clone(), light.clone()]);
    place(&mut index, &mut heavy);
    place(&mut index, &mut light);
    assert_eq!(worker_of(&heavy), Some("gpu-1"));
    assert_eq!(worker_of(&light), Some("cpu-1"));
    assert_eq!(index.load(NS, "gpu-1"), 5);
    // Relabelling the worker so it no longer matches moves the resource off it.
    let redo = index.apply_pod(&pod("gpu-1", true, &[]));
    assert!(redo.contains(&Key::new(NS, "heavy")));
    let Plan::Write(w) = place(&mut index, &mut heavy) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.phase, Some(Phase::Unschedulable));
    assert!(
        w.status.conditions[0].message.contains("workerSelector"),
        "{}",
        w.status.conditions[0].message
    );
}

#[test]
fn terminating_pods_and_full_workers_take_no_work() {
    let mut index = Index::default();
    let mut terminating = pod("worker-1", true, &[]);
    terminating.metadata.deletion_timestamp =
        Some(Time(Timestamp::from_second(1_700_000_000).unwrap()));
    let mut small = pod("worker-2", true, &[]);
    small.metadata.annotations = Some([(CAPACITY_ANNOTATION.to_owned(), "2".to_owned())].into());
    index.reset_pods(&[terminating, small]);
    let mut a = resource("a", 2);
    let mut b = resource("b", 1);
    index.reset_resources(&[a.clone(), b.clone()]);
    place(&mut index, &mut a);
    assert_eq!(worker_of(&a), Some("worker-2"));
    let Plan::Write(w) = place(&mut index, &mut b) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.phase, Some(Phase::Unschedulable));
    let message = &w.status.conditions[0].message;
    assert!(
        message.contains("terminating") && message.contains("capacity"),
        "{message}"
    );
    // Deleting `a` frees the capacity: `b` is queued again and placed.
    assert_eq!(index.delete_resource(NS, "a"), vec![Key::new(NS, "b")]);
    place(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-2"));
}

fn heartbeat(pod: &str, holder: Option<&str>, renewed_at: i64) -> Lease {
    let mut lease = Lease::default();
    lease.metadata.name = Some(heartbeat::lease_name(pod));
    lease.metadata.namespace = Some(NS.into());
    lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
        holder_identity: holder.map(str::to_owned),
        lease_duration_seconds: Some(10),
        renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            Timestamp::from_second(renewed_at).unwrap(),
        )),
        ..Default::default()
    });
    lease
}

#[test]
fn no_heartbeat_expires_on_account_of_renewals_a_failed_watch_could_not_show() {
    let (mut index, _) = two_workers_five_resources();
    let t0 = Instant::now();
    index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
    // The watch fails 5 s later (API server restart) and stays down a while: the renewals
    // made meanwhile were not seen, so the count starts again from the failure.
    index.heartbeats_unseen(t0 + Duration::from_secs(5));
    assert!(
        index
            .expire_heartbeats(t0 + Duration::from_secs(12))
            .is_empty(),
        "10 s after the last renewal seen, but only 7 s after the watch failed"
    );
    assert_eq!(
        index.expire_heartbeats(t0 + Duration::from_secs(15)).len(),
        3,
        "a heartbeat still unseen a whole duration after the failure expires"
    );
}

#[test]
fn an_expired_heartbeat_releases_the_workers_resources_until_it_is_renewed() {
    let (mut index, mut resources) = two_workers_five_resources();
    let t0 = Instant::now();
    index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
    assert!(
        index
            .expire_heartbeats(t0 + Duration::from_secs(9))
            .is_empty(),
        "not expired before its duration"
    );
    // Renewed at 9 s: the 10 s count starts again from when we saw the renewal.
    index.apply_heartbeat(
        &heartbeat("worker-1", Some("worker-1"), 109),
        t0 + Duration::from_secs(9),
    );
    assert!(
        index
            .expire_heartbeats(t0 + Duration::from_secs(18))
            .is_empty()
    );
    let redo = index.expire_heartbeats(t0 + Duration::from_secs(19));
    assert_eq!(redo.len(), 3, "worker-1's resources are released");
    for r in &mut resources {
        place(&mut index, r);
    }
    assert!(resources.iter().all(|r| worker_of(r) == Some("worker-2")));
    let moved = resources
        .iter()
        .find(|r| r.status.as_ref().unwrap().assignments == Some(2))
        .unwrap();
    assert!(
        moved.status.as_ref().unwrap().conditions[0]
            .message
            .contains("heartbeat")
    );
    // A renewal makes it ready again: waiting resources would be offered to it.
    index.apply_heartbeat(
        &heartbeat("worker-1", Some("worker-1"), 130),
        t0 + Duration::from_secs(30),
    );
    let next = create_and_place(&mut index, "task-test-4");
    assert_eq!(worker_of(&next), Some("worker-1"));
}

#[test]
fn a_released_heartbeat_takes_the_worker_out_at_once() {
    let (mut index, mut resources) = two_workers_five_resources();
    let now = Instant::now();
    index.apply_heartbeat(&heartbeat("worker-2", Some("worker-2"), 100), now);
    let redo = index.apply_heartbeat(&heartbeat("worker-2", None, 101), now);
    assert_eq!(redo.len(), 2);
    for r in &mut resources {
        place(&mut index, r);
    }
    assert_eq!(index.load(NS, "worker-1"), 5);
    // Deleting the Lease leaves the worker to its Pod's readiness (Ready) again.
    index.delete_heartbeat(NS, &heartbeat::lease_name("worker-2"));
    let next = create_and_place(&mut index, "task-test-4");
    assert_eq!(worker_of(&next), Some("worker-2"));
}

#[test]
fn an_invalid_selector_is_reported_not_guessed() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[])]);
    let mut r = resource("bad", 1);
    r.spec.worker_selector = Some(LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "zone".into(),
            operator: "In".into(),
            values: None,
        }]),
    });
    index.reset_resources(std::slice::from_ref(&r));
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.conditions[0].reason, "InvalidWorkerSelector");
    assert_eq!(worker_of(&r), None);
}

#[test]
fn converts_a_valid_label_selector() {
    let requirement =
        |key: &str, operator: &str, values: Option<&[&str]>| LabelSelectorRequirement {
            key: key.to_owned(),
            operator: operator.to_owned(),
            values: values.map(|values| values.iter().map(|v| (*v).to_owned()).collect()),
        };
    let selector = worker_selector(&LabelSelector {
        match_labels: Some([("app".to_owned(), "crawler".to_owned())].into()),
        match_expressions: Some(vec![
            requirement("zone", "In", Some(&["a", "b"])),
            requirement("gpu", "Exists", None),
            requirement("old", "DoesNotExist", Some(&[])),
        ]),
    })
    .unwrap();
    let expected = WorkerSelector::default()
        .with_label("app", "crawler")
        .with_requirement("zone", crawler_core::Operator::is_in(["a", "b"]))
        .with_requirement("gpu", crawler_core::Operator::Exists)
        .with_requirement("old", crawler_core::Operator::DoesNotExist);
    assert_eq!(selector, expected);
    assert_eq!(
        worker_selector(&LabelSelector::default()).unwrap(),
        WorkerSelector::everything()
    );
}

#[test]
fn deleting_a_resource_lowers_the_load_for_the_next_placement() {
    let (mut index, resources) = two_workers_five_resources();
    let on_1 = resources
        .iter()
        .find(|r| worker_of(r) == Some("worker-1"))
        .unwrap();
    index.delete_resource(NS, &on_1.name_any());
    assert_eq!(index.load(NS, "worker-1"), 2);
    let next = create_and_place(&mut index, "task-test-4");
    // 2/2 now: ties break by name.
    assert_eq!(worker_of(&next), Some("worker-1"));
}

#[test]
fn a_due_heartbeat_expires_only_when_a_read_confirms_no_renewal_since() {
    let (mut index, _) = two_workers_five_resources();
    let t0 = Instant::now();
    index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
    let due_at = t0 + Duration::from_secs(10);
    assert_eq!(
        due_names(&index, due_at),
        vec![(NS.to_owned(), "worker-1".to_owned())]
    );
    // The watch stalled silently: the read finds a renewal it never showed. Not expired; the
    // count starts again from the read.
    let renewed = heartbeat("worker-1", Some("worker-1"), 109);
    assert!(
        index
            .confirm_heartbeat_as_is(NS, "worker-1", Some(&renewed), due_at)
            .is_empty()
    );
    assert!(
        index
            .heartbeats_due(due_at + Duration::from_secs(9))
            .is_empty()
    );
    // Due again, and this time the read shows the same renewal: it expires.
    let again = due_at + Duration::from_secs(10);
    assert_eq!(index.heartbeats_due(again).len(), 1);
    assert_eq!(
        index
            .confirm_heartbeat_as_is(NS, "worker-1", Some(&renewed), again)
            .len(),
        3,
        "worker-1's resources are released"
    );
    assert!(index.heartbeats_due(again).is_empty(), "expired once");
}

/// Issue 21, item 1: the heartbeat watch stalled, so worker-1's renewal r2 was not seen and it
/// became due on r1. The controller reads the Lease (r2) while the watch, back, relists and
/// applies r2. Judged against the entry as it is when the answer arrives, "read == entry" would
/// look like "no renewal since" and expire a worker that is alive. Judged against the renewal it
/// was due on, the read shows a renewal: nothing expires.
#[test]
fn a_read_that_returns_the_renewal_a_relist_just_applied_does_not_expire_the_worker() {
    let (mut index, _) = two_workers_five_resources();
    let t0 = Instant::now();
    index.apply_heartbeat(&heartbeat("worker-1", Some("worker-1"), 100), t0);
    let due_at = t0 + Duration::from_secs(10);
    let due = index.heartbeats_due(due_at);
    assert_eq!(due.len(), 1);
    // The read is in flight when the relist delivers renewal r2.
    let r2 = heartbeat("worker-1", Some("worker-1"), 108);
    index.apply_heartbeat(&r2, due_at + Duration::from_millis(300));
    // The read answers with r2.
    let keys = index.confirm_heartbeat(&due[0], Some(&r2), due_at + Duration::from_millis(500));
    assert!(keys.is_empty(), "{keys:?}");
    assert!(
        !is_due(&index, "worker-1", due_at + Duration::from_secs(5)),
        "alive, counted from r2"
    );
    // Its resources stay where they are.
    assert_eq!(index.load(NS, "worker-1"), 3);
    index.check_loads();
}

/// The same race, and a read that is slower than the next renewal: whatever the index saw of the
/// heartbeat after the due list was taken (a renewal, a deletion) voids the read; a later due
/// list is judged on its own.
#[test]
fn a_read_judges_only_the_heartbeat_it_was_due_on() {
    let (mut index, _) = two_workers_five_resources();
    let t0 = Instant::now();
    let r1 = heartbeat("worker-1", Some("worker-1"), 100);
    index.apply_heartbeat(&r1, t0);
    let due_at = t0 + Duration::from_secs(10);
    let due = index.heartbeats_due(due_at);
    // The Lease was deleted by hand meanwhile (a ghost now): the read, which found r1, is void.
    index.delete_heartbeat(NS, &heartbeat::lease_name("worker-1"));
    assert!(
        index
            .confirm_heartbeat(&due[0], Some(&r1), due_at)
            .is_empty()
    );
    assert!(
        is_due(&index, "worker-1", due_at),
        "due again, on the ghost"
    );
    // The next due list is judged on the ghost: a read that finds no Lease forgets it.
    let due = index.heartbeats_due(due_at + Duration::from_millis(200));
    assert_eq!(
        index.confirm_heartbeat(&due[0], None, due_at + Duration::from_millis(300)),
        Vec::<Key>::new(),
        "worker-1's Pod is ready: judged by it alone, nothing moves"
    );
    assert!(!is_due(
        &index,
        "worker-1",
        due_at + Duration::from_secs(60)
    ));
    // The heartbeat watch failing after the due list was taken voids it too (renewals may have
    // gone unseen): worker-2 is not expired by a read made before the failure was known.
    index.apply_heartbeat(&heartbeat("worker-2", Some("worker-2"), 100), t0);
    let due = index.heartbeats_due(due_at);
    assert_eq!(due.len(), 1);
    index.heartbeats_unseen(due_at + Duration::from_millis(100));
    assert!(
        index
            .confirm_heartbeat(
                &due[0],
                Some(&heartbeat("worker-2", Some("worker-2"), 100)),
                due_at + Duration::from_millis(200)
            )
            .is_empty()
    );
    assert!(!is_due(&index, "worker-2", due_at + Duration::from_secs(5)));
}

#[test]
fn rules_that_cannot_compile_keep_a_resource_off_every_worker() {
    use crate::crd::CONDITION_RULES_VALID;
    let (mut index, mut resources) = two_workers_five_resources();
    let r = &mut resources[0];
    assert_eq!(
        r.status.as_ref().unwrap().condition(CONDITION_RULES_VALID),
        None,
        "no rules, no RulesValid condition"
    );
    r.spec.rules = serde_json::from_value(serde_json::json!([
        {"name": "list", "match": "(/books/", "follow": [{"selector": "a.book", "rule": "book"}]},
        {"name": "book", "fields": {"title": {"selector": "h1[", "required": true}}}
    ]))
    .unwrap();
    r.metadata.generation = Some(2);
    index.apply_resource(r);
    let Plan::Write(w) = place(&mut index, r) else {
        panic!("expected a write")
    };
    assert_eq!(w.status.phase, Some(Phase::Unschedulable));
    assert_eq!(worker_of(r), None);
    let rules = w.status.condition(CONDITION_RULES_VALID).unwrap();
    assert_eq!(
        (rules.status.as_str(), rules.reason.as_str()),
        ("False", "InvalidRules")
    );
    assert!(
        rules
            .message
            .contains(r#"rule "list": match "(/books/": not a valid regular expression"#)
            && rules
                .message
                .contains(r#"rule "book": fields.title.selector "h1[": not a valid CSS selector"#),
        "{}",
        rules.message
    );
    let assigned = w.status.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(assigned.reason, "InvalidRules");
    let event = w.event.as_ref().unwrap();
    assert!(event.warning && event.reason == Reason::InvalidRules);
    assert!(
        event.note.contains("unassigned from worker"),
        "{}",
        event.note
    );
    assert!(matches!(place(&mut index, r), Plan::Nothing), "stable");

    // Fixed: placed again, and the condition says the rules compile.
    r.spec.rules[0].url_match = Some("/books/$".into());
    r.spec.rules[1].fields.get_mut("title").unwrap().selector = "h1".into();
    r.metadata.generation = Some(3);
    index.apply_resource(r);
    let Plan::Write(w) = place(&mut index, r) else {
        panic!("expected a write")
    };
    assert!(worker_of(r).is_some());
    let rules = w.status.condition(CONDITION_RULES_VALID).unwrap();
    assert_eq!(
        (rules.status.as_str(), rules.reason.as_str()),
        ("True", "RulesCompiled")
    );
    assert_eq!(rules.observed_generation, Some(3));
    assert!(matches!(place(&mut index, r), Plan::Nothing), "stable");

    // Rules removed: the condition goes too.
    r.spec.rules.clear();
    r.metadata.generation = Some(4);
    index.apply_resource(r);
    place(&mut index, r);
    assert_eq!(
        r.status.as_ref().unwrap().condition(CONDITION_RULES_VALID),
        None
    );
    assert!(worker_of(r).is_some());
}

// === The handoff ===

/// Two ready workers, each with a live heartbeat, and `a` placed on worker-1.
fn live_workers_and_one_resource() -> (Index, CrawlerResource) {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let now = Instant::now();
    let leases = ["worker-1", "worker-2"].map(|w| heartbeat(w, Some(w), 100));
    for lease in &leases {
        index.apply_heartbeat(lease, now);
    }
    index.finish_heartbeat_list(&listed(&leases), now);
    let mut r = resource("a", 1);
    index.reset_resources(std::slice::from_ref(&r));
    assert!(index.synced());
    place(&mut index, &mut r);
    assert_eq!(worker_of(&r), Some("worker-1"));
    (index, r)
}

/// The old worker's confirmation, as its release code writes it.
fn confirm(index: &mut Index, r: &mut CrawlerResource, worker: &str, assignment: i64) -> Vec<Key> {
    bump_resource_version(r);
    r.status.as_mut().unwrap().progress = Some(crate::crd::TaskProgress {
        worker: worker.to_owned(),
        assignment,
        state: crate::crd::TaskState::Stopped,
        released: true,
        ..Default::default()
    });
    index.apply_resource(r)
}

/// Whether `worker`'s heartbeat is among those the index wants read back at `at`: the check
/// the handoff tests make at each step of a wait.
fn is_due(index: &Index, worker: &str, at: Instant) -> bool {
    due_names(index, at).contains(&(NS.to_owned(), worker.to_owned()))
}

fn due_names(index: &Index, at: Instant) -> Vec<(String, String)> {
    index
        .heartbeats_due(at)
        .into_iter()
        .map(|d| (d.namespace, d.pod))
        .collect()
}

fn phase_of(r: &CrawlerResource) -> Option<Phase> {
    r.status.as_ref()?.phase
}

#[test]
fn a_move_off_a_live_worker_is_released_there_and_placed_only_once_it_confirms() {
    let (mut index, mut r) = live_workers_and_one_resource();
    let key = Key::new(NS, "a");
    assert_eq!(
        index.apply_pod(&pod("worker-1", false, &[])),
        vec![key.clone()]
    );
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the release")
    };
    // Phase one: still on worker-1, same assignment, its load still counted there.
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    assert_eq!(
        (worker_of(&r), w.status.assignments),
        (Some("worker-1"), Some(1))
    );
    assert_eq!(w.assumes, None);
    let condition = w.status.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(condition.reason, "Releasing");
    assert_eq!(
        condition.message,
        "moving off worker worker-1 (its Pod is not ready): waiting for it to confirm the stop \
         or for its heartbeat to lapse"
    );
    assert_eq!(w.event.unwrap().reason, Reason::Releasing);
    assert_eq!(index.load(NS, "worker-1"), 1);
    // Waiting: nothing is written, however often it is reconciled.
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    // A confirmation of another worker or another assignment completes nothing.
    confirm(&mut index, &mut r, "worker-2", 1);
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    confirm(&mut index, &mut r, "worker-1", 0);
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    // worker-1 confirms assignment 1: placed, least loaded, as assignment 2.
    assert_eq!(confirm(&mut index, &mut r, "worker-1", 1), vec![key]);
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the placement")
    };
    assert_eq!(
        (phase_of(&r), worker_of(&r), w.status.assignments),
        (Some(Phase::Assigned), Some("worker-2"), Some(2))
    );
    let event = w.event.unwrap();
    assert_eq!(event.reason, Reason::Reassigned);
    assert!(
        event
            .note
            .contains("moved from worker worker-1 (it confirmed the stop) to worker-2"),
        "{}",
        event.note
    );
    assert_eq!(
        (index.load(NS, "worker-1"), index.load(NS, "worker-2")),
        (0, 1)
    );
}

#[test]
fn a_handoff_completes_when_the_old_workers_heartbeat_lapses_instead() {
    let (mut index, mut r) = live_workers_and_one_resource();
    // The selector changes so that worker-1 no longer matches.
    r.spec.worker_selector = Some(LabelSelector {
        match_labels: Some([("zone".to_owned(), "b".to_owned())].into()),
        match_expressions: None,
    });
    index.apply_resource(&r);
    index.apply_pod(&pod("worker-2", true, &[("zone", "b")]));
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    assert!(
        r.status.as_ref().unwrap().conditions[0]
            .message
            .contains("it no longer matches spec.workerSelector")
    );
    // worker-1 never confirms; its heartbeat lapses (its Pod was ready all along).
    let t0 = Instant::now();
    index.apply_heartbeat(
        &heartbeat("worker-2", Some("worker-2"), 200),
        t0 + Duration::from_secs(9),
    );
    let redo = index.expire_heartbeats(t0 + Duration::from_secs(11));
    assert!(redo.contains(&Key::new(NS, "a")), "{redo:?}");
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the placement")
    };
    assert_eq!(
        (worker_of(&r), w.status.assignments),
        (Some("worker-2"), Some(2))
    );
    assert!(
        w.event
            .unwrap()
            .note
            .contains("(its heartbeat lapsed or was released)")
    );
}

#[test]
fn a_lapse_completes_the_handoff_even_when_the_pod_was_already_unready_or_gone() {
    for gone in [false, true] {
        let (mut index, mut r) = live_workers_and_one_resource();
        if gone {
            index.delete_pod(NS, "worker-1");
        } else {
            index.apply_pod(&pod("worker-1", false, &[]));
        }
        place(&mut index, &mut r);
        assert_eq!(phase_of(&r), Some(Phase::Releasing), "gone: {gone}");
        // Released on SIGTERM: readiness does not change (the Pod was not ready, or is gone),
        // yet the handoff waiting on it is reconciled and completes.
        let redo = index.apply_heartbeat(&heartbeat("worker-1", None, 101), Instant::now());
        assert_eq!(redo, vec![Key::new(NS, "a")], "gone: {gone}");
        place(&mut index, &mut r);
        assert_eq!(worker_of(&r), Some("worker-2"), "gone: {gone}");
    }
}

#[test]
fn suspend_on_a_live_worker_is_released_then_suspended() {
    let (mut index, mut r) = live_workers_and_one_resource();
    r.spec.suspend = true;
    index.apply_resource(&r);
    place(&mut index, &mut r);
    assert_eq!(
        (phase_of(&r), worker_of(&r)),
        (Some(Phase::Releasing), Some("worker-1"))
    );
    assert!(
        r.status.as_ref().unwrap().conditions[0]
            .message
            .contains("(spec.suspend is true)")
    );
    confirm(&mut index, &mut r, "worker-1", 1);
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected Suspended")
    };
    assert_eq!(
        (phase_of(&r), worker_of(&r)),
        (Some(Phase::Suspended), None)
    );
    assert_eq!(w.event.unwrap().reason, Reason::Suspended);
    assert_eq!(index.load(NS, "worker-1"), 0);
    // Unsuspended: a new assignment.
    r.spec.suspend = false;
    index.apply_resource(&r);
    place(&mut index, &mut r);
    assert_eq!(r.status.as_ref().unwrap().assignments, Some(2));
}

#[test]
fn a_move_off_a_worker_whose_heartbeat_is_not_alive_is_one_phase() {
    let (mut index, mut r) = live_workers_and_one_resource();
    // Released (SIGTERM): nothing to wait for.
    index.apply_heartbeat(&heartbeat("worker-1", None, 101), Instant::now());
    place(&mut index, &mut r);
    assert_eq!(
        (phase_of(&r), worker_of(&r)),
        (Some(Phase::Assigned), Some("worker-2"))
    );
    // A worker this index never saw a Lease of (an older worker), with the unseen wait off:
    // judged by its Pod alone, one phase too.
    let (mut index, mut resources) = two_workers_five_resources();
    index.apply_pod(&pod("worker-1", false, &[]));
    for r in &mut resources {
        place(&mut index, r);
    }
    assert!(resources.iter().all(|r| worker_of(r) == Some("worker-2")));
}

#[test]
fn a_release_is_never_taken_back_and_a_requested_move_goes_through_it() {
    let (mut index, mut r) = live_workers_and_one_resource();
    let key = Key::new(NS, "a");
    // The one entry point for moves (a rebalance): not on worker-2, so nothing happens.
    assert!(index.move_off(&key, "worker-2", "rebalance").is_empty());
    assert_eq!(
        index.move_off(
            &key,
            "worker-1",
            "rebalance: worker-1 carries 1 more than worker-2"
        ),
        vec![key.clone()]
    );
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    assert!(
        r.status.as_ref().unwrap().conditions[0]
            .message
            .starts_with("moving off worker worker-1 (rebalance: worker-1 carries 1 more"),
        "{}",
        r.status.as_ref().unwrap().conditions[0].message
    );
    assert!(
        index.move_off(&key, "worker-1", "again").is_empty(),
        "already moving"
    );
    // worker-1 turns unready and ready again meanwhile: still releasing (assignment 1 is over).
    index.apply_pod(&pod("worker-1", false, &[]));
    index.apply_pod(&pod("worker-1", true, &[]));
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    // Confirmed: placed least loaded at that moment, the resource's own weight no longer
    // counted on worker-1 (both carry 0 then; ties break by name).
    confirm(&mut index, &mut r, "worker-1", 1);
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the placement")
    };
    assert_eq!(
        (worker_of(&r), w.status.assignments),
        (Some("worker-1"), Some(2))
    );
    assert!(w.event.unwrap().note.contains("load 0 -> 1"));
    // The request is spent: well placed now, nothing more moves.
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
}

#[test]
fn nothing_is_decided_before_the_heartbeats_have_listed() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[])]);
    index.reset_resources(&[resource("a", 1)]);
    assert!(
        !index.synced(),
        "a live worker's heartbeat is not known yet"
    );
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    assert!(index.synced());
}

// === A heartbeat Lease that disappears ===

fn releasing_message(r: &CrawlerResource) -> String {
    r.status.as_ref().unwrap().conditions[0].message.clone()
}

#[test]
fn a_deleted_lease_keeps_its_worker_alive_until_its_last_renewal_expires_confirmed_by_a_read() {
    let t0 = Instant::now();
    let (mut index, mut r) = live_workers_and_one_resource();
    // Deleted by hand (or garbage-collected after a forced Pod deletion): nothing changes yet.
    assert!(
        index
            .delete_heartbeat(NS, &heartbeat::lease_name("worker-1"))
            .is_empty()
    );
    // A move off it is still a handoff.
    index.apply_pod(&pod("worker-1", false, &[]));
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing), "{:?}", r.status);
    assert_eq!(place(&mut index, &mut r), Plan::Nothing, "waiting");
    // A relist that does not show it changes nothing either.
    let worker_2 = heartbeat("worker-2", Some("worker-2"), 100);
    index.apply_heartbeat(&worker_2, t0);
    assert!(
        index
            .finish_heartbeat_list(&listed(std::slice::from_ref(&worker_2)), t0)
            .is_empty()
    );
    assert_eq!(place(&mut index, &mut r), Plan::Nothing, "still waiting");
    // Due a whole duration after its last renewal was observed, like any heartbeat.
    assert!(!is_due(&index, "worker-1", t0 + Duration::from_secs(9)));
    let due = t0 + Duration::from_secs(11);
    assert!(is_due(&index, "worker-1", due));
    // The read finds no Lease: no renewal since (it would have re-created it). The handoff
    // completes, and the worker is judged by its Pod alone from now on.
    assert_eq!(
        index.confirm_heartbeat_as_is(NS, "worker-1", None, due),
        vec![Key::new(NS, "a")]
    );
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the placement")
    };
    assert_eq!(worker_of(&r), Some("worker-2"));
    let note = w.event.unwrap().note;
    assert!(
        note.contains("moved from worker worker-1 (its Pod is not ready) to worker-2"),
        "{note}"
    );
    assert!(
        !is_due(&index, "worker-1", due + Duration::from_secs(60)),
        "forgotten"
    );
}

#[test]
fn a_worker_that_recreates_its_deleted_lease_is_alive_again_and_confirms() {
    let t0 = Instant::now();
    let (mut index, mut r) = live_workers_and_one_resource();
    index.apply_pod(&pod("worker-1", false, &[]));
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    // The Lease goes while the handoff waits on it: it does not complete at once.
    assert!(
        index
            .delete_heartbeat(NS, &heartbeat::lease_name("worker-1"))
            .is_empty()
    );
    assert_eq!(place(&mut index, &mut r), Plan::Nothing);
    // Its next renewal re-creates it: a renewal like any other.
    index.apply_heartbeat(
        &heartbeat("worker-1", Some("worker-1"), 105),
        t0 + Duration::from_secs(5),
    );
    assert!(
        !is_due(&index, "worker-1", t0 + Duration::from_secs(14)),
        "counted from the re-creation"
    );
    // Deleted again and due: the confirming read finds it re-created once more (the watch did
    // not show it): alive, counted from the read.
    index.delete_heartbeat(NS, &heartbeat::lease_name("worker-1"));
    let due = t0 + Duration::from_secs(16);
    assert!(is_due(&index, "worker-1", due));
    assert!(
        index
            .confirm_heartbeat_as_is(
                NS,
                "worker-1",
                Some(&heartbeat("worker-1", Some("worker-1"), 115)),
                due
            )
            .is_empty()
    );
    assert_eq!(place(&mut index, &mut r), Plan::Nothing, "still alive");
    confirm(&mut index, &mut r, "worker-1", 1);
    let Plan::Write(w) = place(&mut index, &mut r) else {
        panic!("expected the placement")
    };
    assert!(
        w.event.unwrap().note.contains("(it confirmed the stop)"),
        "{}",
        releasing_message(&r)
    );
}

#[test]
fn a_deleted_lease_that_was_released_or_lapsed_is_simply_forgotten() {
    let (mut index, _) = live_workers_and_one_resource();
    index.apply_heartbeat(&heartbeat("worker-1", None, 101), Instant::now());
    index.delete_heartbeat(NS, &heartbeat::lease_name("worker-1"));
    assert!(
        index
            .heartbeats_due(Instant::now() + Duration::from_secs(3600))
            .iter()
            .all(|d| d.pod != "worker-1"),
        "nothing left to wait for"
    );
}

#[test]
fn a_fresh_controller_waits_for_a_lease_it_never_saw_before_judging_by_the_pod_alone() {
    let t0 = Instant::now();
    let mut index = Index::with_unseen_heartbeat_wait(Duration::from_secs(10));
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    // A resource placed on worker-1 by an earlier leader.
    let mut r = resource("a", 1);
    let mut placed = Index::default();
    placed.reset_pods(&[pod("worker-1", true, &[])]);
    placed.finish_heartbeat_list(&HashSet::new(), t0);
    placed.reset_resources(std::slice::from_ref(&r));
    place(&mut placed, &mut r);
    assert_eq!(worker_of(&r), Some("worker-1"));
    index.reset_resources(std::slice::from_ref(&r));
    // No Lease listed for either worker (worker-1's was deleted just before this start).
    index.finish_heartbeat_list(&HashSet::new(), t0);
    assert!(index.synced());
    // worker-2's worker renews: a Lease like any other.
    index.apply_heartbeat(
        &heartbeat("worker-2", Some("worker-2"), 100),
        t0 + Duration::from_secs(1),
    );
    // A move off worker-1 waits: it may still run the task.
    index.apply_pod(&pod("worker-1", false, &[]));
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing), "{:?}", r.status);
    assert_eq!(
        due_names(&index, t0 + Duration::from_secs(9)),
        Vec::<(String, String)>::new()
    );
    let due = t0 + Duration::from_secs(10);
    assert_eq!(
        due_names(&index, due),
        vec![(NS.to_owned(), "worker-1".to_owned())]
    );
    // The read after the wait finds no Lease: judged by its Pod alone; the move completes.
    assert_eq!(
        index.confirm_heartbeat_as_is(NS, "worker-1", None, due),
        vec![Key::new(NS, "a")]
    );
    place(&mut index, &mut r);
    assert_eq!(worker_of(&r), Some("worker-2"));
    assert!(
        releasing_message(&r).contains("(its Pod is not ready)"),
        "{}",
        releasing_message(&r)
    );
    // Known now to have none: no second wait when its Pod changes again.
    index.apply_pod(&pod("worker-1", true, &[]));
    assert!(
        index
            .heartbeats_due(due + Duration::from_secs(60))
            .iter()
            .all(|d| d.pod != "worker-1")
    );
    // A worker Pod first seen after the wait gets a read at once, not another wait.
    index.apply_pod(&pod("worker-3", true, &[]));
    let later = due + Duration::from_secs(30);
    assert!(is_due(&index, "worker-3", later));
    index.confirm_heartbeat_as_is(NS, "worker-3", None, later);
    assert!(!is_due(&index, "worker-3", later));
}

#[test]
fn the_unseen_wait_is_never_shorter_than_the_longest_heartbeat_seen() {
    let t0 = Instant::now();
    let mut index = Index::with_unseen_heartbeat_wait(Duration::from_secs(10));
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let mut long = heartbeat("worker-2", Some("worker-2"), 100);
    long.spec.as_mut().unwrap().lease_duration_seconds = Some(30);
    index.apply_heartbeat(&long, t0);
    index.finish_heartbeat_list(&listed(std::slice::from_ref(&long)), t0);
    assert!(
        index
            .heartbeats_due(t0 + Duration::from_secs(29))
            .is_empty()
    );
    assert_eq!(index.heartbeats_due(t0 + Duration::from_secs(30)).len(), 2);
}

// === An object created again under a deleted one's name ===

/// `a` again: another object (another uid) under the same name.
fn successor(r: &CrawlerResource) -> CrawlerResource {
    let mut next = resource(&r.name_any(), 1);
    next.metadata.uid = Some("uid-a-again".into());
    next.metadata.resource_version = Some("50".into());
    next
}

#[test]
fn an_object_created_again_under_a_deleted_ones_name_is_placed_only_after_the_hold() {
    let (mut index, r) = live_workers_and_one_resource();
    // Deleted while on worker-1 (whose view may lag by up to the freshness bound), created
    // again at once: it waits, without a write.
    index.delete_resource(NS, "a");
    let mut next = successor(&r);
    assert_eq!(index.apply_resource(&next), vec![Key::new(NS, "a")]);
    assert_eq!(place(&mut index, &mut next), Plan::Wait);
    let t0 = Instant::now();
    assert!(index.successors_due(t0).is_empty(), "the hold starts here");
    // worker-1's Lease says 10 s: a 3 s watch cycle, stale after 6 s, plus a second.
    let hold = heartbeat::successor_hold(Duration::from_secs(10));
    assert_eq!(hold, Duration::from_secs(7));
    assert!(
        index
            .successors_due(t0 + hold.saturating_sub(Duration::from_millis(1)))
            .is_empty()
    );
    assert_eq!(place(&mut index, &mut next), Plan::Wait);
    assert_eq!(index.successors_due(t0 + hold), vec![Key::new(NS, "a")]);
    let Plan::Write(w) = place(&mut index, &mut next) else {
        panic!("expected the placement")
    };
    assert_eq!(w.status.assignments, Some(1));
    assert!(worker_of(&next).is_some());
    // The hold is spent: the same object is decided as usual from now on.
    assert_eq!(place(&mut index, &mut next), Plan::Nothing);
}

#[test]
fn a_relist_that_shows_another_object_under_the_name_holds_it_back_too() {
    let (mut index, r) = live_workers_and_one_resource();
    // The watch was down across the delete and the create: the relist shows only the new one.
    let mut next = successor(&r);
    index.reset_resources(std::slice::from_ref(&next));
    index.check_loads();
    assert_eq!(
        index.load(NS, "worker-1"),
        0,
        "the old object's weight went"
    );
    assert_eq!(place(&mut index, &mut next), Plan::Wait);
    // worker-1's heartbeat is released (it stopped every task): the hold ends at once.
    let redo = index.apply_heartbeat(&heartbeat("worker-1", None, 101), Instant::now());
    assert!(redo.contains(&Key::new(NS, "a")), "{redo:?}");
    place(&mut index, &mut next);
    assert_eq!(worker_of(&next), Some("worker-2"));
}

#[test]
fn no_hold_when_the_old_worker_cannot_be_running_the_task() {
    // Its heartbeat had lapsed (released) before the delete.
    let (mut index, r) = live_workers_and_one_resource();
    index.apply_heartbeat(&heartbeat("worker-1", None, 101), Instant::now());
    index.delete_resource(NS, "a");
    let mut next = successor(&r);
    index.apply_resource(&next);
    assert!(matches!(place(&mut index, &mut next), Plan::Write(_)));
    // It was suspended through a confirmed release (unassigned) before the delete.
    let (mut index, mut r) = live_workers_and_one_resource();
    r.spec.suspend = true;
    index.apply_resource(&r);
    place(&mut index, &mut r);
    confirm(&mut index, &mut r, "worker-1", 1);
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Suspended));
    index.delete_resource(NS, "a");
    let mut next = successor(&r);
    index.apply_resource(&next);
    assert!(matches!(place(&mut index, &mut next), Plan::Write(_)));
}

mod handoff_properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Clone, Debug)]
    enum Step {
        PodReady(usize, bool),
        Lapse(usize),
        Renew(usize),
        Confirm,
        Suspend(bool),
        MoveOff(usize),
        /// The Lease is deleted (by hand, or garbage-collected): the worker may still run.
        DeleteLease(usize),
        /// A read after the heartbeat became due finds no Lease.
        ReadFindsNone(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, any::<bool>()).prop_map(|(w, r)| Step::PodReady(w, r)),
            (0..3usize).prop_map(Step::Lapse),
            (0..3usize).prop_map(Step::Renew),
            Just(Step::Confirm),
            any::<bool>().prop_map(Step::Suspend),
            (0..3usize).prop_map(Step::MoveOff),
            (0..3usize).prop_map(Step::DeleteLease),
            (0..3usize).prop_map(Step::ReadFindsNone),
        ]
    }

    const WORKERS: [&str; 3] = ["worker-1", "worker-2", "worker-3"];

    proptest! {
        /// Whatever happens to workers, heartbeats and the spec, a resource leaves a worker
        /// only when that worker confirmed the stop of that very assignment or its heartbeat
        /// is not alive; loads stay derived from the assignments; and a handoff completes as
        /// soon as its worker confirms.
        #[test]
        fn a_resource_leaves_a_live_worker_only_after_its_confirmation(
            steps in proptest::collection::vec(step(), 1..40)
        ) {
            let mut index = Index::default();
            index.reset_pods(&WORKERS.map(|w| pod(w, true, &[])));
            let t0 = Instant::now();
            let mut clock = 0u64;
            let mut renewed = 100;
            let leases = WORKERS.map(|w| heartbeat(w, Some(w), renewed));
            for lease in &leases {
                index.apply_heartbeat(lease, t0);
            }
            index.finish_heartbeat_list(&listed(&leases), t0);
            let mut r = resource("a", 1);
            index.reset_resources(std::slice::from_ref(&r));
            place(&mut index, &mut r);
            // (worker, assignment) confirmed, and whether each heartbeat is alive.
            let mut confirmed: Option<(String, i64)> = None;
            let mut alive = [true; 3];
            for step in steps {
                clock += 1;
                let now = t0 + Duration::from_secs(clock * 20);
                match step {
                    Step::PodReady(w, ready) => { index.apply_pod(&pod(WORKERS[w], ready, &[])); }
                    Step::Lapse(w) => {
                        index.apply_heartbeat(&heartbeat(WORKERS[w], None, renewed), now);
                        alive[w] = false;
                    }
                    Step::Renew(w) => {
                        renewed += 1;
                        index.apply_heartbeat(&heartbeat(WORKERS[w], Some(WORKERS[w]), renewed), now);
                        alive[w] = true;
                    }
                    Step::Confirm => {
                        let status = r.status.clone().unwrap_or_default();
                        if status.phase == Some(Phase::Releasing) {
                            let w = status.assigned_worker.unwrap();
                            let n = status.assignments.unwrap();
                            confirm(&mut index, &mut r, &w, n);
                            confirmed = Some((w, n));
                        }
                    }
                    Step::Suspend(s) => { r.spec.suspend = s; index.apply_resource(&r); }
                    Step::MoveOff(w) => { index.move_off(&Key::new(NS, "a"), WORKERS[w], "asked"); }
                    Step::DeleteLease(w) => {
                        index.delete_heartbeat(NS, &heartbeat::lease_name(WORKERS[w]));
                    }
                    Step::ReadFindsNone(w) => {
                        index.confirm_heartbeat_as_is(NS, WORKERS[w], None, now);
                        alive[w] = false;
                    }
                }
                let before = r.status.clone().unwrap_or_default();
                place(&mut index, &mut r);
                let after = r.status.clone().unwrap_or_default();
                if let Some(old) = &before.assigned_worker
                    && after.assigned_worker.as_ref() != Some(old)
                {
                    let w = WORKERS.iter().position(|x| x == old).unwrap();
                    let by_confirmation = before.phase == Some(Phase::Releasing)
                        && confirmed == Some((old.clone(), before.assignments.unwrap()));
                    prop_assert!(by_confirmation || !alive[w],
                        "left live {old} without its confirmation: {before:?} -> {after:?}");
                }
                if after.assigned_worker != before.assigned_worker
                    || after.assignments != before.assignments
                {
                    prop_assert!(after.assignments >= before.assignments);
                }
                if before.phase == Some(Phase::Releasing)
                    && confirmed == Some((before.assigned_worker.clone().unwrap(), before.assignments.unwrap()))
                {
                    prop_assert_ne!(after.phase, Some(Phase::Releasing), "a confirmed handoff completes");
                }
            }
        }
    }
}

// === Rebalance ===

const EVEN_OUT: crawler_core::Hysteresis = crawler_core::Hysteresis {
    threshold: 2,
    cooldown: Duration::from_secs(60),
};

fn later(seconds: i64) -> PlanContext<'static> {
    PlanContext {
        now: ctx(&LeastLoaded).now + jiff::SignedDuration::from_secs(seconds),
        ..ctx(&LeastLoaded)
    }
}

/// `worker-1` holds nine resources placed at `ctx().now`; `worker-2` and `worker-3` join empty.
/// With `heartbeats`, every worker has a live heartbeat, so a move off one is a handoff.
fn one_worker_holding_nine(heartbeats: bool) -> (Index, Vec<CrawlerResource>) {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[])]);
    let leases: Vec<Lease> = if heartbeats {
        ["worker-1", "worker-2", "worker-3"]
            .iter()
            .map(|w| heartbeat(w, Some(w), 100))
            .collect()
    } else {
        Vec::new()
    };
    for lease in &leases {
        index.apply_heartbeat(lease, Instant::now());
    }
    index.finish_heartbeat_list(&listed(&leases), Instant::now());
    let mut resources: Vec<CrawlerResource> =
        (0..9).map(|i| resource(&format!("task-{i}"), 1)).collect();
    index.reset_resources(&resources);
    for r in &mut resources {
        place(&mut index, r);
    }
    index.apply_pod(&pod("worker-2", true, &[]));
    index.apply_pod(&pod("worker-3", true, &[]));
    (index, resources)
}

fn loads_of(index: &Index) -> (Load, Load, Load) {
    (
        index.load(NS, "worker-1"),
        index.load(NS, "worker-2"),
        index.load(NS, "worker-3"),
    )
}

fn named<'r>(resources: &'r mut [CrawlerResource], key: &Key) -> &'r mut CrawlerResource {
    resources
        .iter_mut()
        .find(|r| r.name_any() == key.name)
        .unwrap()
}

#[test]
fn rebalance_requests_moves_that_placement_makes_once_tasks_cooled_down() {
    // No heartbeats: a move is one-phase (nothing to wait for).
    let (mut index, mut resources) = one_worker_holding_nine(false);
    // Placed just now: within the cooldown nothing moves.
    assert!(
        index
            .rebalance(&ctx(&LeastLoaded), EVEN_OUT, 100)
            .is_empty()
    );

    let after = later(60);
    let keys = index.rebalance(&after, EVEN_OUT, 2);
    assert_eq!(
        keys,
        [Key::new(NS, "task-0"), Key::new(NS, "task-1")],
        "the budget caps the moves; ties go to the smallest name"
    );
    // Only requested: the loads are what the resources say until the moves are made, and no
    // more moves are planned on them meanwhile.
    assert_eq!(loads_of(&index), (9, 0, 0));
    assert!(index.rebalance(&after, EVEN_OUT, 100).is_empty());

    let Plan::Write(w) = place_at(&mut index, named(&mut resources, &keys[0]), &after) else {
        panic!("expected the move")
    };
    assert_eq!(w.status.assigned_worker.as_deref(), Some("worker-2"));
    assert_eq!(w.status.assignments, Some(2), "one more assignment");
    assert_eq!(w.status.assigned_at, Some(Time(after.now)));
    let condition = w.status.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Rebalanced")
    );
    let event = w.event.unwrap();
    assert_eq!(event.reason, Reason::Rebalanced);
    assert_eq!(
        event.note,
        "moved from worker worker-1 (to even out load: worker-1 carries 9, worker-2 carries 0, \
         more than 2 apart (rebalance)) to worker-2 by LeastLoaded: load 0 -> 1 of unbounded"
    );
    assert_eq!(
        Reason::Rebalanced.assignment(),
        Some(crate::telemetry::AssignmentKind::Rebalanced)
    );
    place_at(&mut index, named(&mut resources, &keys[1]), &after);
    assert_eq!(loads_of(&index), (7, 1, 1));

    // Round after round until the loads are within the threshold; moved tasks cool down.
    loop {
        let keys = index.rebalance(&after, EVEN_OUT, 100);
        if keys.is_empty() {
            break;
        }
        for key in &keys {
            place_at(&mut index, named(&mut resources, key), &after);
        }
    }
    assert_eq!(loads_of(&index), (4, 3, 2));
    // Ordinary reconciles keep them where the rebalance put them: nothing to write.
    for r in &mut resources {
        assert_eq!(
            place_at(&mut index, r, &after),
            Plan::Nothing,
            "{}",
            r.name_any()
        );
    }
}

#[test]
fn a_rebalance_move_off_a_live_worker_is_a_handoff() {
    let (mut index, mut resources) = one_worker_holding_nine(true);
    let after = later(60);
    let keys = index.rebalance(&after, EVEN_OUT, 1);
    assert_eq!(keys, [Key::new(NS, "task-0")]);
    let r = named(&mut resources, &keys[0]);
    // Phase one: released on worker-1, still counted there.
    let Plan::Write(w) = place_at(&mut index, r, &after) else {
        panic!("expected the release")
    };
    assert_eq!(phase_of(r), Some(Phase::Releasing));
    assert_eq!(w.assumes, None);
    assert_eq!(
        w.status.condition(CONDITION_ASSIGNED).unwrap().message,
        "moving off worker worker-1 (to even out load: worker-1 carries 9, worker-2 carries 0, \
         more than 2 apart (rebalance)): waiting for it to confirm the stop or for its heartbeat \
         to lapse"
    );
    assert_eq!(loads_of(&index), (9, 0, 0));
    // While it is handed off, the namespace's loads are about to change: no new moves.
    assert!(index.rebalance(&after, EVEN_OUT, 100).is_empty());
    assert_eq!(place_at(&mut index, r, &after), Plan::Nothing);
    // worker-1 confirms: placed where the planner meant, reason Rebalanced.
    confirm(&mut index, r, "worker-1", 1);
    let Plan::Write(w) = place_at(&mut index, r, &after) else {
        panic!("expected the placement")
    };
    assert_eq!(worker_of(r), Some("worker-2"));
    let event = w.event.unwrap();
    assert_eq!(event.reason, Reason::Rebalanced);
    assert!(
        event
            .note
            .starts_with("moved from worker worker-1 (it confirmed the stop) to worker-2"),
        "{}",
        event.note
    );
    assert_eq!(loads_of(&index), (8, 1, 0));
    // Settled: the next wave.
    assert_eq!(
        index.rebalance(&after, EVEN_OUT, 1),
        [Key::new(NS, "task-1")]
    );
}

#[test]
fn rebalance_leaves_suspended_mismatched_and_lost_resources_to_placement() {
    let mut index = Index::default();
    index.reset_pods(&[
        pod("worker-1", true, &[("gpu", "true")]),
        pod("worker-2", true, &[]),
    ]);
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    let mut resources: Vec<CrawlerResource> = (0..6)
        .map(|i| {
            let mut r = resource(&format!("task-{i}"), 1);
            r.spec.worker_selector = Some(LabelSelector {
                match_labels: Some([("gpu".to_owned(), "true".to_owned())].into()),
                ..LabelSelector::default()
            });
            r
        })
        .collect();
    index.reset_resources(&resources);
    for r in &mut resources {
        place(&mut index, r);
    }
    assert_eq!(index.load(NS, "worker-1"), 6);
    let after = later(3600);
    // worker-2 may not take any of them: nothing moves, however uneven.
    assert!(index.rebalance(&after, EVEN_OUT, 100).is_empty());

    // Two of them may now run anywhere, one of those is suspended.
    for (i, suspend) in [(0, true), (1, false)] {
        let r = &mut resources[i];
        r.spec.worker_selector = None;
        r.spec.suspend = suspend;
        r.metadata.generation = Some(2);
        index.apply_resource(r);
        place(&mut index, r);
    }
    assert_eq!(
        index.rebalance(&after, EVEN_OUT, 100),
        [Key::new(NS, "task-1")],
        "the suspended one is not a task to move"
    );

    // A worker that is not ready gives nothing to the rebalance (placement moves its work).
    let (mut index, _) = one_worker_holding_nine(false);
    index.apply_pod(&pod("worker-1", false, &[]));
    assert!(index.rebalance(&later(3600), EVEN_OUT, 100).is_empty());
}

/// Issue 21, item 5, as a user met it: worker-1 (capacity 1) runs R1; R2 may only run on
/// worker-1 and waits (`Unschedulable`); R1's selector changes so that it moves to worker-2
/// through the handoff. The room R1 leaves on worker-1 must be offered to R2 at once: no
/// unrelated Pod event may be needed. Every key an index call hands the controller to queue is
/// collected, as the controller queues them.
#[test]
fn room_freed_by_a_handoff_is_offered_to_the_resource_waiting_for_it() {
    let zone = |z: &str| {
        Some(LabelSelector {
            match_labels: Some([("zone".to_owned(), z.to_owned())].into()),
            match_expressions: None,
        })
    };
    let mut index = Index::default();
    let mut w1 = pod("worker-1", true, &[("zone", "a")]);
    w1.metadata.annotations = Some([(CAPACITY_ANNOTATION.to_owned(), "1".to_owned())].into());
    index.reset_pods(&[w1, pod("worker-2", true, &[("zone", "b")])]);
    let now = Instant::now();
    let leases = ["worker-1", "worker-2"].map(|w| heartbeat(w, Some(w), 100));
    for lease in &leases {
        index.apply_heartbeat(lease, now);
    }
    index.finish_heartbeat_list(&listed(&leases), now);
    let mut r1 = resource("r1", 1);
    r1.spec.worker_selector = zone("a");
    let mut r2 = resource("r2", 1);
    r2.spec.worker_selector = zone("a");
    index.reset_resources(&[r1.clone(), r2.clone()]);
    place(&mut index, &mut r1);
    assert_eq!(worker_of(&r1), Some("worker-1"));
    place(&mut index, &mut r2);
    assert_eq!(phase_of(&r2), Some(Phase::Unschedulable));
    assert!(index.room_freed().is_empty(), "nothing left worker-1 yet");

    // R1 now selects zone b: released on worker-1, confirmed, placed on worker-2.
    let mut queued = Vec::new();
    r1.spec.worker_selector = zone("b");
    bump_resource_version(&mut r1);
    queued.extend(index.apply_resource(&r1));
    place(&mut index, &mut r1);
    assert_eq!(phase_of(&r1), Some(Phase::Releasing));
    queued.extend(confirm(&mut index, &mut r1, "worker-1", 1));
    let key = Key::new(NS, "r1");
    let Plan::Write(w) = index.plan(&key, &ctx(&LeastLoaded)) else {
        panic!("expected the placement on worker-2")
    };
    assert_eq!(w.status.assigned_worker.as_deref(), Some("worker-2"));
    // The watch has not shown the write yet: the decision is assumed, worker-1 is empty.
    assert_eq!(index.load(NS, "worker-1"), 0);
    queued.extend(index.room_freed());
    assert!(
        queued.contains(&Key::new(NS, "r2")),
        "R2 must be queued when R1's room on worker-1 is freed: {queued:?}"
    );
    let Plan::Write(w) = index.plan(&Key::new(NS, "r2"), &ctx(&LeastLoaded)) else {
        panic!("expected R2's placement")
    };
    assert_eq!(w.status.assigned_worker.as_deref(), Some("worker-1"));
    index.check_loads();
}

/// Room freed by a failed write (the decision forgotten) and by a deletion is offered too, once.
#[test]
fn room_freed_by_a_forgotten_decision_or_a_deletion_is_offered_once() {
    let mut index = Index::default();
    let mut w1 = pod("worker-1", true, &[]);
    w1.metadata.annotations = Some([(CAPACITY_ANNOTATION.to_owned(), "1".to_owned())].into());
    index.reset_pods(&[w1]);
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    let (mut a, mut b) = (resource("a", 1), resource("b", 1));
    index.reset_resources(&[a.clone(), b.clone()]);
    // a's placement is decided (assumed), then its write fails.
    let Plan::Write(_) = index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded)) else {
        panic!("expected a's placement")
    };
    place(&mut index, &mut b);
    assert_eq!(phase_of(&b), Some(Phase::Unschedulable), "worker-1 is full");
    assert!(index.room_freed().is_empty());
    index.forget(&Key::new(NS, "a"));
    let freed = index.room_freed();
    assert!(freed.contains(&Key::new(NS, "b")), "{freed:?}");
    assert!(index.room_freed().is_empty(), "offered once");
    place(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-1"));
    place(&mut index, &mut a);
    assert_eq!(phase_of(&a), Some(Phase::Unschedulable));
    // b is deleted: a is offered the room.
    index.delete_resource(NS, "b");
    assert!(index.room_freed().contains(&Key::new(NS, "a")));
    place(&mut index, &mut a);
    assert_eq!(worker_of(&a), Some("worker-1"));
    index.check_loads();
}

/// Issue 21, item 7: a resource deleted while our placement of it was written but not yet shown
/// by the watch may already run on that worker: it leaves a tombstone like any assigned one.
#[test]
fn a_resource_deleted_before_the_watch_showed_its_placement_holds_back_its_successor() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[])]);
    let now = Instant::now();
    let lease = heartbeat("worker-1", Some("worker-1"), 100);
    index.apply_heartbeat(&lease, now);
    index.finish_heartbeat_list(&listed(std::slice::from_ref(&lease)), now);
    let r = resource("a", 1);
    index.reset_resources(std::slice::from_ref(&r));
    let Plan::Write(_) = index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded)) else {
        panic!("expected the placement")
    };
    index.written(&Key::new(NS, "a"), Some("2".into()));
    // Deleted (the watch shows the deletion, never the placement), then created again.
    index.delete_resource(NS, "a");
    let mut again = resource("a", 1);
    again.metadata.uid = Some("uid-a-2".into());
    index.apply_resource(&again);
    assert_eq!(
        index.plan(&Key::new(NS, "a"), &ctx(&LeastLoaded)),
        Plan::Wait,
        "held back while worker-1 may still run the deleted one"
    );
}

/// Issue 21, item 7: a move asked for in one term (by its rebalance, within its budget) and not
/// yet under way is forgotten when leadership is lost: it never runs in a later term, outside
/// that term's budget. A move already under way (`Releasing`, in status) completes as usual.
#[test]
fn a_move_asked_for_in_a_lost_term_is_not_carried_into_the_next() {
    let (mut index, mut r) = live_workers_and_one_resource();
    let key = Key::new(NS, "a");
    assert_eq!(
        index.move_off(&key, "worker-1", "rebalance"),
        vec![key.clone()]
    );
    // Leadership is lost before the reconcile ran; a later term plans the resource.
    assert_eq!(index.forget_move_requests(), 1);
    assert_eq!(
        place(&mut index, &mut r),
        Plan::Nothing,
        "well placed: stays"
    );
    assert_eq!(worker_of(&r), Some("worker-1"));
    assert_eq!(phase_of(&r), Some(Phase::Assigned));
    // Under way already: the release is in status and goes on whoever leads.
    index.move_off(&key, "worker-1", "rebalance");
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    assert_eq!(index.forget_move_requests(), 1);
    assert_eq!(place(&mut index, &mut r), Plan::Nothing, "still releasing");
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
}

// === Finished crawls (issue 23) ===

/// The worker's report that `r`'s run of assignment `assignment` and spec `generation` ended in
/// `state`, as the worker's reporter writes it; the watch shows it to the index.
fn report(
    index: &mut Index,
    r: &mut CrawlerResource,
    (worker, assignment, generation): (&str, i64, Option<i64>),
    state: crate::crd::TaskState,
) -> Vec<Key> {
    bump_resource_version(r);
    r.status.as_mut().unwrap().progress = Some(crate::crd::TaskProgress {
        worker: worker.to_owned(),
        assignment,
        state,
        generation,
        pages_fetched: 15,
        ..Default::default()
    });
    index.apply_resource(r)
}

fn completed(index: &mut Index, r: &mut CrawlerResource) -> Vec<Key> {
    let status = r.status.clone().unwrap();
    let worker = status.assigned_worker.unwrap();
    report(
        index,
        r,
        (&worker, status.assignments.unwrap(), r.metadata.generation),
        crate::crd::TaskState::Completed,
    )
}

/// One worker of capacity 1 (heartbeat alive), `a` placed on it, `b` waiting.
fn full_worker_and_one_waiting() -> (Index, CrawlerResource, CrawlerResource) {
    let mut index = Index::default();
    let mut w1 = pod("worker-1", true, &[]);
    w1.metadata.annotations = Some([(CAPACITY_ANNOTATION.to_owned(), "1".to_owned())].into());
    index.reset_pods(&[w1]);
    let now = Instant::now();
    let lease = heartbeat("worker-1", Some("worker-1"), 100);
    index.apply_heartbeat(&lease, now);
    index.finish_heartbeat_list(&listed(std::slice::from_ref(&lease)), now);
    let (mut a, mut b) = (resource("a", 1), resource("b", 1));
    index.reset_resources(&[a.clone(), b.clone()]);
    place(&mut index, &mut a);
    assert_eq!(worker_of(&a), Some("worker-1"));
    place(&mut index, &mut b);
    assert_eq!(phase_of(&b), Some(Phase::Unschedulable), "worker-1 is full");
    assert!(index.room_freed().is_empty());
    (index, a, b)
}

/// Issue 23: a crawl whose run completed frees its worker's room at once, and the resource
/// waiting for that room is offered it (the 200 ms tick drains `room_freed`).
#[test]
fn a_completed_run_ends_the_crawl_and_frees_its_room_for_the_resource_waiting() {
    let (mut index, mut a, mut b) = full_worker_and_one_waiting();
    let mut queued = completed(&mut index, &mut a);
    assert_eq!(
        index.load(NS, "worker-1"),
        1,
        "counted until the controller ends it"
    );
    let Plan::Write(w) = place(&mut index, &mut a) else {
        panic!("expected the end of the crawl")
    };
    let s = &w.status;
    assert_eq!(s.phase, Some(Phase::Succeeded));
    assert_eq!(
        s.assigned_worker, None,
        "no worker's assignment watch shows it any more"
    );
    assert_eq!(
        (s.assigned_address.as_ref(), s.assigned_at.as_ref()),
        (None, None)
    );
    assert_eq!(s.assignments, Some(1), "the assignment number is kept");
    assert_eq!(s.last_worker.as_deref(), Some("worker-1"));
    assert_eq!(s.completed_generation, Some(1));
    assert_eq!(s.completed_at, Some(Time(ctx(&LeastLoaded).now)));
    let assigned = s.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(
        (assigned.status.as_str(), assigned.reason.as_str()),
        ("False", "Completed")
    );
    let event = w.event.unwrap();
    assert_eq!((event.warning, event.reason), (false, Reason::Completed));
    assert!(
        event
            .note
            .contains("finished on worker worker-1 (assignment 1, 15 pages)"),
        "{}",
        event.note
    );
    assert_eq!(w.assumes, None);
    assert_eq!(index.load(NS, "worker-1"), 0, "it counts nowhere");
    queued.extend(index.room_freed());
    assert!(queued.contains(&Key::new(NS, "b")), "{queued:?}");
    assert!(!queued.contains(&Key::new(NS, "a")) || place(&mut index, &mut a) == Plan::Nothing);
    place(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-1"));
    assert_eq!(place(&mut index, &mut a), Plan::Nothing);
    index.check_loads();
}

/// Only the assigned worker's `Completed` report of the current assignment, for the current
/// spec, ends a crawl: older runs' reports, other states, and reports without a generation (an
/// older worker) leave it where it is.
#[test]
fn only_a_completed_report_of_the_current_assignment_and_spec_ends_the_crawl() {
    use crate::crd::TaskState::{Completed, Running, Stopped};
    // (what, (worker, assignment, generation) reported, state, whether it ends the crawl)
    type Case = (
        &'static str,
        (&'static str, i64, Option<i64>),
        crate::crd::TaskState,
        bool,
    );
    // A `Failed` report unassigns too, but backs off (see the Job fields' tests below).
    let cases: [Case; 7] = [
        (
            "this run completed",
            ("worker-1", 1, Some(1)),
            Completed,
            true,
        ),
        ("running", ("worker-1", 1, Some(1)), Running, false),
        ("stopped", ("worker-1", 1, Some(1)), Stopped, false),
        (
            "another worker's report",
            ("worker-2", 1, Some(1)),
            Completed,
            false,
        ),
        (
            "an older assignment's report",
            ("worker-1", 0, Some(1)),
            Completed,
            false,
        ),
        (
            "an earlier spec's run",
            ("worker-1", 1, Some(0)),
            Completed,
            false,
        ),
        (
            "a report without a generation",
            ("worker-1", 1, None),
            Completed,
            false,
        ),
    ];
    for (what, run, state, ends) in cases {
        let (mut index, mut a, _) = full_worker_and_one_waiting();
        report(&mut index, &mut a, run, state);
        place(&mut index, &mut a);
        assert_eq!(phase_of(&a) == Some(Phase::Succeeded), ends, "{what}");
        assert_eq!(worker_of(&a).is_none(), ends, "{what}");
        assert_eq!(index.load(NS, "worker-1"), u64::from(!ends), "{what}");
    }
}

/// A succeeded crawl is never placed again: not when its worker's Pod goes and comes back, not
/// when its heartbeat lapses, not by a new leader's full pass over a fresh index, not by the
/// safety resync of waiting resources.
#[test]
fn a_succeeded_crawl_is_never_placed_again_by_a_restart_a_lapse_or_a_new_leader() {
    let (mut index, mut a, mut b) = full_worker_and_one_waiting();
    completed(&mut index, &mut a);
    place(&mut index, &mut a);
    place(&mut index, &mut b);
    let succeeded = a.status.clone();
    let mut queued = index.delete_pod(NS, "worker-1");
    queued.extend(index.apply_pod(&pod("worker-1", true, &[])));
    queued.extend(index.apply_heartbeat(&heartbeat("worker-1", None, 100), Instant::now()));
    queued.extend(index.room_freed());
    queued.extend(index.all_waiting());
    queued.extend(index.all_keys());
    for key in queued.iter().filter(|k| k.name == "a") {
        assert!(matches!(index.plan(key, &ctx(&LeastLoaded)), Plan::Nothing));
    }
    assert!(!index.all_waiting().contains(&Key::new(NS, "a")));
    assert_eq!(a.status, succeeded);

    // A new leader: a fresh index over the same objects writes nothing for it.
    let mut fresh = Index::default();
    fresh.reset_pods(&[pod("worker-1", true, &[])]);
    fresh.finish_heartbeat_list(&HashSet::new(), Instant::now());
    fresh.reset_resources(&[a.clone(), b.clone()]);
    assert_eq!(place(&mut fresh, &mut a), Plan::Nothing);
    assert!(!fresh.all_waiting().contains(&Key::new(NS, "a")));
    assert_eq!(fresh.load(NS, "worker-1"), 1, "b only");
}

/// A run that completes while its resource is being moved off a live worker (phase
/// `Releasing`) or after its worker lapsed still ends the crawl: it is not placed elsewhere.
#[test]
fn a_run_that_completed_is_not_moved_whatever_its_worker_does_meanwhile() {
    let (mut index, mut r) = live_workers_and_one_resource();
    index.move_off(&Key::new(NS, "a"), "worker-1", "asked");
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Releasing));
    completed(&mut index, &mut r);
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Succeeded));
    assert_eq!(worker_of(&r), None);

    let (mut index, mut r) = live_workers_and_one_resource();
    completed(&mut index, &mut r);
    index.delete_pod(NS, "worker-1");
    index.apply_heartbeat(&heartbeat("worker-1", None, 100), Instant::now());
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Succeeded));
    assert_eq!(
        r.status.as_ref().unwrap().last_worker.as_deref(),
        Some("worker-1")
    );
    index.check_loads();
}

/// What runs a finished crawl again: a spec change (a generation above the one that finished).
/// The new run is a new assignment; its own completion ends it again, for the new generation.
/// Suspending a finished crawl is a spec change too: it shows `Suspended`, and runs once resumed.
#[test]
fn a_spec_change_runs_a_succeeded_crawl_again() {
    let (mut index, mut a, mut b) = full_worker_and_one_waiting();
    completed(&mut index, &mut a);
    place(&mut index, &mut a);
    index.delete_resource(NS, "b");
    let _ = &mut b;

    a.spec.max_depth = 3;
    a.metadata.generation = Some(2);
    bump_resource_version(&mut a);
    let queued = index.apply_resource(&a);
    assert!(queued.contains(&Key::new(NS, "a")));
    let Plan::Write(w) = place(&mut index, &mut a) else {
        panic!("expected a new placement")
    };
    assert_eq!(w.status.phase, Some(Phase::Assigned));
    assert_eq!(w.status.assignments, Some(2));
    assert_eq!(
        w.status.completed_generation,
        Some(1),
        "the last completed run stays told"
    );
    assert_eq!(index.load(NS, "worker-1"), 1);
    completed(&mut index, &mut a);
    place(&mut index, &mut a);
    let s = a.status.clone().unwrap();
    assert_eq!(
        (s.phase, s.completed_generation, s.assignments),
        (Some(Phase::Succeeded), Some(2), Some(2))
    );

    a.spec.suspend = true;
    a.metadata.generation = Some(3);
    bump_resource_version(&mut a);
    index.apply_resource(&a);
    place(&mut index, &mut a);
    assert_eq!(phase_of(&a), Some(Phase::Suspended));
    a.spec.suspend = false;
    a.metadata.generation = Some(4);
    bump_resource_version(&mut a);
    index.apply_resource(&a);
    place(&mut index, &mut a);
    assert_eq!(worker_of(&a), Some("worker-1"));
    index.check_loads();
}

// === Job fields: backoffLimit, activeDeadlineSeconds, ttlSecondsAfterFinished (issue 23) ===

/// The assigned worker reports its current run `Failed` (with `reason`).
fn failed_run(index: &mut Index, r: &mut CrawlerResource, reason: &str) -> Vec<Key> {
    let status = r.status.clone().unwrap();
    let worker = status.assigned_worker.unwrap();
    bump_resource_version(r);
    r.status.as_mut().unwrap().progress = Some(crate::crd::TaskProgress {
        worker,
        assignment: status.assignments.unwrap(),
        state: crate::crd::TaskState::Failed,
        generation: r.metadata.generation,
        message: Some("Secret \"c\" not found".to_owned()),
        reason: Some(reason.to_owned()),
        ..Default::default()
    });
    index.apply_resource(r)
}

#[test]
fn the_backoff_doubles_from_its_base_up_to_its_cap_as_a_jobs() {
    let delays: Vec<u64> = (1..=9)
        .map(|n| RetryBackoff::default().delay(n).as_secs())
        .collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 320, 360, 360, 360]);
    let short = RetryBackoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(1),
    };
    assert_eq!(short.delay(1), Duration::from_millis(500));
    assert_eq!(short.delay(2), Duration::from_secs(1));
    assert_eq!(short.delay(u32::MAX), Duration::from_secs(1));
}

/// A failed run is counted once, unassigns the crawl (its room goes to the one waiting) and
/// backs off; at `retryAt` it is placed again as a new assignment.
#[test]
fn a_failed_run_backs_off_frees_its_room_and_is_placed_again_as_a_new_assignment() {
    let (mut index, mut a, mut b) = full_worker_and_one_waiting();
    failed_run(&mut index, &mut a, "CannotStart");
    let Plan::Write(w) = place(&mut index, &mut a) else {
        panic!("expected the back-off")
    };
    let st = &w.status;
    assert_eq!(
        (st.phase, st.assigned_worker.as_deref()),
        (Some(Phase::BackOff), None)
    );
    assert_eq!(st.failures, Some(1));
    assert_eq!(
        st.retry_at,
        Some(Time(later(10).now)),
        "10 s after the first failure"
    );
    assert!(
        st.last_failure
            .as_deref()
            .unwrap()
            .contains("worker-1 (assignment 1)"),
        "{st:?}"
    );
    let cond = st.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "BackOff")
    );
    assert!(
        cond.message.contains("failure 1 of at most 7"),
        "{}",
        cond.message
    );
    assert_eq!(
        w.event.as_ref().map(|e| (e.warning, e.reason)),
        Some((true, Reason::BackOff))
    );
    assert_eq!(index.load(NS, "worker-1"), 0);
    assert!(index.room_freed().contains(&Key::new(NS, "b")));
    place(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-1"));

    // Counted once: planning again (a resync, a new leader) writes nothing, before retryAt.
    assert_eq!(place(&mut index, &mut a), Plan::Nothing);
    assert!(index.retries_due(later(9).now).is_empty());
    let mut fresh = Index::default();
    fresh.reset_pods(&[pod("worker-1", true, &[])]);
    fresh.finish_heartbeat_list(&HashSet::new(), Instant::now());
    fresh.reset_resources(&[a.clone()]);
    assert_eq!(place(&mut fresh, &mut a), Plan::Nothing);

    // At retryAt (worker-1 free again): a new assignment, failures kept.
    index.delete_resource(NS, "b");
    let due = later(10);
    assert_eq!(index.retries_due(due.now), [Key::new(NS, "a")]);
    place_at(&mut index, &mut a, &due);
    let st = a.status.clone().unwrap();
    assert_eq!(
        (
            st.phase,
            st.assigned_worker.as_deref(),
            st.assignments,
            st.failures
        ),
        (Some(Phase::Assigned), Some("worker-1"), Some(2), Some(1))
    );
    index.check_loads();
}

/// More than `backoffLimit` failed runs fail the crawl for good: unassigned, never placed again
/// (not by a resync, a restart or a new leader), until a spec change, which counts afresh.
#[test]
fn more_failed_runs_than_the_backoff_limit_fail_the_crawl_for_good_until_the_spec_changes() {
    let (mut index, mut a, b) = full_worker_and_one_waiting();
    index.delete_resource(NS, "b");
    let _ = b;
    a.spec.backoff_limit = 1;
    bump_resource_version(&mut a);
    index.apply_resource(&a);
    failed_run(&mut index, &mut a, "CrawlFailed");
    place(&mut index, &mut a);
    assert_eq!(phase_of(&a), Some(Phase::BackOff));
    let backoff = a
        .status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_ASSIGNED));
    let backoff = &backoff.unwrap().message;
    assert!(!backoff.contains("  "), "one sentence: {backoff}");
    place_at(&mut index, &mut a, &later(10));
    assert_eq!(worker_of(&a), Some("worker-1"));
    failed_run(&mut index, &mut a, "CrawlFailed");
    let Plan::Write(w) = place_at(&mut index, &mut a, &later(11)) else {
        panic!("expected the end")
    };
    let st = &w.status;
    assert_eq!(
        (st.phase, st.assigned_worker.as_deref()),
        (Some(Phase::Failed), None)
    );
    assert_eq!((st.failures, st.retry_at.as_ref()), (Some(2), None));
    assert_eq!(st.failed_at, Some(Time(later(11).now)));
    assert_eq!(st.last_worker.as_deref(), Some("worker-1"));
    let cond = st.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(cond.reason, "BackoffLimitExceeded");
    assert!(
        !cond.message.contains("  "),
        "one sentence: {}",
        cond.message
    );
    assert!(
        cond.message
            .contains("2 runs failed, more than spec.backoffLimit (1)"),
        "{}",
        cond.message
    );
    assert_eq!(index.load(NS, "worker-1"), 0);

    let mut queued = index.all_keys();
    queued.extend(index.all_waiting());
    queued.extend(index.retries_due(later(10_000).now));
    for key in &queued {
        assert_eq!(index.plan(key, &later(10_000)), Plan::Nothing);
    }
    assert!(!index.all_waiting().contains(&Key::new(NS, "a")));

    a.spec.max_depth = 2;
    a.metadata.generation = Some(2);
    bump_resource_version(&mut a);
    index.apply_resource(&a);
    place(&mut index, &mut a);
    let st = a.status.clone().unwrap();
    assert_eq!(
        (st.phase, st.assignments, st.failures),
        (Some(Phase::Assigned), Some(3), None),
        "a new spec is a new crawl: failures counted afresh"
    );
    index.check_loads();
}

/// A run stopped by `activeDeadlineSeconds` fails the crawl for good at once, whatever
/// `backoffLimit` says (a Job's deadline is not retried).
#[test]
fn a_run_past_its_deadline_fails_the_crawl_for_good_at_once() {
    let (mut index, mut a, _) = full_worker_and_one_waiting();
    failed_run(&mut index, &mut a, DEADLINE_EXCEEDED);
    place(&mut index, &mut a);
    let st = a.status.clone().unwrap();
    assert_eq!((st.phase, st.failures), (Some(Phase::Failed), Some(1)));
    let cond = st.condition(CONDITION_ASSIGNED).unwrap();
    assert_eq!(cond.reason, "DeadlineExceeded");
    assert!(
        !cond.message.contains("  "),
        "one sentence: {}",
        cond.message
    );
    assert_eq!(worker_of(&a), None);
}

/// A finished crawl (succeeded, or failed for good) is handed out for deletion once its TTL
/// passed, once; one without a TTL, or still running, never.
#[test]
fn a_finished_crawl_expires_once_its_ttl_passed() {
    let (mut index, mut a, mut b) = full_worker_and_one_waiting();
    a.spec.ttl_seconds_after_finished = Some(30);
    bump_resource_version(&mut a);
    index.apply_resource(&a);
    completed(&mut index, &mut a);
    place(&mut index, &mut a);
    place(&mut index, &mut b);
    assert_eq!(phase_of(&a), Some(Phase::Succeeded));
    assert!(index.expired(later(29).now).is_empty());
    let due = index.expired(later(30).now);
    assert_eq!(
        due,
        [Expired {
            key: Key::new(NS, "a"),
            uid: a.metadata.uid.clone(),
            resource_version: a.metadata.resource_version.clone(),
        }]
    );
    assert!(index.expired(later(31).now).is_empty(), "once");
    index.expiry_failed(&Key::new(NS, "a"));
    assert_eq!(
        index.expired(later(32).now).len(),
        1,
        "again after a failure"
    );

    // Failed for good counts from failedAt; b (no TTL) never expires.
    b.spec.ttl_seconds_after_finished = Some(0);
    bump_resource_version(&mut b);
    index.apply_resource(&b);
    assert!(index.expired(later(1_000).now).is_empty(), "b still runs");
    failed_run(&mut index, &mut b, DEADLINE_EXCEEDED);
    place(&mut index, &mut b);
    assert_eq!(phase_of(&b), Some(Phase::Failed));
    let due = index.expired(ctx(&LeastLoaded).now);
    assert_eq!(
        due.iter().map(|e| e.key.name.as_str()).collect::<Vec<_>>(),
        ["b"]
    );
}

// === Scheduled crawls (issue 23) ===

/// Seconds after [`ctx`]'s `now`, the scheduled resource's creation.
fn at(policy: &dyn Policy, secs: i64) -> PlanContext<'_> {
    PlanContext {
        now: ctx(policy).now + jiff::SignedDuration::from_secs(secs),
        ..ctx(policy)
    }
}

fn t(secs: i64) -> Time {
    Time(at(&LeastLoaded, secs).now)
}

/// Two live workers (heartbeats alive) and `a`, created at [`ctx`]'s `now` with
/// `spec.schedule: @every 10s` and `concurrencyPolicy`, not yet planned.
fn scheduled(
    policy: crate::crd::ConcurrencyPolicy,
    deadline: Option<i64>,
) -> (Index, CrawlerResource) {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let now = Instant::now();
    let leases = ["worker-1", "worker-2"].map(|w| heartbeat(w, Some(w), 100));
    for lease in &leases {
        index.apply_heartbeat(lease, now);
    }
    index.finish_heartbeat_list(&listed(&leases), now);
    let mut r = resource("a", 1);
    r.spec.schedule = Some("@every 10s".to_owned());
    r.spec.concurrency_policy = Some(policy);
    r.spec.starting_deadline_seconds = deadline;
    r.metadata.creation_timestamp = Some(t(0));
    index.reset_resources(std::slice::from_ref(&r));
    (index, r)
}

fn status_of(r: &CrawlerResource) -> &CrawlerResourceStatus {
    r.status.as_ref().unwrap()
}

fn scheduled_condition(r: &CrawlerResource) -> (String, String) {
    let c = status_of(r)
        .condition(crate::crd::CONDITION_SCHEDULED)
        .unwrap();
    (c.reason.clone(), c.message.clone())
}

fn due(index: &Index, secs: i64) -> bool {
    index
        .retries_due(at(&LeastLoaded, secs).now)
        .contains(&Key::new(NS, "a"))
}

/// A scheduled crawl runs first at its first firing, each firing after a finished run starts a
/// new run (a new assignment, `status.run` one more), and the tick's `retries_due` wakes it at
/// `nextScheduleTime`; between runs it stays `Succeeded`, holding no room.
#[test]
fn a_scheduled_crawl_runs_at_each_firing_as_a_new_run() {
    let (mut index, mut r) = scheduled(crate::crd::ConcurrencyPolicy::Forbid, None);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 1));
    let s = status_of(&r);
    assert_eq!(s.phase, Some(Phase::Scheduled));
    assert_eq!((s.assigned_worker.as_ref(), s.run), (None, None));
    assert_eq!(s.next_schedule_time, Some(t(10)));
    assert!(!due(&index, 9) && due(&index, 10));

    place_at(&mut index, &mut r, &at(&LeastLoaded, 10));
    let s = status_of(&r);
    assert_eq!(s.phase, Some(Phase::Assigned));
    assert_eq!((s.run, s.assignments), (Some(1), Some(1)));
    assert_eq!(s.last_schedule_time, Some(t(10)));
    assert_eq!(s.next_schedule_time, Some(t(20)));
    assert!(!due(&index, 15));

    completed(&mut index, &mut r);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 12));
    let s = status_of(&r);
    assert_eq!(s.phase, Some(Phase::Succeeded));
    assert_eq!(s.last_successful_time, Some(t(12)));
    assert_eq!(index.load(NS, "worker-1") + index.load(NS, "worker-2"), 0);
    assert_eq!(
        place_at(&mut index, &mut r, &at(&LeastLoaded, 19)),
        Plan::Nothing
    );

    let Plan::Write(w) = place_at(&mut index, &mut r, &at(&LeastLoaded, 20)) else {
        panic!("the firing at 20 s starts run 2")
    };
    let s = status_of(&r);
    assert_eq!(s.phase, Some(Phase::Assigned));
    assert_eq!((s.run, s.assignments), (Some(2), Some(2)));
    assert_eq!(s.last_schedule_time, Some(t(20)));
    let note = w.event.unwrap().note;
    assert!(note.starts_with("run 2 (the firing at"), "{note}");
    assert_eq!(scheduled_condition(&r).0, "Scheduled");
}

/// `Forbid`: a firing while the run is open is skipped (the `Scheduled` condition and an
/// Event say so, once); as a `CronJob`, the most recent skipped firing runs when the run finishes
/// unless it is older than `startingDeadlineSeconds`, then it is missed.
#[test]
fn forbid_skips_a_firing_while_the_run_is_open() {
    for (deadline, runs_after) in [(None, true), (Some(3), false)] {
        let (mut index, mut r) = scheduled(crate::crd::ConcurrencyPolicy::Forbid, deadline);
        place_at(&mut index, &mut r, &at(&LeastLoaded, 10));
        assert_eq!(status_of(&r).run, Some(1));
        let Plan::Write(w) = place_at(&mut index, &mut r, &at(&LeastLoaded, 20)) else {
            panic!("the skip is shown")
        };
        let event = w.event.unwrap();
        assert_eq!(event.reason, Reason::ScheduleSkipped);
        assert!(
            event.note.contains("run 1 has not finished"),
            "{}",
            event.note
        );
        let s = status_of(&r);
        assert_eq!(
            (s.phase, s.run, s.assignments),
            (Some(Phase::Assigned), Some(1), Some(1))
        );
        assert_eq!(
            s.last_schedule_time,
            Some(t(10)),
            "a skipped firing is not acted on"
        );
        assert_eq!(
            place_at(&mut index, &mut r, &at(&LeastLoaded, 21)),
            Plan::Nothing
        );

        completed(&mut index, &mut r);
        place_at(&mut index, &mut r, &at(&LeastLoaded, 25));
        assert_eq!(phase_of(&r), Some(Phase::Succeeded));
        let plan = place_at(&mut index, &mut r, &at(&LeastLoaded, 25));
        let s = status_of(&r);
        if runs_after {
            assert_eq!((s.phase, s.run), (Some(Phase::Assigned), Some(2)));
            assert_eq!(s.last_schedule_time, Some(t(20)));
        } else {
            let Plan::Write(w) = plan else {
                panic!("the miss is shown")
            };
            assert_eq!(w.event.unwrap().reason, Reason::MissedSchedule);
            assert_eq!((s.phase, s.run), (Some(Phase::Succeeded), Some(1)));
            assert_eq!(scheduled_condition(&r).0, "MissedSchedule");
        }
    }
}

/// `Replace`: a firing while the run is open on a live worker releases it there first; the new
/// run (a new assignment, run 2) is placed only once the worker confirmed the stop.
#[test]
fn replace_stops_the_open_run_before_the_new_one_starts() {
    let (mut index, mut r) = scheduled(crate::crd::ConcurrencyPolicy::Replace, None);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 10));
    let worker = worker_of(&r).unwrap().to_owned();
    place_at(&mut index, &mut r, &at(&LeastLoaded, 20));
    let s = status_of(&r);
    assert_eq!((s.phase, s.run), (Some(Phase::Releasing), Some(1)));
    assert_eq!(s.assigned_worker.as_deref(), Some(worker.as_str()));
    assert!(scheduled_condition(&r).1.contains("replaces run 1"));
    assert_eq!(
        place_at(&mut index, &mut r, &at(&LeastLoaded, 21)),
        Plan::Nothing
    );
    assert_eq!(
        place_at(&mut index, &mut r, &at(&LeastLoaded, 30)),
        Plan::Nothing,
        "still waiting"
    );

    confirm(&mut index, &mut r, &worker, 1);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 31));
    let s = status_of(&r);
    assert_eq!(s.phase, Some(Phase::Assigned));
    assert_eq!((s.run, s.assignments), (Some(2), Some(2)));
    // The most recent firing by then (30 s) started it; 20 s was superseded.
    assert_eq!(s.last_schedule_time, Some(t(30)));
    assert_eq!(s.failures, None, "backoffLimit counts per run");
}

/// `suspend: true` pauses the schedule: no next firing shown, none acted on; unsuspended, the
/// most recent missed firing runs (a `CronJob`'s, without a starting deadline).
#[test]
fn suspend_pauses_the_schedule() {
    let (mut index, mut r) = scheduled(crate::crd::ConcurrencyPolicy::Forbid, None);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 1));
    r.spec.suspend = true;
    r.metadata.generation = Some(2);
    bump_resource_version(&mut r);
    index.apply_resource(&r);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 2));
    let s = status_of(&r);
    assert_eq!(
        (s.phase, s.next_schedule_time.as_ref()),
        (Some(Phase::Scheduled), None)
    );
    assert_eq!(scheduled_condition(&r).0, "Suspended");
    assert!(!due(&index, 100));
    assert_eq!(
        place_at(&mut index, &mut r, &at(&LeastLoaded, 35)),
        Plan::Nothing
    );
    assert_eq!(status_of(&r).run, None);

    r.spec.suspend = false;
    r.metadata.generation = Some(3);
    bump_resource_version(&mut r);
    index.apply_resource(&r);
    place_at(&mut index, &mut r, &at(&LeastLoaded, 45));
    let s = status_of(&r);
    assert_eq!((s.phase, s.run), (Some(Phase::Assigned), Some(1)));
    assert_eq!(s.last_schedule_time, Some(t(40)));
}

/// A crawl without a schedule: run 1 at its first placement, the same run after a move, and
/// run 2 when its spec changes after it succeeded.
#[test]
fn a_spec_change_after_success_is_a_new_run() {
    let (mut index, mut r) = live_workers_and_one_resource();
    assert_eq!(status_of(&r).run, Some(1));
    completed(&mut index, &mut r);
    place(&mut index, &mut r);
    assert_eq!(phase_of(&r), Some(Phase::Succeeded));
    r.spec.max_depth = 2;
    r.metadata.generation = Some(2);
    bump_resource_version(&mut r);
    index.apply_resource(&r);
    place(&mut index, &mut r);
    let s = status_of(&r);
    assert_eq!(
        (s.phase, s.run, s.assignments),
        (Some(Phase::Assigned), Some(2), Some(2))
    );
    assert_eq!(s.next_schedule_time, None);
    assert!(s.condition(crate::crd::CONDITION_SCHEDULED).is_none());
}

/// A schedule the schema lets through but that cannot be used (a minute of 60, an unknown
/// zone) keeps the crawl off workers, saying what is wrong and what to do.
#[test]
fn an_invalid_schedule_is_reported_and_not_run() {
    for (schedule, zone, says) in [
        ("60 * * * *", None, "minute field: 60 is out of range"),
        (
            "@daily",
            Some("Mars/Olympus"),
            "spec.timeZone \"Mars/Olympus\"",
        ),
    ] {
        let (mut index, mut r) = scheduled(crate::crd::ConcurrencyPolicy::Forbid, None);
        r.spec.schedule = Some(schedule.to_owned());
        r.spec.time_zone = zone.map(str::to_owned);
        index.apply_resource(&r);
        let Plan::Write(w) = place_at(&mut index, &mut r, &at(&LeastLoaded, 1)) else {
            panic!("the error is shown")
        };
        let event = w.event.unwrap();
        assert_eq!(event.reason, Reason::InvalidSchedule);
        assert!(event.note.contains(says), "{}", event.note);
        let s = status_of(&r);
        assert_eq!(
            (s.phase, s.assigned_worker.as_ref()),
            (Some(Phase::Unschedulable), None)
        );
        let (reason, message) = scheduled_condition(&r);
        assert_eq!(reason, "InvalidSchedule");
        assert!(
            message.contains("kubectl edit") || message.contains("IANA name"),
            "{message}"
        );
    }
}

// === host affinity ===

/// Resource `name` of namespace `ns` crawling `hosts` (its seeds).
fn crawling(ns: &str, name: &str, hosts: &[&str]) -> CrawlerResource {
    let mut r = resource(name, 1);
    r.metadata.namespace = Some(ns.into());
    r.spec.seeds = hosts.iter().map(|h| format!("https://{h}/")).collect();
    r
}

/// Plans `r` (of any namespace) as [`place_at`] does.
fn plan_in(index: &mut Index, r: &mut CrawlerResource) -> Plan {
    let key = Key::new(r.namespace().unwrap(), r.name_any());
    let plan = index.plan(&key, &ctx(&LeastLoaded));
    if let Plan::Write(w) = &plan {
        bump_resource_version(r);
        r.status = Some(w.status.clone());
        index.written(&key, r.metadata.resource_version.clone());
        index.apply_resource(r);
    }
    index.check_loads();
    index.check_hosts();
    plan
}

fn assigned_message(r: &CrawlerResource) -> String {
    r.status
        .as_ref()
        .and_then(|s| s.condition(CONDITION_ASSIGNED))
        .map(|c| format!("{}: {}", c.reason, c.message))
        .unwrap_or_default()
}

fn host_affinity_index(workers: &[&str]) -> Index {
    let mut index = Index::default().with_host_affinity(true);
    let pods: Vec<Pod> = workers.iter().map(|w| pod(w, true, &[])).collect();
    index.reset_pods(&pods);
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    index
}

#[test]
fn host_affinity_puts_tasks_sharing_a_host_on_one_worker_and_a_freed_host_lets_a_waiter_go() {
    let mut index = host_affinity_index(&["worker-1", "worker-2"]);
    let mut a = crawling(NS, "a", &["x.example"]);
    let mut b = crawling(NS, "b", &["X.example:8080"]);
    let mut c = crawling(NS, "c", &["y.example"]);
    let mut d = crawling(NS, "d", &["x.example", "y.example"]);
    for r in [&a, &b, &c, &d] {
        index.apply_resource(r);
    }
    plan_in(&mut index, &mut a);
    assert_eq!(worker_of(&a), Some("worker-1"));
    // b shares the host (the same host for the per-host gate: case and port do not count):
    // worker-1, though least-loaded alone would choose worker-2.
    plan_in(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-1"));
    plan_in(&mut index, &mut c);
    assert_eq!(worker_of(&c), Some("worker-2"));
    // d would join both groups: it waits, and says why.
    plan_in(&mut index, &mut d);
    assert_eq!(phase_of(&d), Some(Phase::Unschedulable));
    let message = assigned_message(&d);
    assert!(
        message.starts_with("HostAffinity: 0/2 workers eligible: 2 do not crawl its hosts; host x.example is crawled on worker worker-1 (by task a) and host y.example on worker worker-2 (by task c)"),
        "{message}"
    );
    assert!(index.room_freed().is_empty());
    // a and b end: x.example is free; d is offered the room at once, and goes where y is.
    index.delete_resource(NS, "a");
    index.delete_resource(NS, "b");
    assert_eq!(index.room_freed(), vec![Key::new(NS, "d")]);
    plan_in(&mut index, &mut d);
    assert_eq!(worker_of(&d), Some("worker-2"));
    // A status update of a task that stays frees nothing.
    bump_resource_version(&mut c);
    index.apply_resource(&c);
    index.check_hosts();
    assert!(index.room_freed().is_empty());
}

#[test]
fn host_affinity_off_places_by_load_alone() {
    let mut index = Index::default();
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let mut a = crawling(NS, "a", &["x.example"]);
    let mut b = crawling(NS, "b", &["x.example"]);
    index.apply_resource(&a);
    index.apply_resource(&b);
    plan_in(&mut index, &mut a);
    plan_in(&mut index, &mut b);
    assert_eq!(worker_of(&a), Some("worker-1"));
    assert_eq!(worker_of(&b), Some("worker-2"));
}

#[test]
fn a_lost_workers_group_follows_its_first_moved_task() {
    let mut index = host_affinity_index(&["worker-1", "worker-2", "worker-3"]);
    let mut rs = [
        crawling(NS, "a", &["x.example"]),
        crawling(NS, "c", &["y.example"]),
        crawling(NS, "b", &["x.example"]),
    ];
    for r in &rs {
        index.apply_resource(r);
    }
    for r in &mut rs {
        plan_in(&mut index, r);
    }
    let [a, c, b] = &mut rs;
    assert_eq!(
        [worker_of(a), worker_of(b), worker_of(c)],
        [Some("worker-1"), Some("worker-1"), Some("worker-2")]
    );
    // worker-1 is gone (no heartbeat: it runs nothing): a is placed first, least loaded
    // (worker-3); b follows it, though by load alone the tie would go to worker-2.
    index.delete_pod(NS, "worker-1");
    plan_in(&mut index, a);
    assert_eq!(worker_of(a), Some("worker-3"));
    plan_in(&mut index, b);
    assert_eq!(worker_of(b), Some("worker-3"), "{}", assigned_message(b));
}

#[test]
fn of_two_groups_that_meet_after_a_spec_change_the_later_worker_s_task_moves() {
    let mut index = host_affinity_index(&["worker-1", "worker-2"]);
    let mut a = crawling(NS, "a", &["x.example"]);
    let mut b = crawling(NS, "b", &["y.example"]);
    index.apply_resource(&a);
    index.apply_resource(&b);
    plan_in(&mut index, &mut a);
    plan_in(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-2"));
    // b now crawls x.example too: it moves to worker-1 (no heartbeat: at once); a stays.
    b.spec.allowed_hosts = Some(vec!["x.example".into(), "y.example".into()]);
    b.spec.seeds = vec!["https://x.example/".into()];
    b.metadata.generation = Some(2);
    bump_resource_version(&mut b);
    index.apply_resource(&b);
    let Plan::Write(w) = plan_in(&mut index, &mut b) else {
        panic!("b moves")
    };
    assert_eq!(worker_of(&b), Some("worker-1"));
    let note = w.event.unwrap().note;
    assert!(
        note.contains("host x.example is crawled on worker worker-1 by task a as well"),
        "{note}"
    );
    assert_eq!(plan_in(&mut index, &mut a), Plan::Nothing);
}

#[test]
fn a_host_crawled_in_another_namespace_holds_a_task_back_until_it_is_free() {
    let mut index = host_affinity_index(&["worker-1"]);
    let mut other = pod("worker-9", true, &[]);
    other.metadata.namespace = Some("other".into());
    index.apply_pod(&other);
    let mut a = crawling(NS, "a", &["x.example"]);
    let mut b = crawling("other", "b", &["x.example"]);
    index.apply_resource(&a);
    index.apply_resource(&b);
    plan_in(&mut index, &mut a);
    plan_in(&mut index, &mut b);
    assert_eq!(phase_of(&b), Some(Phase::Unschedulable));
    let message = assigned_message(&b);
    assert!(
        message.contains(
            "host x.example is crawled on worker worker-1 of namespace crawl (by task crawl/a)"
        ),
        "{message}"
    );
    index.room_freed();
    // a ends in its namespace: b, in another, is offered the host.
    index.delete_resource(NS, "a");
    assert_eq!(index.room_freed(), vec![Key::new("other", "b")]);
    plan_in(&mut index, &mut b);
    assert_eq!(worker_of(&b), Some("worker-9"));
}

#[test]
fn a_task_s_hosts_are_its_allowed_hosts_else_its_seeds_hosts() {
    let mut r = crawling(NS, "a", &["B.example", "a.example:8443", "b.example"]);
    assert_eq!(hosts_of(&r.spec), ["a.example", "b.example"]);
    r.spec.allowed_hosts = Some(vec!["c.example:81".into(), "127.0.0.1".into()]);
    assert_eq!(hosts_of(&r.spec), ["127.0.0.1", "c.example"]);
}

#[test]
fn with_host_affinity_the_rebalance_moves_only_tasks_that_share_no_host() {
    let mut index = Index::default().with_host_affinity(true);
    index.reset_pods(&[pod("worker-1", true, &[])]);
    index.finish_heartbeat_list(&HashSet::new(), Instant::now());
    // Six tasks on one site, three on sites of their own, all on worker-1.
    let mut resources: Vec<CrawlerResource> = (0..9)
        .map(|i| {
            let host = if i < 6 {
                "shared.example".to_owned()
            } else {
                format!("own-{i}.example")
            };
            crawling(NS, &format!("task-{i}"), &[&host])
        })
        .collect();
    index.reset_resources(&resources);
    for r in &mut resources {
        plan_in(&mut index, r);
    }
    index.apply_pod(&pod("worker-2", true, &[]));
    index.apply_pod(&pod("worker-3", true, &[]));
    let mut keys = index.rebalance(&later(60), EVEN_OUT, 100);
    keys.sort();
    // Moving a task of the shared site would bind it back to worker-1 (a restart for nothing).
    assert_eq!(
        keys,
        [
            Key::new(NS, "task-6"),
            Key::new(NS, "task-7"),
            Key::new(NS, "task-8")
        ]
    );
}

#[test]
fn a_namespace_first_seen_through_a_heartbeat_still_names_its_holds() {
    let mut index = Index::default().with_host_affinity(true);
    let lease = heartbeat("worker-1", Some("worker-1"), 100);
    index.apply_heartbeat(&lease, Instant::now());
    index.finish_heartbeat_list(&listed(std::slice::from_ref(&lease)), Instant::now());
    index.reset_pods(&[pod("worker-1", true, &[]), pod("worker-2", true, &[])]);
    let mut a = crawling(NS, "a", &["x.example"]);
    let mut b = crawling(NS, "b", &["x.example"]);
    index.apply_resource(&a);
    index.apply_resource(&b);
    plan_in(&mut index, &mut a);
    plan_in(&mut index, &mut b);
    assert_eq!(worker_of(&a), worker_of(&b), "{}", assigned_message(&b));
}
