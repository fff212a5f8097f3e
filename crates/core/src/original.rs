//! The original Go master's placement, kept only as the baseline that benchmarks compare the
//! real policies against. Nothing in the operator schedules with it.

use super::diagnosis::Diagnosis;
use super::placement::Request;
use super::schedule::Outcome;
use super::worker::{Load, Worker};

/// The original master's `Assign`: for every resource, sort all workers by their payload counter
/// and take the smallest, then add one to its payload.
///
/// Faithful to the original on purpose, including what the new scheduler fixes: no filters
/// (a not-ready, mismatching or full worker is still chosen), no weights (every resource adds
/// one), and a full sort per resource (O(W log W) per decision). The payload starts at each
/// worker's `load`. Where Go left ties to map iteration and an unstable sort, this keeps the
/// input order (a stable sort), so benchmark runs are repeatable. Fails only when there are no
/// workers, as the original's "no worker nodes".
pub fn original_algorithm(workers: &[Worker], requests: &[Request]) -> Vec<Outcome> {
    let mut payloads: Vec<Load> = workers.iter().map(|worker| worker.load).collect();
    requests
        .iter()
        .map(|request| {
            // Like the original, rebuild the candidate list and sort it for every resource.
            let mut candidates: Vec<usize> = (0..workers.len()).collect();
            candidates.sort_by_key(|&index| payloads[index]);
            let &chosen = candidates
                .first()
                .ok_or_else(|| Diagnosis::new(request.weight.get()))?;
            payloads[chosen] += 1;
            Ok(workers[chosen].name.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::super::selector::WorkerSelector;
    use super::super::worker::{NotReady, Readiness};
    use super::*;

    #[test]
    fn takes_the_smallest_payload_and_ignores_everything_else() {
        let workers = [
            Worker::new("worker-b").with_load(1),
            Worker::new("worker-a")
                .with_readiness(Readiness::NotReady(NotReady::Terminating))
                .with_capacity(0),
        ];
        let heavy_gpu = Request::new(NonZeroU64::new(9).unwrap())
            .with_selector(WorkerSelector::default().with_label("gpu", "true"));
        let outcomes = original_algorithm(&workers, &vec![heavy_gpu; 4]);
        let names: Vec<_> = outcomes
            .iter()
            .map(|outcome| outcome.as_deref().unwrap())
            .collect();
        // worker-a (payload 0) first although terminating, full and unlabelled; then ties go to
        // input order, and weights are ignored.
        assert_eq!(names, ["worker-a", "worker-b", "worker-a", "worker-b"]);
    }

    #[test]
    fn no_workers_means_no_placement() {
        let outcomes = original_algorithm(&[], &[Request::unit()]);
        assert_eq!(outcomes[0].as_ref().unwrap_err().reason(), "NoWorkers");
    }
}
