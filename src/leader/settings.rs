//! The election's settings: where the Lease lives, who we are, and the three durations, checked
//! before anything starts so that a bad flag is refused with a message naming it.

use std::time::Duration;

/// client-go's default: how long candidates wait for a silent holder before taking over.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// client-go's default: how long a leader keeps acting without a successful renewal.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// client-go's default: how often to renew, or to retry acquiring.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// A standby's wait after failed rounds grows up to this many retry periods (8 s by default).
pub const MAX_BACKOFF_FACTOR: u32 = 4;

/// Where the Lease lives, who we are, and the three durations of the election.
///
/// Invariant (checked by [`LeaseSettings::validate`]):
/// `lease_duration > renew_deadline > retry_period > 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's name in `holderIdentity`; must be unique per running process.
    pub identity: String,
    /// How long candidates wait, after they last saw the record change, before taking over.
    pub lease_duration: Duration,
    /// How long a leader keeps acting after sending its last successful renewal.
    pub renew_deadline: Duration,
    /// Interval between renewals (leading) or acquisition attempts (standby); also the timeout of
    /// each API call.
    pub retry_period: Duration,
}

/// A setting the election cannot work with, phrased for the person who passed the flag.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "leader election: the lease namespace {0:?} is not a valid namespace name \
         (lowercase letters, digits and '-', starting and ending with a letter or digit, \
         at most 63 characters)"
    )]
    Namespace(String),
    #[error(
        "leader election: the lease name {0:?} is not a valid object name \
         (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, \
         at most 253 characters)"
    )]
    Name(String),
    #[error(
        "leader election: the identity must not be empty; it tells the replicas apart \
         (the Pod name is a good choice)"
    )]
    EmptyIdentity,
    #[error("leader election: the retry period must be greater than zero")]
    ZeroRetryPeriod,
    #[error(
        "leader election: the renew deadline ({renew_deadline:?}) must be longer than the retry \
         period ({retry_period:?}), so that a leader can retry a failed renewal before it gives up"
    )]
    RenewDeadlineTooShort {
        renew_deadline: Duration,
        retry_period: Duration,
    },
    #[error(
        "leader election: the lease duration ({lease_duration:?}) must be longer than the renew \
         deadline ({renew_deadline:?}), so that a leader that cannot renew stops acting before \
         another replica may take over"
    )]
    LeaseDurationTooShort {
        lease_duration: Duration,
        renew_deadline: Duration,
    },
    #[error(
        "leader election: the lease duration ({0:?}) is too long; the Lease stores it in \
         seconds as a 32-bit number"
    )]
    LeaseDurationTooLong(Duration),
}

// === impl LeaseSettings ===

impl LeaseSettings {
    /// Settings with client-go's default durations.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if !is_dns_label(&self.namespace) {
            return Err(SettingsError::Namespace(self.namespace.clone()));
        }
        if !is_dns_subdomain(&self.name) {
            return Err(SettingsError::Name(self.name.clone()));
        }
        if self.identity.is_empty() {
            return Err(SettingsError::EmptyIdentity);
        }
        if self.retry_period.is_zero() {
            return Err(SettingsError::ZeroRetryPeriod);
        }
        if self.renew_deadline <= self.retry_period {
            return Err(SettingsError::RenewDeadlineTooShort {
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(SettingsError::LeaseDurationTooShort {
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
            });
        }
        if i32::try_from(ceil_seconds(self.lease_duration)).is_err() {
            return Err(SettingsError::LeaseDurationTooLong(self.lease_duration));
        }
        Ok(())
    }

    /// How long to wait before the next round. A leader renews every retry period whatever
    /// happens (its deadline depends on it). A standby waits a retry period, doubled for each
    /// consecutive failed round up to [`MAX_BACKOFF_FACTOR`] times it: an API server that
    /// refuses fast is not hammered, and a standby that comes back is at most that late (it
    /// still needs the record unchanged for a lease duration before it takes over).
    pub fn retry_delay(&self, leading: bool, failures: u32) -> Duration {
        if leading || failures <= 1 {
            return self.retry_period;
        }
        let max = self.retry_period.saturating_mul(MAX_BACKOFF_FACTOR);
        crate::retry::doubling_after(self.retry_period, max, failures)
    }

    /// `leaseDurationSeconds` as written to the Lease: rounded up, so that what others read is
    /// never shorter than what we promise.
    pub(super) fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(ceil_seconds(self.lease_duration)).unwrap_or(i32::MAX)
    }
}

fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

fn is_dns_part(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(alnum) && s.ends_with(alnum) && s.chars().all(|c| alnum(c) || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::*;

    // --- settings ---

    #[test]
    fn defaults_are_client_gos_and_valid() {
        let s = settings();
        assert_eq!(
            (s.lease_duration, s.renew_deadline, s.retry_period),
            (15 * SEC, 10 * SEC, 2 * SEC)
        );
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.lease_duration_seconds(), 15);
    }

    #[test]
    fn short_test_durations_are_valid() {
        let s = LeaseSettings {
            lease_duration: 3 * SEC,
            renew_deadline: 2 * SEC,
            retry_period: Duration::from_millis(500),
            ..settings()
        };
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn lease_duration_must_exceed_renew_deadline() {
        let s = LeaseSettings {
            lease_duration: 10 * SEC,
            ..settings()
        };
        let error = s.validate().unwrap_err();
        assert_eq!(
            error,
            SettingsError::LeaseDurationTooShort {
                lease_duration: 10 * SEC,
                renew_deadline: 10 * SEC
            }
        );
        assert_eq!(
            error.to_string(),
            "leader election: the lease duration (10s) must be longer than the renew deadline \
             (10s), so that a leader that cannot renew stops acting before another replica may \
             take over"
        );
    }

    #[test]
    fn renew_deadline_must_exceed_retry_period() {
        let s = LeaseSettings {
            renew_deadline: 2 * SEC,
            ..settings()
        };
        let error = s.validate().unwrap_err();
        assert!(
            matches!(error, SettingsError::RenewDeadlineTooShort { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("renew deadline (2s)"), "{error}");
        assert!(error.to_string().contains("retry period (2s)"), "{error}");
    }

    #[test]
    fn retry_period_must_be_positive() {
        let s = LeaseSettings {
            retry_period: Duration::ZERO,
            ..settings()
        };
        assert_eq!(s.validate(), Err(SettingsError::ZeroRetryPeriod));
    }

    #[test]
    fn names_and_identity_are_checked() {
        for namespace in [
            "",
            "Crawler",
            "-crawler",
            "crawler-",
            "a.b",
            &"n".repeat(64),
        ] {
            let s = LeaseSettings::new(namespace, "lease", "me");
            assert_eq!(
                s.validate(),
                Err(SettingsError::Namespace(namespace.to_owned())),
                "{namespace:?}"
            );
        }
        for name in ["", "Lease", "lease_1", "a..b", ".a", &"n".repeat(254)] {
            let s = LeaseSettings::new("crawler", name, "me");
            assert_eq!(
                s.validate(),
                Err(SettingsError::Name(name.to_owned())),
                "{name:?}"
            );
        }
        assert_eq!(
            LeaseSettings::new("crawler", "crawler-operator.crawler.dev", "me").validate(),
            Ok(())
        );
        assert_eq!(
            LeaseSettings::new("crawler", "lease", "").validate(),
            Err(SettingsError::EmptyIdentity)
        );
    }

    #[test]
    fn a_failing_standby_backs_off_and_a_leader_never_does() {
        let s = settings();
        let delays: Vec<_> = (0..6).map(|n| s.retry_delay(false, n)).collect();
        assert_eq!(
            delays,
            [2 * SEC, 2 * SEC, 4 * SEC, 8 * SEC, 8 * SEC, 8 * SEC],
            "doubling from the retry period, capped"
        );
        assert_eq!(s.retry_delay(false, u32::MAX), 8 * SEC);
        assert_eq!(s.retry_delay(true, 7), 2 * SEC);
    }

    #[test]
    fn lease_duration_seconds_round_up_and_must_fit() {
        let s = LeaseSettings {
            lease_duration: Duration::from_millis(2500),
            renew_deadline: 2 * SEC,
            retry_period: SEC,
            ..settings()
        };
        assert_eq!(s.lease_duration_seconds(), 3);
        let s = LeaseSettings {
            lease_duration: Duration::from_secs(u64::from(u32::MAX)),
            ..settings()
        };
        assert!(matches!(
            s.validate(),
            Err(SettingsError::LeaseDurationTooLong(_))
        ));
    }
}
