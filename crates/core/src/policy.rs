//! The score stage: how to choose among workers that passed the filters. A policy is picked by
//! flag ([`PolicyKind`]) so that changing the algorithm is configuration, not an edit to the
//! controller's loop.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::placement::Request;
use super::worker::{Load, Worker};

/// Ranks feasible workers for a resource.
///
/// The scoring step is a comparison rather than a number: load relative to capacity is a ratio,
/// and a comparison lets policies decide exactly (integer cross-multiplication) instead of
/// rounding to a normalised score where distinct workers could tie. Callers only pass workers
/// that passed [`filter`](super::filter()), and break ties by worker name, so a policy need not.
pub trait Policy: fmt::Debug + Send + Sync {
    /// A `CamelCase` name, suitable as the `reason` of the resource's `Assigned` condition.
    fn name(&self) -> &'static str;

    /// [`Ordering::Less`] when `a` is the better home for `request` than `b`, `Equal` when the
    /// policy has no preference. Must be a total preorder (consistent and transitive), so that
    /// the choice does not depend on the order workers are listed in.
    fn compare(&self, request: &Request, a: &Worker, b: &Worker) -> Ordering;
}

/// Spread work: the worker with the least load relative to its capacity, after adding the
/// resource (Kubernetes' `LeastAllocated`). With equal capacities this is the original master's
/// "smallest payload", made weight-aware. A worker without capacity counts as unbounded, which
/// is emptier than any bounded worker; among unbounded workers plain load decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn name(&self) -> &'static str {
        "LeastLoaded"
    }

    fn compare(&self, request: &Request, a: &Worker, b: &Worker) -> Ordering {
        Fill::after(a, request).cmp(Fill::after(b, request))
    }
}

/// Keep workers few: the fullest worker that still fits, after adding the resource
/// (Kubernetes' `MostAllocated`). Useful when workers are costly and idle ones can be scaled
/// away. Unbounded workers are the emptiest, so they are used last, the busiest of them first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BinPack;

impl Policy for BinPack {
    fn name(&self) -> &'static str {
        "BinPack"
    }

    fn compare(&self, request: &Request, a: &Worker, b: &Worker) -> Ordering {
        Fill::after(b, request).cmp(Fill::after(a, request))
    }
}

/// How full a worker would be with the resource added: `load / capacity`, or unbounded.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Unbounded { load: Load },
    Bounded { load: Load, capacity: Load },
}

impl Fill {
    fn after(worker: &Worker, request: &Request) -> Self {
        let load = worker.load.saturating_add(request.weight.get());
        match worker.capacity {
            None => Fill::Unbounded { load },
            Some(capacity) => Fill::Bounded { load, capacity },
        }
    }

    /// Emptier first. Unbounded is emptier than any bounded fill (its ratio is zero); ratios are
    /// compared exactly as `a/c < b/d  <=>  a*d < b*c` in 128 bits, which cannot overflow.
    fn cmp(self, other: Self) -> Ordering {
        match (self, other) {
            (Fill::Unbounded { load: a }, Fill::Unbounded { load: b }) => a.cmp(&b),
            (Fill::Unbounded { .. }, Fill::Bounded { .. }) => Ordering::Less,
            (Fill::Bounded { .. }, Fill::Unbounded { .. }) => Ordering::Greater,
            (
                Fill::Bounded {
                    load: a,
                    capacity: c,
                },
                Fill::Bounded {
                    load: b,
                    capacity: d,
                },
            ) => (u128::from(a) * u128::from(d)).cmp(&(u128::from(b) * u128::from(c))),
        }
    }
}

/// The policies the controller can be started with (`--policy least-loaded|bin-pack`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    #[default]
    LeastLoaded,
    BinPack,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 2] = [PolicyKind::LeastLoaded, PolicyKind::BinPack];

    /// The flag spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::BinPack => "bin-pack",
        }
    }

    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::LeastLoaded => Box::new(LeastLoaded),
            PolicyKind::BinPack => Box::new(BinPack),
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PolicyKind {
    type Err = UnknownPolicy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// A `--policy` value that names no policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduling policy {0:?}; expected least-loaded or bin-pack")]
pub struct UnknownPolicy(pub String);

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::*;

    fn weight(weight: u64) -> Request {
        Request::new(NonZeroU64::new(weight).unwrap())
    }

    #[test]
    fn policy_kind_round_trips_through_its_flag_spelling() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.to_string().parse::<PolicyKind>(), Ok(kind));
            assert!(
                UnknownPolicy(String::new())
                    .to_string()
                    .contains(kind.as_str()),
                "{kind} listed in the error"
            );
        }
        assert_eq!(PolicyKind::default(), PolicyKind::LeastLoaded);
        assert_eq!(PolicyKind::LeastLoaded.build().name(), "LeastLoaded");
        assert_eq!(PolicyKind::BinPack.build().name(), "BinPack");
        assert_eq!(
            "LeastLoaded".parse::<PolicyKind>().unwrap_err().to_string(),
            "unknown scheduling policy \"LeastLoaded\"; expected least-loaded or bin-pack"
        );
    }

    #[test]
    fn least_loaded_compares_ratios_exactly() {
        let request = weight(1);
        // (load + 1) / capacity on each side: 2/3 < 3/4, 1/3 == 2/6, unbounded first, then the
        // largest values, where floating point could not tell the two apart.
        let cases = [
            ((1, Some(3)), (2, Some(4)), Ordering::Less),
            ((0, Some(3)), (1, Some(6)), Ordering::Equal),
            ((0, None), (0, Some(1_000_000)), Ordering::Less),
            ((5, None), (3, None), Ordering::Greater),
            (
                (u64::MAX - 1, Some(u64::MAX)),
                (u64::MAX - 2, Some(u64::MAX)),
                Ordering::Greater,
            ),
        ];
        for ((load_a, capacity_a), (load_b, capacity_b), expected) in cases {
            let a = Worker {
                capacity: capacity_a,
                ..Worker::new("a").with_load(load_a)
            };
            let b = Worker {
                capacity: capacity_b,
                ..Worker::new("b").with_load(load_b)
            };
            assert_eq!(
                LeastLoaded.compare(&request, &a, &b),
                expected,
                "{a:?} vs {b:?}"
            );
            assert_eq!(
                BinPack.compare(&request, &a, &b),
                expected.reverse(),
                "{a:?} vs {b:?}"
            );
        }
    }

    #[test]
    fn least_loaded_counts_the_resource_being_placed() {
        // Before adding, a (1/4) is emptier than b (4/10); after adding weight 2, b (6/10) is
        // emptier than a (3/4), and that is the comparison that counts.
        let a = Worker::new("a").with_capacity(4).with_load(1);
        let b = Worker::new("b").with_capacity(10).with_load(4);
        assert_eq!(LeastLoaded.compare(&weight(2), &b, &a), Ordering::Less);
        // With weight 1 it is 2/4 against 5/10: a tie, left to the name.
        assert_eq!(LeastLoaded.compare(&weight(1), &b, &a), Ordering::Equal);
    }
}
