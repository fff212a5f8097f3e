//! Workers as the scheduler sees them: a name, labels, whether the Pod can take work now,
//! and how much work it already carries.

use std::collections::BTreeMap;

/// Units of work. A resource costs its `weight` in load units; a worker's load is the sum of the
/// weights assigned to it, derived from the assignments themselves (never a hand-kept counter
/// that drifts, as the original master's `Payload` did).
pub type Load = u64;

/// One worker Pod, reduced to what placement needs. The controller builds these from its index
/// of Pods; the scheduler never sees a Kubernetes object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Worker {
    /// The Pod name: unique among workers, and the final tie-breaker so that decisions do not
    /// depend on the order in which the index happens to list workers.
    pub name: String,
    /// The Pod's labels, matched against a resource's `workerSelector`.
    pub labels: BTreeMap<String, String>,
    /// Whether the Pod may take work now, and if not, why (the why ends up in the diagnosis).
    pub readiness: Readiness,
    /// Load units this worker can carry; `None` means unbounded.
    pub capacity: Option<Load>,
    /// Load already assigned, including decisions made but not yet written ("assumed"), so that
    /// consecutive decisions see each other.
    pub load: Load,
}

impl Worker {
    /// A ready worker with no labels, unbounded capacity and no load: the common case in tests,
    /// refined with the `with_*` methods.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
            readiness: Readiness::Ready,
            capacity: None,
            load: 0,
        }
    }

    #[must_use]
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    #[must_use]
    pub fn with_readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    #[must_use]
    pub fn with_capacity(mut self, capacity: Load) -> Self {
        self.capacity = Some(capacity);
        self
    }

    #[must_use]
    pub fn with_load(mut self, load: Load) -> Self {
        self.load = load;
        self
    }

    /// Load units still free, `None` when the worker is unbounded. Saturates at zero for a
    /// worker whose capacity was lowered below its current load.
    pub fn free_capacity(&self) -> Option<Load> {
        self.capacity
            .map(|capacity| capacity.saturating_sub(self.load))
    }
}

/// Whether a worker Pod may take work now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Readiness {
    Ready,
    NotReady(NotReady),
}

/// Why a worker Pod may not take work. Kept apart so that "3 not ready" can say which kind of
/// not ready, which is what an operator needs to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotReady {
    /// The Pod's `Ready` condition is not `True`.
    PodNotReady,
    /// The Pod has a deletion timestamp: work given to it now would be lost shortly.
    Terminating,
    /// The Pod has no `podIP` yet, so no one could reach it.
    NoAddress,
    /// The worker's heartbeat Lease was not renewed in time: the Pod may look ready while the
    /// process inside is stuck.
    HeartbeatExpired,
}

impl NotReady {
    /// Every reason, in the order diagnoses list them.
    pub const ALL: [NotReady; 4] = [
        NotReady::PodNotReady,
        NotReady::Terminating,
        NotReady::NoAddress,
        NotReady::HeartbeatExpired,
    ];
}
