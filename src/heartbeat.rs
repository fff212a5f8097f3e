//! The worker heartbeat protocol, shared by the worker (which renews) and the controller (which
//! reads). A Pod's `Ready` condition lags a stuck or partitioned worker by tens of seconds; a
//! heartbeat Lease per worker tells the controller within one lease duration.
//!
//! Timing argument (why a task never runs on two workers at once): the worker renews every
//! `duration / 5` and stops all its tasks when no renewal *sent* in the last `duration / 2`
//! succeeded. The controller counts a heartbeat as expired `duration` after it *observed* the
//! last change, which is after that renewal was sent. So the worker has stopped its tasks at
//! least `duration / 2` before the controller may give them to another worker.
//!
//! The other direction (why a worker coming back does not run a task the controller is moving):
//! once a worker's heartbeat lapsed, the controller may have expired it, and a move it decided
//! before it saw the worker's next renewal can land after that renewal. So a worker whose
//! heartbeat lapsed (or that finds its Lease left by an earlier process) runs nothing until a
//! renewal sent [`resume_after`] after its first successful one has succeeded, and then reads its
//! assignments afresh. The controller, for its part, does not expire heartbeats while its own
//! watch of them is failing: it cannot have seen the renewals it missed.

use std::time::Duration;

/// Label every heartbeat Lease carries; the controller watches Leases with it.
pub const LABEL: &str = "app.kubernetes.io/component";
/// Value of [`LABEL`] on heartbeat Leases.
pub const LABEL_VALUE: &str = "crawler-worker-heartbeat";
/// Heartbeat Lease names are this prefix plus the worker Pod's name.
pub const PREFIX: &str = "crawler-worker-";
/// Field manager of the worker's writes (heartbeat and progress).
pub const FIELD_MANAGER: &str = "crawler-worker";

/// The worker's default heartbeat duration (`--heartbeat-duration`): renewed every 10 s, as a
/// kubelet renews its node Lease, so that an idle worker costs the API server 0.1 writes/s.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(50);

/// How long a controller waits, from its first list of heartbeat Leases, before it takes a
/// worker Pod without a Lease for one without a heartbeat (and then only once a read finds none),
/// when the installation's workers renew heartbeats of at most `worker_duration`
/// (`--worker-heartbeat-duration`). A live worker whose Lease was deleted before the controller
/// started re-creates it at its next renewal (a fifth of its duration later) and runs no task
/// half a duration past its last successful renewal, so half the longest duration covers every
/// worker; the controller also never waits less than the longest duration it has seen on a Lease.
pub fn unseen_wait(worker_duration: Duration) -> Duration {
    worker_duration / 2
}

/// Name of the heartbeat Lease of worker Pod `pod`.
pub fn lease_name(pod: &str) -> String {
    format!("{PREFIX}{pod}")
}

/// The worker Pod a heartbeat Lease belongs to.
pub fn pod_of(lease_name: &str) -> Option<&str> {
    lease_name.strip_prefix(PREFIX).filter(|p| !p.is_empty())
}

/// `leaseDurationSeconds` for a heartbeat of `duration`: whole seconds rounded up (at least 1),
/// so the controller never waits less than the worker's timing argument assumes.
pub fn lease_duration_seconds(duration: Duration) -> i32 {
    let seconds = duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0));
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

/// The heartbeat Lease's `ownerReferences`: its worker Pod, so the Lease is garbage-collected
/// with it (one would otherwise be left per worker Pod ever created). Without the Pod's UID
/// (`$POD_UID` unset) there is none. `blockOwnerDeletion` is left unset: setting it needs
/// permission on the Pod's finalizers, and nothing needs to block.
pub fn owner_references(pod: &str, pod_uid: Option<&str>) -> serde_json::Value {
    match pod_uid.filter(|uid| !uid.is_empty()) {
        Some(uid) => serde_json::json!([{
            "apiVersion": "v1",
            "kind": "Pod",
            "name": pod,
            "uid": uid,
        }]),
        None => serde_json::json!([]),
    }
}

/// How often a worker renews a heartbeat of `duration`.
pub fn renew_interval(duration: Duration) -> Duration {
    duration / 5
}

/// The cycle of a worker's checked watch of its assignments (see [`crate::watch`]), for a
/// heartbeat of `duration`: three tenths of it in whole seconds, between 2 s and 15 s (15 s at
/// the default 50 s; 2 s, the shortest, up to 9 s). One knob, the heartbeat duration, scales
/// everything a worker does periodically: a longer heartbeat means fewer renewals, LISTs and
/// watches, and slower detection, in proportion.
///
/// The controller derives from it how long a worker may run a deleted task
/// ([`successor_hold`]), so both sides must use this function.
pub fn watch_cycle(duration: Duration) -> crate::watch::Cycle {
    let tenths = duration.as_secs().saturating_mul(3) / 10;
    crate::watch::Cycle::of_secs(u32::try_from(tenths.min(15)).unwrap_or(15))
}

/// How long after a deletion was seen an object created again under the same name waits before
/// it is placed, when the deleted one was assigned to a worker of heartbeat `duration` that may
/// still run it: that worker stops the task when a LIST sent after the deletion answers, or,
/// when none does, when its view goes stale ([`crate::watch::Cycle::stale_after`] of its
/// [`watch_cycle`]) after the last LIST sent before the deletion; plus a second for the stop
/// itself and the tick that ends the hold. 6 s for a 2 s heartbeat, 19 s at the default.
pub fn successor_hold(duration: Duration) -> Duration {
    watch_cycle(duration).stale_after() + Duration::from_secs(1)
}

/// How long a worker keeps running tasks after the send time of its last successful renewal.
pub fn stop_after(duration: Duration) -> Duration {
    duration / 2
}

/// How long a worker whose heartbeat lapsed keeps its tasks stopped after the first renewal that
/// succeeds again: long enough for the controller to see that renewal and for a move it decided
/// before that to land (and be read by the worker's fresh LIST).
pub fn resume_after(duration: Duration) -> Duration {
    duration
}

/// Retry schedule of the watches the heartbeat argument leans on (the controller's watch of the
/// heartbeats, a worker's watch of its assignments): 100 ms, doubling, at most 1 s, with jitter,
/// forever. kube's default (800 ms up to 30 s) would leave the controller unable to expire a
/// heartbeat, or a worker unaware of a task moved off it, for up to 30 s after the API server is
/// back.
pub fn watch_retry() -> kube::runtime::watcher::ExponentialBackoff {
    let retry = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times();
    kube::runtime::watcher::ExponentialBackoff::from(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_duration_is_rounded_up_to_whole_seconds() {
        assert_eq!(lease_duration_seconds(Duration::from_millis(2500)), 3);
        assert_eq!(lease_duration_seconds(Duration::from_secs(10)), 10);
        assert_eq!(lease_duration_seconds(Duration::from_millis(1)), 1);
        assert_eq!(lease_duration_seconds(Duration::ZERO), 1);
        assert_eq!(lease_duration_seconds(Duration::MAX), i32::MAX);
    }

    #[test]
    fn the_lease_is_owned_by_its_pod_when_its_uid_is_known() {
        let owners = owner_references("worker-1", Some("5d1c"));
        assert_eq!(owners[0]["kind"], "Pod");
        assert_eq!(owners[0]["name"], "worker-1");
        assert_eq!(owners[0]["uid"], "5d1c");
        assert!(owners[0].get("blockOwnerDeletion").is_none());
        assert_eq!(owner_references("worker-1", None), serde_json::json!([]));
        assert_eq!(
            owner_references("worker-1", Some("")),
            serde_json::json!([])
        );
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(pod_of(&lease_name("worker-1")), Some("worker-1"));
        assert_eq!(pod_of("crawler-operator-leader"), None);
        assert_eq!(pod_of(PREFIX), None);
    }

    #[test]
    fn the_watch_cycle_grows_with_the_heartbeat_between_bounds() {
        let secs = |d: u64| watch_cycle(Duration::from_secs(d)).length().as_secs();
        assert_eq!(secs(1), 2);
        assert_eq!(secs(2), 2);
        assert_eq!(secs(10), 3);
        assert_eq!(secs(50), 15);
        assert_eq!(secs(3600), 15);
        assert_eq!(watch_cycle(Duration::MAX).length(), Duration::from_secs(15));
        // The harness's 2 s heartbeat keeps the 2 s cycle and the 6 s successor hold.
        assert_eq!(
            successor_hold(Duration::from_secs(2)),
            Duration::from_secs(6)
        );
        assert_eq!(successor_hold(DEFAULT_DURATION), Duration::from_secs(19));
    }

    #[test]
    fn an_idle_worker_at_the_defaults_costs_what_a_kubelet_does() {
        // A kubelet renews its node Lease every 10 s: 0.1 writes/s. The worker's renewals are
        // its only writes while idle; its checked watch adds a LIST and a watch per cycle.
        let d = DEFAULT_DURATION;
        let writes = 1.0 / renew_interval(d).as_secs_f64();
        let reads = 2.0 / watch_cycle(d).length().as_secs_f64();
        assert!(writes <= 0.10 + f64::EPSILON, "{writes}");
        assert!(writes + reads <= 0.3, "{}", writes + reads);
    }

    #[test]
    fn the_worker_stops_well_before_the_controller_expires_it() {
        let d = Duration::from_secs(10);
        assert!(renew_interval(d) < stop_after(d));
        assert!(stop_after(d) < d);
    }
}
