//! Test-only builders shared by the election's unit tests.

use std::time::{Duration, Instant};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};

use super::{LeaseRecord, LeaseSettings, Observed};

pub const SEC: Duration = Duration::from_secs(1);

pub fn settings() -> LeaseSettings {
    LeaseSettings::new("crawler", "crawler-operator", "replica-a")
}

pub fn record(holder: Option<&str>, resource_version: &str) -> LeaseRecord {
    LeaseRecord {
        holder: holder.map(str::to_owned),
        renew_time: Some("2024-01-01T00:00:00Z".parse().unwrap()),
        resource_version: Some(resource_version.to_owned()),
        lease_duration_seconds: Some(15),
        transitions: 4,
        released_by_holder: false,
    }
}

/// A record freed by its holder's own release.
pub fn released_record(resource_version: &str) -> LeaseRecord {
    LeaseRecord {
        released_by_holder: true,
        lease_duration_seconds: Some(1),
        ..record(None, resource_version)
    }
}

pub fn seen(record: LeaseRecord, first_seen: Instant) -> Observed {
    Observed { record, first_seen }
}

pub fn lease(holder: Option<&str>, resource_version: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("crawler-operator".into()),
            namespace: Some("crawler".into()),
            resource_version: Some(resource_version.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(15),
            lease_transitions: Some(4),
            acquire_time: Some(MicroTime("2024-01-01T00:00:00Z".parse().unwrap())),
            renew_time: Some(MicroTime("2024-01-01T00:00:05Z".parse().unwrap())),
            ..LeaseSpec::default()
        }),
    }
}
