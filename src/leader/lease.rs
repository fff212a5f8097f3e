//! Lease bodies: what each write sends. Every replace keeps the base's resourceVersion, so the
//! API server refuses it (409) when anyone wrote in between.

use jiff::Timestamp;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};

use super::{LeaseSettings, RELEASED_ANNOTATION};

/// Drops the release marker: a held Lease never carries one, so a stale marker never matches.
fn unmark(lease: &mut Lease) {
    if let Some(annotations) = lease.metadata.annotations.as_mut() {
        annotations.remove(RELEASED_ANNOTATION);
    }
}

/// A new Lease naming us. `last_transitions`: the highest `leaseTransitions` this replica saw
/// on the Lease before it was deleted; the new one continues from there (0 if it saw none), so
/// that a term of the old Lease and one of the new never carry the same number.
pub(super) fn created(settings: &LeaseSettings, last_transitions: Option<i32>) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(settings.name.clone()),
            namespace: Some(settings.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(settings.identity.clone()),
            lease_duration_seconds: Some(settings.lease_duration_seconds()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(last_transitions.map_or(0, |t| t.saturating_add(1))),
            ..LeaseSpec::default()
        }),
    }
}

/// `base` as this replica holds it: unmarked, naming us, with our duration. A claim and a
/// renewal differ only in the times (and the transition count) `stamp` sets on top.
fn held(settings: &LeaseSettings, base: &Lease, stamp: impl FnOnce(&mut LeaseSpec)) -> Lease {
    let mut lease = base.clone();
    unmark(&mut lease);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(settings.identity.clone());
    spec.lease_duration_seconds = Some(settings.lease_duration_seconds());
    stamp(spec);
    lease
}

pub(super) fn claimed(settings: &LeaseSettings, base: &Lease, transitions: i32) -> Lease {
    let now = MicroTime(Timestamp::now());
    held(settings, base, |spec| {
        spec.acquire_time = Some(now.clone());
        spec.renew_time = Some(now);
        spec.lease_transitions = Some(transitions);
    })
}

pub(super) fn renewed(settings: &LeaseSettings, base: &Lease) -> Lease {
    let now = MicroTime(Timestamp::now());
    held(settings, base, |spec| {
        spec.acquire_time.get_or_insert_with(|| now.clone());
        spec.renew_time = Some(now);
    })
}

/// client-go's release (no holder, a one-second lease), marked with [`RELEASED_ANNOTATION`] so
/// that candidates can tell it from a Lease cleared by hand and take it at once. Sent only after
/// this replica stopped acting.
pub(super) fn released(settings: &LeaseSettings, base: &Lease) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = base.clone();
    let transitions = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_transitions)
        .unwrap_or(0);
    lease.metadata.annotations.get_or_insert_default().insert(
        RELEASED_ANNOTATION.to_owned(),
        format!("{transitions}/{}", settings.identity),
    );
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.acquire_time = Some(now.clone());
    spec.renew_time = Some(now);
    lease
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::leader::{Decision, LeaseRecord, decide, fixtures::*};

    // --- what is written ---

    #[test]
    fn a_claim_names_us_counts_the_transition_and_keeps_the_resource_version() {
        let s = LeaseSettings {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: 2 * SEC,
            retry_period: SEC,
            ..settings()
        };
        let base = lease(Some("replica-b"), "7");
        let claim = claimed(&s, &base, 5);
        let spec = claim.spec.as_ref().unwrap();
        assert_eq!(claim.metadata.resource_version.as_deref(), Some("7"));
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(5));
        assert_eq!(spec.lease_duration_seconds, Some(3));
        assert_ne!(spec.acquire_time, base.spec.as_ref().unwrap().acquire_time);
        assert_eq!(spec.acquire_time, spec.renew_time);
    }

    #[test]
    fn a_renewal_moves_only_the_renew_time() {
        let base = lease(Some("replica-a"), "9");
        let renewal = renewed(&settings(), &base);
        let (before, after) = (base.spec.as_ref().unwrap(), renewal.spec.as_ref().unwrap());
        assert_eq!(renewal.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(after.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(after.acquire_time, before.acquire_time);
        assert_eq!(after.lease_transitions, before.lease_transitions);
        assert!(after.renew_time > before.renew_time);
    }

    #[test]
    fn a_release_frees_the_lease_for_anyone_at_once() {
        let base = lease(Some("replica-a"), "9");
        let release = released(&settings(), &base);
        let spec = release.spec.as_ref().unwrap();
        assert_eq!(release.metadata.resource_version.as_deref(), Some("9"));
        assert_eq!(spec.holder_identity, None);
        assert_eq!(spec.lease_duration_seconds, Some(1));
        assert_eq!(spec.lease_transitions, Some(4));
        // A candidate reading it acquires without waiting.
        let t0 = Instant::now();
        let observed = seen(LeaseRecord::from_lease(&release), t0);
        assert!(matches!(
            decide(
                Some(&observed),
                None,
                t0,
                &LeaseSettings::new("crawler", "l", "replica-b")
            ),
            Decision::Acquire { transitions: 5, .. }
        ));
    }

    #[test]
    fn the_release_marker_is_dropped_by_the_next_holder() {
        let release = released(&settings(), &lease(Some("replica-a"), "9"));
        let other = LeaseSettings::new("crawler", "crawler-operator", "replica-b");
        for written in [claimed(&other, &release, 5), renewed(&other, &release)] {
            let annotations = written.metadata.annotations.unwrap_or_default();
            assert!(!annotations.contains_key(RELEASED_ANNOTATION));
        }
    }

    #[test]
    fn a_lease_created_again_continues_the_count_of_the_deleted_one() {
        let again = created(&settings(), Some(6));
        let spec = again.spec.as_ref().unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(7));
    }

    #[test]
    fn a_created_lease_names_us_from_term_zero() {
        let created = created(&settings(), None);
        let spec = created.spec.as_ref().unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("crawler-operator"));
        assert_eq!(created.metadata.namespace.as_deref(), Some("crawler"));
        assert_eq!(created.metadata.resource_version, None);
        assert_eq!(spec.holder_identity.as_deref(), Some("replica-a"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));
    }
}
