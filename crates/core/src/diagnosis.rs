//! Why a resource could not be placed, aggregated over all workers into the sentence a person
//! reads in `kubectl describe` and the short reason a condition carries.

use std::fmt;

use super::filter::Unfit;
use super::worker::Load;

/// Counts of [`Unfit`] reasons over every worker considered for one resource, like the
/// Kubernetes scheduler's "0/5 nodes are available: ..." message: no single worker's story, but
/// enough to see whether to add workers, fix labels or raise capacity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    weight: Load,
    counts: [usize; Unfit::ALL.len()],
    /// A sentence appended after the counts (host affinity: which host binds it where).
    note: Option<String>,
}

impl Diagnosis {
    /// Condition reason when there are no worker Pods at all.
    pub const NO_WORKERS: &'static str = "NoWorkers";
    /// Condition reason when there are workers but every one was filtered out.
    pub const NO_ELIGIBLE_WORKER: &'static str = "NoEligibleWorker";

    /// An empty diagnosis for a resource of this weight (the weight is part of the message,
    /// since "insufficient capacity" means little without it).
    pub(super) fn new(weight: Load) -> Self {
        Self {
            weight,
            counts: [0; Unfit::ALL.len()],
            note: None,
        }
    }

    /// Appends `note` to the message ("...; host x is crawled on worker ...").
    #[must_use]
    pub fn with_note(mut self, note: String) -> Self {
        self.note = Some(note);
        self
    }

    /// Whether host affinity is part of the story (the condition's reason says so).
    pub fn hosts_elsewhere(&self) -> bool {
        self.note.is_some()
    }

    pub(super) fn record(&mut self, unfit: Unfit) {
        self.counts[unfit.index()] += 1;
    }

    /// How many workers were considered (each is counted under exactly one reason).
    pub fn workers(&self) -> usize {
        self.counts.iter().sum()
    }

    /// The weight of the resource that could not be placed.
    pub fn weight(&self) -> Load {
        self.weight
    }

    /// How many workers were passed over for this reason.
    pub fn count(&self, unfit: Unfit) -> usize {
        self.counts[unfit.index()]
    }

    /// The reasons that occurred, with their counts, in filter order.
    pub fn reasons(&self) -> impl Iterator<Item = (Unfit, usize)> + '_ {
        Unfit::ALL
            .into_iter()
            .map(|unfit| (unfit, self.count(unfit)))
            .filter(|&(_, count)| count > 0)
    }

    /// A `CamelCase` reason for the resource's condition: [`Self::NO_WORKERS`] or
    /// [`Self::NO_ELIGIBLE_WORKER`].
    pub fn reason(&self) -> &'static str {
        if self.workers() == 0 {
            Self::NO_WORKERS
        } else {
            Self::NO_ELIGIBLE_WORKER
        }
    }
}

/// "0/3 workers eligible: 2 not ready, 1 does not match workerSelector".
impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workers = self.workers();
        write!(f, "0/{workers} workers eligible: ")?;
        if workers == 0 {
            return f.write_str("no worker Pods found");
        }
        for (position, (unfit, count)) in self.reasons().enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{count} {}", unfit.phrase(count))?;
            if unfit == Unfit::InsufficientCapacity {
                write!(f, " for weight {}", self.weight)?;
            }
        }
        if let Some(note) = &self.note {
            write!(f, "; {note}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnosis {}

#[cfg(test)]
mod tests {
    use super::super::worker::NotReady;
    use super::*;

    fn diagnosis(weight: Load, reasons: &[(Unfit, usize)]) -> Diagnosis {
        let mut diagnosis = Diagnosis::new(weight);
        for &(unfit, count) in reasons {
            for _ in 0..count {
                diagnosis.record(unfit);
            }
        }
        diagnosis
    }

    #[test]
    fn renders_like_the_kubernetes_scheduler() {
        use NotReady::{HeartbeatExpired, NoAddress, PodNotReady, Terminating};
        use Unfit::{InsufficientCapacity, NotReady as Down, SelectorMismatch};
        // (reasons recorded, message, condition reason)
        type Case = (&'static [(Unfit, usize)], &'static str, &'static str);
        let cases: &[Case] = &[
            (
                &[],
                "0/0 workers eligible: no worker Pods found",
                "NoWorkers",
            ),
            (
                &[(SelectorMismatch, 1), (Down(PodNotReady), 2)],
                "0/3 workers eligible: 2 not ready, 1 does not match workerSelector",
                "NoEligibleWorker",
            ),
            (
                &[(InsufficientCapacity, 2)],
                "0/2 workers eligible: 2 have insufficient capacity for weight 5",
                "NoEligibleWorker",
            ),
            (
                &[
                    (InsufficientCapacity, 1),
                    (SelectorMismatch, 3),
                    (Down(HeartbeatExpired), 1),
                    (Down(NoAddress), 2),
                    (Down(Terminating), 1),
                    (Down(PodNotReady), 1),
                ],
                "0/9 workers eligible: 1 not ready, 1 terminating, 2 have no Pod IP, 1 heartbeat expired, \
                 3 do not match workerSelector, 1 has insufficient capacity for weight 5",
                "NoEligibleWorker",
            ),
            (
                &[(Down(NoAddress), 1)],
                "0/1 workers eligible: 1 has no Pod IP",
                "NoEligibleWorker",
            ),
        ];
        for (reasons, message, reason) in cases {
            let diagnosis = diagnosis(5, reasons);
            assert_eq!(diagnosis.to_string(), *message);
            assert_eq!(diagnosis.reason(), *reason);
            assert_eq!(
                diagnosis.workers(),
                reasons.iter().map(|(_, count)| count).sum::<usize>()
            );
        }
    }

    #[test]
    fn reasons_come_in_filter_order_whatever_the_recording_order() {
        let diagnosis = diagnosis(
            1,
            &[
                (Unfit::InsufficientCapacity, 1),
                (Unfit::SelectorMismatch, 2),
            ],
        );
        assert_eq!(
            diagnosis.reasons().collect::<Vec<_>>(),
            [
                (Unfit::SelectorMismatch, 2),
                (Unfit::InsufficientCapacity, 1)
            ]
        );
    }
}
