//! The decision, pure: from the last Lease record we received, when we first received it, and
//! our monotonic clock, what to do next. No I/O; every case has a table test.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;

use super::LeaseSettings;

/// Annotation a holder writes when it releases the Lease itself (on shutdown, after it stopped
/// acting): `<leaseTransitions>/<identity>`. A free Lease carrying it with the same
/// `leaseTransitions` was freed by its holder, not by hand: every acquisition counts a
/// transition and drops the annotation, so a stale copy never matches.
pub const RELEASED_ANNOTATION: &str = "leader.crawler.dev/released";

/// What the election needs to know about a Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// `holderIdentity`; `None` when absent or empty (the Lease is free).
    pub holder: Option<String>,
    /// `renewTime`, compared for equality only, never with our clock.
    pub renew_time: Option<Timestamp>,
    pub resource_version: Option<String>,
    /// `leaseDurationSeconds`: how long the holder promised to be silent before it is gone.
    pub lease_duration_seconds: Option<i32>,
    /// `leaseTransitions`, 0 when absent.
    pub transitions: i32,
    /// The Lease is free because its holder released it after it stopped acting (see
    /// [`RELEASED_ANNOTATION`]); a Lease freed any other way (by hand, by an older version) is
    /// not, and is waited out like a silent holder.
    pub released_by_holder: bool,
}

impl LeaseRecord {
    pub fn from_lease(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        let holder = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty());
        let transitions = spec.and_then(|s| s.lease_transitions).unwrap_or(0);
        let released_by_holder = holder.is_none()
            && lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(RELEASED_ANNOTATION))
                .and_then(|marker| marker.split_once('/'))
                .is_some_and(|(t, who)| !who.is_empty() && t.parse() == Ok(transitions));
        Self {
            holder,
            renew_time: spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
            lease_duration_seconds: spec.and_then(|s| s.lease_duration_seconds),
            transitions,
            released_by_holder,
        }
    }

    /// Nothing has happened to the Lease between `self` and `other`.
    fn is_unchanged_from(&self, other: &Self) -> bool {
        self.holder == other.holder
            && self.renew_time == other.renew_time
            && self.resource_version == other.resource_version
    }
}

/// A record, and when we first received it on our monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub record: LeaseRecord,
    /// When the response carrying this record *arrived* (never when the request was sent: the
    /// record may have been written after that).
    pub first_seen: Instant,
}

impl Observed {
    /// Folds a freshly received record into what we knew: the clock restarts only when the
    /// record changed.
    pub fn update(previous: Option<Self>, record: LeaseRecord, received: Instant) -> Self {
        match previous {
            Some(previous) if previous.record.is_unchanged_from(&record) => Self {
                record,
                first_seen: previous.first_seen,
            },
            _ => Self {
                record,
                first_seen: received,
            },
        }
    }
}

/// What to do next about the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, naming us.
    Create,
    /// The Lease names us: renew it. When we do not lead (a restart under the same identity,
    /// or our own deadline passed) the elector writes a new term instead (a claim counting a
    /// transition), so that writes stamped with the old term stay fenced.
    Renew,
    /// The Lease is free or its holder went silent: write ourselves in.
    Acquire {
        previous_holder: Option<String>,
        /// `leaseTransitions` to write.
        transitions: i32,
    },
    /// Another replica holds the Lease (`holder`), or the Lease was deleted or freed by someone
    /// other than its holder (`None`): nothing may be written before `until`, and only if the
    /// record is still the same then.
    Wait {
        holder: Option<String>,
        until: Instant,
    },
}

/// Decides from the last record we received, when we first received it, and `now`.
///
/// `gone_since`: when we first found the Lease missing after having seen it (`None` if we never
/// saw it, or see it now). A Lease deleted under a leader does not stop that leader at once: it
/// acts until its next renewal fails, up to its renew deadline. So whoever saw a Lease waits a
/// full lease duration from when it first found it gone before creating it again; a replica that
/// never saw one (a fresh start) creates it at once. Likewise a Lease freed by anyone but its
/// holder (a hand edit) is waited out for a lease duration from first sight, like a silent
/// holder; only a release by the holder itself, which stopped acting before it wrote it, is
/// taken at once.
pub fn decide(
    observed: Option<&Observed>,
    gone_since: Option<Instant>,
    now: Instant,
    settings: &LeaseSettings,
) -> Decision {
    let Some(observed) = observed else {
        return match gone_since.and_then(|since| since.checked_add(settings.lease_duration)) {
            Some(until) if now < until => Decision::Wait {
                holder: None,
                until,
            },
            _ => Decision::Create,
        };
    };
    let record = &observed.record;
    let transitions = record.transitions.saturating_add(1);
    let holder = record.holder.as_deref();
    if holder == Some(settings.identity.as_str()) {
        return Decision::Renew;
    }
    if holder.is_none() && record.released_by_holder {
        return Decision::Acquire {
            previous_holder: None,
            transitions,
        };
    }
    // Wait for what the holder promised, and at least for what we are configured to wait.
    let promised = record
        .lease_duration_seconds
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let wait = settings.lease_duration.max(promised);
    let holder = holder.map(str::to_owned);
    match observed.first_seen.checked_add(wait) {
        Some(until) if now >= until => Decision::Acquire {
            previous_holder: holder,
            transitions,
        },
        Some(until) => Decision::Wait { holder, until },
        // The holder promised longer than our clock can count: it is never expired.
        None => Decision::Wait {
            holder,
            until: now + settings.lease_duration,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::*;

    // --- the decision ---

    #[test]
    fn no_lease_means_create() {
        assert_eq!(
            decide(None, None, Instant::now(), &settings()),
            Decision::Create
        );
    }

    #[test]
    fn a_lease_released_by_its_holder_is_acquired_at_once_and_counts_a_transition() {
        let t0 = Instant::now();
        let observed = seen(released_record("7"), t0);
        assert_eq!(
            decide(Some(&observed), None, t0, &settings()),
            Decision::Acquire {
                previous_holder: None,
                transitions: 5
            }
        );
    }

    #[test]
    fn a_lease_freed_by_anyone_else_is_waited_out_for_a_lease_duration() {
        // Cleared by hand: its holder may still act until its next renewal fails.
        let t0 = Instant::now();
        let observed = seen(record(None, "7"), t0);
        let s = settings();
        assert_eq!(
            decide(Some(&observed), None, t0 + 14 * SEC, &s),
            Decision::Wait {
                holder: None,
                until: t0 + 15 * SEC
            }
        );
        assert_eq!(
            decide(Some(&observed), None, t0 + 15 * SEC, &s),
            Decision::Acquire {
                previous_holder: None,
                transitions: 5
            }
        );
    }

    #[test]
    fn a_lease_found_gone_after_it_was_seen_is_recreated_only_after_a_lease_duration() {
        let t0 = Instant::now();
        let s = settings();
        assert_eq!(
            decide(None, Some(t0), t0 + 14 * SEC, &s),
            Decision::Wait {
                holder: None,
                until: t0 + 15 * SEC
            }
        );
        assert_eq!(decide(None, Some(t0), t0 + 15 * SEC, &s), Decision::Create);
        // Never seen (a fresh start): nothing can be acting on it, create at once.
        assert_eq!(decide(None, None, t0, &s), Decision::Create);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let t0 = Instant::now();
        let observed = seen(record(Some("replica-a"), "7"), t0);
        assert_eq!(
            decide(Some(&observed), None, t0, &settings()),
            Decision::Renew
        );
    }

    #[test]
    fn another_holder_is_waited_for_a_lease_duration_from_first_sight() {
        let t0 = Instant::now();
        let observed = seen(record(Some("replica-b"), "7"), t0);
        let s = settings();
        let wait = Decision::Wait {
            holder: Some("replica-b".into()),
            until: t0 + 15 * SEC,
        };
        assert_eq!(decide(Some(&observed), None, t0, &s), wait);
        assert_eq!(
            decide(
                Some(&observed),
                None,
                t0 + Duration::from_nanos(14_999_999_999),
                &s
            ),
            wait
        );
        assert_eq!(
            decide(Some(&observed), None, t0 + 15 * SEC, &s),
            Decision::Acquire {
                previous_holder: Some("replica-b".into()),
                transitions: 5
            }
        );
    }

    #[test]
    fn the_longer_of_the_holders_promise_and_our_lease_duration_is_waited() {
        let t0 = Instant::now();
        let s = settings();
        let mut longer = record(Some("replica-b"), "7");
        longer.lease_duration_seconds = Some(60);
        assert_eq!(
            decide(Some(&seen(longer, t0)), None, t0 + 30 * SEC, &s),
            Decision::Wait {
                holder: Some("replica-b".into()),
                until: t0 + 60 * SEC
            }
        );
        // A holder that promised less (or nothing, or nonsense) still gets our lease duration.
        for promised in [Some(1), None, Some(-5)] {
            let mut shorter = record(Some("replica-b"), "7");
            shorter.lease_duration_seconds = promised;
            assert_eq!(
                decide(Some(&seen(shorter, t0)), None, t0 + 14 * SEC, &s),
                Decision::Wait {
                    holder: Some("replica-b".into()),
                    until: t0 + 15 * SEC
                },
                "{promised:?}"
            );
        }
    }

    #[test]
    fn the_remote_renew_time_never_meets_our_clock() {
        // A holder whose clock is years behind, or ahead, is judged only by whether its record
        // changes while we watch.
        let t0 = Instant::now();
        let s = settings();
        for renew_time in ["1999-01-01T00:00:00Z", "2999-01-01T00:00:00Z"] {
            let mut skewed = record(Some("replica-b"), "7");
            skewed.renew_time = Some(renew_time.parse().unwrap());
            assert!(matches!(
                decide(Some(&seen(skewed.clone(), t0)), None, t0 + SEC, &s),
                Decision::Wait { .. }
            ));
            assert!(matches!(
                decide(Some(&seen(skewed, t0)), None, t0 + 15 * SEC, &s),
                Decision::Acquire { .. }
            ));
        }
    }

    #[test]
    fn transitions_saturate() {
        let t0 = Instant::now();
        let mut free = released_record("7");
        free.transitions = i32::MAX;
        assert_eq!(
            decide(Some(&seen(free, t0)), None, t0, &settings()),
            Decision::Acquire {
                previous_holder: None,
                transitions: i32::MAX
            }
        );
    }

    // --- observing ---

    #[test]
    fn an_unchanged_record_keeps_its_first_sighting() {
        let t0 = Instant::now();
        let first = Observed::update(None, record(Some("replica-b"), "7"), t0);
        assert_eq!(first.first_seen, t0);
        let again = Observed::update(Some(first), record(Some("replica-b"), "7"), t0 + 5 * SEC);
        assert_eq!(again.first_seen, t0);
        // ... so after a lease duration of silence the holder is gone.
        assert!(matches!(
            decide(Some(&again), None, t0 + 15 * SEC, &settings()),
            Decision::Acquire { .. }
        ));
    }

    #[test]
    fn any_change_of_the_record_restarts_the_clock() {
        let t0 = Instant::now();
        let t1 = t0 + 5 * SEC;
        let base = || Observed::update(None, record(Some("replica-b"), "7"), t0);

        let renewed = record(Some("replica-b"), "8");
        assert_eq!(Observed::update(Some(base()), renewed, t1).first_seen, t1);

        let mut renew_time_moved = record(Some("replica-b"), "7");
        renew_time_moved.renew_time = Some("2024-01-01T00:00:02Z".parse().unwrap());
        assert_eq!(
            Observed::update(Some(base()), renew_time_moved, t1).first_seen,
            t1
        );

        let new_holder = record(Some("replica-c"), "7");
        let observed = Observed::update(Some(base()), new_holder, t1);
        assert_eq!(observed.first_seen, t1);
        assert_eq!(
            decide(Some(&observed), None, t0 + 15 * SEC, &settings()),
            Decision::Wait {
                holder: Some("replica-c".into()),
                until: t1 + 15 * SEC
            }
        );
    }

    #[test]
    fn a_record_is_read_from_a_lease() {
        let r = LeaseRecord::from_lease(&lease(Some("replica-b"), "7"));
        assert_eq!(r.holder.as_deref(), Some("replica-b"));
        assert_eq!(r.resource_version.as_deref(), Some("7"));
        assert_eq!(r.lease_duration_seconds, Some(15));
        assert_eq!(r.transitions, 4);
        assert_eq!(r.renew_time, Some("2024-01-01T00:00:05Z".parse().unwrap()));
        // An empty holder is no holder.
        assert_eq!(LeaseRecord::from_lease(&lease(Some(""), "7")).holder, None);
        // The release marker counts only on a free Lease, and only with the same transitions.
        let marked = |holder: Option<&str>, marker: &str| {
            let mut l = lease(holder, "7");
            l.metadata.annotations =
                Some([(RELEASED_ANNOTATION.to_owned(), marker.to_owned())].into());
            LeaseRecord::from_lease(&l).released_by_holder
        };
        assert!(marked(None, "4/replica-b"));
        assert!(!marked(None, "3/replica-b"), "an earlier release");
        assert!(!marked(None, "4/"));
        assert!(!marked(None, "garbage"));
        assert!(!marked(Some("replica-b"), "4/replica-b"));
        assert!(!LeaseRecord::from_lease(&lease(None, "7")).released_by_holder);
        let bare = LeaseRecord::from_lease(&Lease::default());
        assert_eq!((bare.holder, bare.transitions), (None, 0));
    }
}
