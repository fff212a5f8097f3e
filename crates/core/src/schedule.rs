//! Many decisions in a row over a worker table this module owns, assuming each decision before
//! the next. The controller uses [`place`](super::place()) with its own index and assume step;
//! this is for tests, benchmarks and anything that wants the whole batch at once.

use super::diagnosis::Diagnosis;
use super::placement::{Request, choose};
use super::policy::Policy;
use super::worker::Worker;

/// Per-resource result of a batch: the chosen worker's name, or why there was none.
pub type Outcome = Result<String, Diagnosis>;

/// A worker table and a policy. Each placement adds the resource's weight to the chosen
/// worker's load at once, as the Kubernetes scheduler's cache "assumes" a binding, so the next
/// decision sees it.
#[derive(Debug)]
pub struct Schedule {
    policy: Box<dyn Policy>,
    workers: Vec<Worker>,
}

impl Schedule {
    pub fn new(policy: Box<dyn Policy>, workers: impl IntoIterator<Item = Worker>) -> Self {
        Self {
            policy,
            workers: workers.into_iter().collect(),
        }
    }

    /// The workers, in the order given, with the load of every decision so far.
    pub fn workers(&self) -> &[Worker] {
        &self.workers
    }

    pub fn worker(&self, name: &str) -> Option<&Worker> {
        self.workers.iter().find(|worker| worker.name == name)
    }

    pub fn into_workers(self) -> Vec<Worker> {
        self.workers
    }

    /// Places one resource and assumes it: the returned worker already carries its weight.
    pub fn place(&mut self, request: &Request) -> Result<&Worker, Diagnosis> {
        let (position, _) = choose(self.policy.as_ref(), &self.workers, request)?;
        let worker = &mut self.workers[position];
        worker.load = worker.load.saturating_add(request.weight.get());
        Ok(worker)
    }

    /// Places resources in order, each seeing the ones before it. One outcome per request, in
    /// the same order; an unplaceable resource changes nothing and the batch goes on.
    pub fn place_all<'r>(
        &mut self,
        requests: impl IntoIterator<Item = &'r Request>,
    ) -> Vec<Outcome> {
        requests
            .into_iter()
            .map(|request| self.place(request).map(|worker| worker.name.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::PolicyKind;
    use super::*;

    fn names(outcomes: &[Outcome]) -> Vec<&str> {
        outcomes
            .iter()
            .map(|outcome| outcome.as_deref().unwrap_or("-"))
            .collect()
    }

    #[test]
    fn least_loaded_takes_turns() {
        let workers =
            ["worker-a", "worker-b", "worker-c"].map(|name| Worker::new(name).with_capacity(2));
        let mut schedule = Schedule::new(PolicyKind::LeastLoaded.build(), workers);
        let outcomes = schedule.place_all(&vec![Request::unit(); 7]);
        assert_eq!(
            names(&outcomes),
            [
                "worker-a", "worker-b", "worker-c", "worker-a", "worker-b", "worker-c", "-"
            ]
        );
        assert_eq!(
            outcomes[6].as_ref().unwrap_err().to_string(),
            "0/3 workers eligible: 3 have insufficient capacity for weight 1"
        );
    }

    #[test]
    fn bin_pack_fills_one_worker_before_the_next() {
        let workers =
            ["worker-c", "worker-a", "worker-b"].map(|name| Worker::new(name).with_capacity(3));
        let mut schedule = Schedule::new(PolicyKind::BinPack.build(), workers);
        let outcomes = schedule.place_all(&vec![Request::unit(); 7]);
        assert_eq!(
            names(&outcomes),
            [
                "worker-a", "worker-a", "worker-a", "worker-b", "worker-b", "worker-b", "worker-c"
            ]
        );
        let loads: Vec<_> = schedule
            .workers()
            .iter()
            .map(|worker| (worker.name.as_str(), worker.load))
            .collect();
        assert_eq!(loads, [("worker-c", 1), ("worker-a", 3), ("worker-b", 3)]);
    }

    #[test]
    fn bin_pack_prefers_the_partly_full_worker_that_still_fits() {
        let workers = [
            Worker::new("worker-a").with_capacity(10).with_load(8),
            Worker::new("worker-b").with_capacity(10).with_load(5),
            Worker::new("worker-c").with_capacity(10),
        ];
        let mut schedule = Schedule::new(PolicyKind::BinPack.build(), workers);
        let three = Request::new(std::num::NonZeroU64::new(3).unwrap());
        // worker-a would overflow; worker-b is the fullest that fits, then it is full.
        assert_eq!(schedule.place(&three).unwrap().name, "worker-b");
        assert_eq!(schedule.place(&three).unwrap().name, "worker-c");
        assert_eq!(schedule.worker("worker-b").unwrap().load, 8);
    }
}
