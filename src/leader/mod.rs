//! Leader election on a `coordination.k8s.io/v1` Lease, built so that a leader stops acting
//! before anyone else can start.
//!
//! This module owns the controller's Lease: acquiring it, renewing it, stepping down by its own
//! clock, and releasing it on shutdown. Leadership is published as data: a [`Leadership`] value in
//! a `tokio::sync::watch` channel. The controller checks [`Leadership::is_leading_now`] before each
//! write and stops its loop when [`until_lost`] resolves.
//!
//! ```text
//!   LeaderElector::run ── GET / create / replace, each under a timeout,
//!          │              every write guarded by metadata.resourceVersion ──▶ Lease
//!          │
//!          └── watch::Sender<Leadership> ──▶ controller: rx.borrow().is_leading_now()
//! ```
//!
//! The semantics are client-go's (same defaults, same Lease fields, release on shutdown), with
//! the safety that kube-lease-manager 0.13.1 lacks (it kept claiming leadership through a paused
//! API server, and two replicas led at once when only the holder was cut off): every write is
//! guarded by a resourceVersion, every call has a timeout (kube's client has no read timeout by
//! default), and a leader gives up by its own monotonic clock.
//!
//! Why at most one replica acts at a time, every instant on that replica's own monotonic clock:
//!
//! - A leader acts only until `s + renew_deadline`, where `s` is when it *sent* its last renewal
//!   that succeeded.
//! - A candidate takes the Lease over only when the record it sees (holder, renewTime,
//!   resourceVersion) has stayed the same for `lease_duration`, counted from when the candidate
//!   first *received* that record: after the write, so after `s`.
//! - `renew_deadline < lease_duration`, so the old leader has stopped before the takeover is sent,
//!   and the takeover names the resourceVersion the candidate saw, so it fails with 409 if the
//!   leader renewed in the meantime.
//!
//! The remote `renewTime` is never compared with our clock: machines' clocks disagree. A write
//! whose answer never came (timeout) may still land later; we claim nothing from it, and it only
//! makes the others wait longer. What is left to the caller is a write that was started while
//! leading and lands after the deadline: fence those writes with a resourceVersion as well.

mod decision;
mod elector;
#[cfg(test)]
mod fixtures;
mod lease;
mod settings;

use std::time::Instant;

use tokio::sync::watch;

pub use decision::{Decision, LeaseRecord, Observed, RELEASED_ANNOTATION, decide};
pub use elector::{LeaderElector, LeaderError, Verb};
pub use settings::{
    DEFAULT_LEASE_DURATION, DEFAULT_RENEW_DEADLINE, DEFAULT_RETRY_PERIOD, LeaseSettings,
    MAX_BACKOFF_FACTOR, SettingsError,
};

/// This replica's part in the election, as published to the rest of the process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading. `holder` is the other replica that holds the Lease, when one is known.
    Standby { holder: Option<String> },
    /// Leading, but only while `Instant::now() < valid_until`: a stale copy of this value stops
    /// granting leadership on its own.
    Leading {
        /// When the write that won the Lease was sent.
        since: Instant,
        /// Send time of the last successful renewal + renew deadline.
        valid_until: Instant,
        /// The Lease's `leaseTransitions` when we took it. Every acquisition counts one, also
        /// taking back a Lease that still names us (after our own deadline passed, or a restart
        /// under the same identity), and a Lease created again after a deletion continues from
        /// the highest number this replica saw: (identity, term) names one term of the Lease,
        /// which is what the controller stamps on its status writes (`status.controllerTerm`).
        term: i32,
    },
}

impl Leadership {
    /// Whether this replica may act as leader right now. Check it before every leader-only write.
    pub fn is_leading_now(&self) -> bool {
        self.is_leading_at(Instant::now())
    }

    /// Whether this replica may act as leader at `now`.
    pub fn is_leading_at(&self, now: Instant) -> bool {
        matches!(self, Self::Leading { valid_until, .. } if now < *valid_until)
    }

    /// The end of the current leadership, unless it is renewed first.
    pub fn valid_until(&self) -> Option<Instant> {
        match self {
            Self::Leading { valid_until, .. } => Some(*valid_until),
            Self::Standby { .. } => None,
        }
    }

    /// The term of the current leadership.
    pub fn term(&self) -> Option<i32> {
        match self {
            Self::Leading { term, .. } => Some(*term),
            Self::Standby { .. } => None,
        }
    }
}

/// The elector stopped (its [`LeaderElector::run`] returned or was dropped) before we led.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the leader elector stopped")]
pub struct ElectorStopped;

/// Waits until this replica leads, and returns that leadership (a [`Leadership::Leading`]).
pub async fn until_leading(
    rx: &mut watch::Receiver<Leadership>,
) -> Result<Leadership, ElectorStopped> {
    rx.wait_for(Leadership::is_leading_now)
        .await
        .map(|leadership| leadership.clone())
        .map_err(|_| ElectorStopped)
}

/// Resolves as soon as this replica may no longer act as leader: the elector stepped down, the
/// deadline passed without a renewal (even if the elector is stuck), or the elector stopped.
/// Returns at once when not leading.
pub async fn until_lost(rx: &mut watch::Receiver<Leadership>) {
    loop {
        let valid_until = match &*rx.borrow_and_update() {
            Leadership::Leading { valid_until, .. } if Instant::now() < *valid_until => {
                *valid_until
            }
            _ => return,
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(valid_until.into()) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::leader::fixtures::*;

    // --- leadership as data ---

    #[test]
    fn leadership_expires_on_its_own() {
        let t0 = Instant::now();
        let leading = Leadership::Leading {
            since: t0,
            valid_until: t0 + 10 * SEC,
            term: 3,
        };
        assert!(leading.is_leading_at(t0));
        assert!(leading.is_leading_at(t0 + Duration::from_nanos(9_999_999_999)));
        assert!(!leading.is_leading_at(t0 + 10 * SEC));
        assert_eq!(leading.term(), Some(3));
        assert_eq!(leading.valid_until(), Some(t0 + 10 * SEC));
        let standby = Leadership::Standby { holder: None };
        assert!(!standby.is_leading_at(t0));
        assert_eq!((standby.term(), standby.valid_until()), (None, None));
    }

    #[tokio::test]
    async fn until_lost_resolves_at_the_deadline_even_if_nothing_is_published() {
        let valid_until = Instant::now() + Duration::from_millis(100);
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: Instant::now(),
            valid_until,
            term: 1,
        });
        until_lost(&mut rx).await;
        assert!(Instant::now() >= valid_until);
        drop(tx);
    }

    #[tokio::test]
    async fn until_lost_follows_renewals_and_returns_on_standby() {
        let start = Instant::now();
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: start,
            valid_until: start + Duration::from_millis(100),
            term: 1,
        });
        let watcher = tokio::spawn(async move {
            until_lost(&mut rx).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send_replace(Leadership::Leading {
            since: start,
            valid_until: start + 10 * SEC,
            term: 1,
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(!watcher.is_finished(), "a renewal extends leadership");
        let stepped_down = Instant::now();
        tx.send_replace(Leadership::Standby { holder: None });
        let lost = watcher.await.unwrap();
        assert!(lost >= stepped_down);
    }

    #[tokio::test]
    async fn until_lost_returns_when_the_elector_is_gone() {
        let (tx, mut rx) = watch::channel(Leadership::Leading {
            since: Instant::now(),
            valid_until: Instant::now() + 60 * SEC,
            term: 1,
        });
        drop(tx);
        tokio::time::timeout(SEC, until_lost(&mut rx))
            .await
            .expect("until_lost returns once the sender is dropped");
    }

    #[tokio::test]
    async fn until_leading_waits_for_leadership_or_reports_the_stop() {
        let (tx, mut rx) = watch::channel(Leadership::Standby { holder: None });
        let now = Instant::now();
        let leading = Leadership::Leading {
            since: now,
            valid_until: now + 60 * SEC,
            term: 2,
        };
        let expected = leading.clone();
        let waiter = tokio::spawn(async move { until_leading(&mut rx).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(leading);
        assert_eq!(waiter.await.unwrap(), Ok(expected));

        let (tx, mut rx) = watch::channel(Leadership::Standby { holder: None });
        drop(tx);
        assert_eq!(until_leading(&mut rx).await, Err(ElectorStopped));
    }
}
