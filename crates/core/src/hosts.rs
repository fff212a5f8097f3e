//! Host affinity: tasks that crawl a common host run on one worker, so that worker's per-host
//! gate (one queue per host, as Nutch and Heritrix partition by host) keeps the
//! installation's budget for that host: only one worker process ever sends to it.
//!
//! A task's hosts are static (`spec.allowedHosts`, else its seeds' hosts). [`HostHolders`] keeps,
//! for every host, the workers whose tasks crawl it; [`HostHolders::affinity`] says where a task
//! may go: anywhere (no other task crawls its hosts), only to the worker that already crawls
//! them, or nowhere for now (two workers crawl its hosts, or a worker of another namespace does).
//! A task that holds its hosts on a worker keeps holding them while it may still run there
//! (assigned, being placed, or releasing); the caller says which workers have stopped every task
//! (a lapsed heartbeat), whose holds no longer count.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

/// A worker, installation-wide: workers serve the tasks of their own namespace, but a host's
/// budget is the installation's, so holds are compared across namespaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    pub namespace: String,
    pub worker: String,
}

impl Holder {
    pub fn new(namespace: impl Into<String>, worker: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            worker: worker.into(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.worker)
    }
}

/// One task crawling one host on one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub host: String,
    pub holder: Holder,
    /// The task's name (in the holder's namespace).
    pub task: String,
}

/// Where a task may run, given the hosts other tasks crawl.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Affinity {
    /// No other task crawls any of its hosts on a worker that may still run it: any worker.
    Free,
    /// Only this worker of the task's namespace (`hold` says which host binds it there).
    Bound(Hold),
    /// Nowhere for now: its hosts are crawled on two workers (it would join both groups).
    Split(Hold, Hold),
    /// Nowhere for now: a worker of another namespace crawls one of its hosts.
    OtherNamespace(Hold),
}

impl Affinity {
    /// The worker the task must go to, if bound.
    pub fn worker(&self) -> Option<&str> {
        match self {
            Self::Bound(hold) => Some(&hold.holder.worker),
            _ => None,
        }
    }

    /// The sentence that follows a diagnosis when placement failed under this affinity: which
    /// host binds the task where, and what to do.
    pub fn explain(&self) -> Option<String> {
        const WHY: &str = "tasks that share a host run on one worker, so that the host's \
                           politeness budget holds for the whole installation";
        match self {
            Self::Free => None,
            Self::Bound(h) => Some(format!(
                "host {} is crawled on worker {} (by task {}) and {WHY}: make room on {} (raise \
                 its capacity or stop a task there) or make it ready, or crawl other hosts \
                 (spec.allowedHosts); the task waits until then",
                h.host, h.holder.worker, h.task, h.holder.worker
            )),
            Self::Split(a, b) => Some(format!(
                "host {} is crawled on worker {} (by task {}) and host {} on worker {} (by task \
                 {}), and {WHY}: the task waits until one of them finishes or moves, or crawl \
                 other hosts (spec.allowedHosts)",
                a.host, a.holder.worker, a.task, b.host, b.holder.worker, b.task
            )),
            Self::OtherNamespace(h) => Some(format!(
                "host {} is crawled on worker {} of namespace {} (by task {}/{}), and {WHY}: the \
                 task waits until that one finishes, or crawl other hosts (spec.allowedHosts)",
                h.host, h.holder.worker, h.holder.namespace, h.holder.namespace, h.task
            )),
        }
    }
}

/// For every host, the workers whose tasks crawl it, and those tasks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostHolders {
    hosts: HashMap<String, BTreeMap<Holder, BTreeSet<String>>>,
}

impl HostHolders {
    /// `task` crawls `hosts` on `holder` (from the moment it is placed there until it no longer
    /// runs there).
    pub fn hold(&mut self, holder: &Holder, task: &str, hosts: &[String]) {
        for host in hosts {
            self.hosts
                .entry(host.clone())
                .or_default()
                .entry(holder.clone())
                .or_default()
                .insert(task.to_owned());
        }
    }

    /// `task` no longer crawls `hosts` on `holder`. Returns whether some host is no longer
    /// crawled there at all (a task waiting for it may go elsewhere now).
    pub fn release(&mut self, holder: &Holder, task: &str, hosts: &[String]) -> bool {
        let mut freed = false;
        for host in hosts {
            let Some(holders) = self.hosts.get_mut(host) else {
                continue;
            };
            if let Some(tasks) = holders.get_mut(holder) {
                tasks.remove(task);
                if tasks.is_empty() {
                    holders.remove(holder);
                    freed = true;
                }
            }
            if holders.is_empty() {
                self.hosts.remove(host);
            }
        }
        freed
    }

    /// The holders of `host` and their tasks.
    pub fn holders(&self, host: &str) -> impl Iterator<Item = (&Holder, &BTreeSet<String>)> {
        self.hosts.get(host).into_iter().flatten()
    }

    /// How many hosts are crawled somewhere.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Where task `namespace/task`, crawling `hosts`, may run. Its own holds do not count (it
    /// may be being placed again), nor those on a worker that has `stopped` every task.
    /// Deterministic: hosts in the order given, holders in name order.
    pub fn affinity(
        &self,
        namespace: &str,
        task: &str,
        hosts: &[String],
        stopped: impl Fn(&Holder) -> bool,
    ) -> Affinity {
        let mut bound: Option<Hold> = None;
        for host in hosts {
            for (holder, tasks) in self.holders(host) {
                let Some(other) = tasks
                    .iter()
                    .find(|t| !(holder.namespace == namespace && t.as_str() == task))
                else {
                    continue;
                };
                if stopped(holder) {
                    continue;
                }
                let hold = Hold {
                    host: host.clone(),
                    holder: holder.clone(),
                    task: other.clone(),
                };
                if holder.namespace != namespace {
                    return Affinity::OtherNamespace(hold);
                }
                match &bound {
                    None => bound = Some(hold),
                    Some(first) if first.holder != hold.holder => {
                        return Affinity::Split(first.clone(), hold);
                    }
                    Some(_) => {}
                }
            }
        }
        bound.map_or(Affinity::Free, Affinity::Bound)
    }

    /// Hosts crawled on more than one worker that may still run tasks: empty whenever every
    /// placement followed [`HostHolders::affinity`] (the property tests' invariant).
    pub fn split_hosts(&self, stopped: impl Fn(&Holder) -> bool) -> Vec<String> {
        let mut split: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, holders)| holders.keys().filter(|h| !stopped(h)).count() > 1)
            .map(|(host, _)| host.clone())
            .collect();
        split.sort();
        split
    }
}

/// Whether `task`, running on `holder`, keeps its place under host affinity: no other task
/// crawls its hosts on another worker that may still run it, or each such worker sorts after
/// its own (of two groups that meet, the one on the worker whose name sorts first stays, and
/// the other moves, so the two never both move).
pub fn keeps_place(
    holders: &HostHolders,
    holder: &Holder,
    task: &str,
    hosts: &[String],
    stopped: impl Fn(&Holder) -> bool,
) -> Result<(), Hold> {
    for host in hosts {
        for (other, tasks) in holders.holders(host) {
            if other == holder || stopped(other) || *other > *holder {
                continue;
            }
            if let Some(t) = tasks
                .iter()
                .find(|t| !(other.namespace == holder.namespace && t.as_str() == task))
            {
                return Err(Hold {
                    host: host.clone(),
                    holder: other.clone(),
                    task: t.clone(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(names: &[&str]) -> Vec<String> {
        names.iter().map(|h| (*h).to_owned()).collect()
    }

    fn w(name: &str) -> Holder {
        Holder::new("ns", name)
    }

    #[test]
    fn a_task_goes_where_its_hosts_are_crawled() {
        let mut holders = HostHolders::default();
        let none = |_: &Holder| false;
        assert_eq!(
            holders.affinity("ns", "a", &hosts(&["x"]), none),
            Affinity::Free
        );
        holders.hold(&w("worker-1"), "a", &hosts(&["x", "y"]));
        // Its own hold does not bind it (it may be placed again).
        assert_eq!(
            holders.affinity("ns", "a", &hosts(&["x", "y"]), none),
            Affinity::Free
        );
        // Another task with one host in common.
        let b = holders.affinity("ns", "b", &hosts(&["z", "y"]), none);
        assert_eq!(b.worker(), Some("worker-1"));
        assert_eq!(
            b,
            Affinity::Bound(Hold {
                host: "y".into(),
                holder: w("worker-1"),
                task: "a".into()
            })
        );
        holders.hold(&w("worker-2"), "c", &hosts(&["z"]));
        // b would join both groups: it waits.
        let split = holders.affinity("ns", "b", &hosts(&["z", "y"]), none);
        assert!(matches!(split, Affinity::Split(..)), "{split:?}");
        let message = split.explain().unwrap();
        assert!(
            message.contains("host z is crawled on worker worker-2 (by task c)")
                && message.contains("host y on worker worker-1 (by task a)"),
            "{message}"
        );
        // Unless worker-2 stopped every task (its heartbeat lapsed): then worker-1.
        let lapsed = |h: &Holder| h.worker == "worker-2";
        assert_eq!(
            holders
                .affinity("ns", "b", &hosts(&["z", "y"]), lapsed)
                .worker(),
            Some("worker-1")
        );
        // A task of another namespace crawling y waits for the installation's budget.
        let other = holders.affinity("other", "a", &hosts(&["y"]), none);
        assert!(matches!(other, Affinity::OtherNamespace(_)), "{other:?}");
        assert!(
            other
                .explain()
                .unwrap()
                .contains("worker worker-1 of namespace ns (by task ns/a)")
        );
    }

    #[test]
    fn releasing_the_last_task_of_a_host_frees_it() {
        let mut holders = HostHolders::default();
        holders.hold(&w("worker-1"), "a", &hosts(&["x"]));
        holders.hold(&w("worker-1"), "b", &hosts(&["x", "y"]));
        assert!(!holders.release(&w("worker-1"), "a", &hosts(&["x"])));
        assert!(holders.release(&w("worker-1"), "b", &hosts(&["x", "y"])));
        assert!(holders.is_empty());
        // Releasing what was never held changes nothing.
        assert!(!holders.release(&w("worker-1"), "b", &hosts(&["x"])));
    }

    #[test]
    fn of_two_groups_that_meet_the_one_on_the_first_worker_stays() {
        let mut holders = HostHolders::default();
        holders.hold(&w("worker-1"), "a", &hosts(&["x"]));
        holders.hold(&w("worker-2"), "b", &hosts(&["x"]));
        let none = |_: &Holder| false;
        assert_eq!(
            keeps_place(&holders, &w("worker-1"), "a", &hosts(&["x"]), none),
            Ok(())
        );
        let moves = keeps_place(&holders, &w("worker-2"), "b", &hosts(&["x"]), none).unwrap_err();
        assert_eq!(
            (moves.holder.worker.as_str(), moves.task.as_str()),
            ("worker-1", "a")
        );
        assert_eq!(holders.split_hosts(none), ["x"]);
        assert!(holders.split_hosts(|h| h.worker == "worker-1").is_empty());
    }
}

#[cfg(test)]
mod properties {
    //! After any sequence of placements, moves (handoffs), finishes, lost and new workers, no
    //! host is crawled on two workers that may still run tasks.

    use proptest::prelude::*;

    use super::super::{LeastLoaded, NotReady, Readiness, Request, Worker, place_with_hosts};
    use super::*;

    const WORKERS: usize = 4;
    const HOSTS: [&str; 5] = ["h0", "h1", "h2", "h3", "h4"];

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum State {
        Waiting,
        On(usize),
        /// Being moved off this worker: it still runs (and holds its hosts) there.
        Releasing(usize),
        Done,
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Plan a task: place it if it waits, or runs on a worker that stopped; complete its
        /// handoff if it is releasing.
        Plan(usize),
        /// A move asked for (a rebalance, a Pod turning unready): the handoff starts.
        Release(usize),
        Finish(usize),
        /// A worker's heartbeat lapses: it stops every task.
        Lose(usize),
        /// A worker (a new Pod under that name, nothing assigned to it) becomes ready.
        Join(usize),
    }

    fn op(tasks: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..tasks).prop_map(Op::Plan),
            2 => (0..tasks).prop_map(Op::Release),
            1 => (0..tasks).prop_map(Op::Finish),
            1 => (0..WORKERS).prop_map(Op::Lose),
            1 => (0..WORKERS).prop_map(Op::Join),
        ]
    }

    fn task_hosts() -> impl Strategy<Value = Vec<String>> {
        proptest::sample::subsequence(HOSTS.to_vec(), 1..=2)
            .prop_map(|h| h.into_iter().map(str::to_owned).collect())
    }

    struct Model {
        up: [bool; WORKERS],
        capacity: [u64; WORKERS],
        hosts: Vec<Vec<String>>,
        state: Vec<State>,
        holders: HostHolders,
    }

    fn holder(w: usize) -> Holder {
        Holder::new("ns", format!("worker-{w}"))
    }

    impl Model {
        fn stopped(&self) -> impl Fn(&Holder) -> bool + '_ {
            |h: &Holder| {
                let w: usize = h.worker["worker-".len()..].parse().unwrap();
                !self.up[w]
            }
        }

        fn workers(&self) -> Vec<Worker> {
            (0..WORKERS)
                .map(|w| {
                    let load = self
                        .state
                        .iter()
                        .filter(|s| matches!(s, State::On(x) | State::Releasing(x) if *x == w))
                        .count() as u64;
                    let readiness = if self.up[w] {
                        Readiness::Ready
                    } else {
                        Readiness::NotReady(NotReady::HeartbeatExpired)
                    };
                    Worker::new(format!("worker-{w}"))
                        .with_capacity(self.capacity[w])
                        .with_load(load)
                        .with_readiness(readiness)
                })
                .collect()
        }

        /// Places task `t` (its own holds, if any, still counted until it moves), as the
        /// controller's plan does.
        fn place(&mut self, t: usize, from: Option<usize>) {
            let name = format!("t{t}");
            let affinity = self
                .holders
                .affinity("ns", &name, &self.hosts[t], self.stopped());
            let mut workers = self.workers();
            if let Some(w) = from {
                workers[w].load -= 1;
            }
            let chosen = place_with_hosts(&LeastLoaded, &workers, &Request::unit(), &affinity)
                .ok()
                .map(|p| p.worker.name["worker-".len()..].parse::<usize>().unwrap());
            if let Some(w) = from {
                self.holders.release(&holder(w), &name, &self.hosts[t]);
            }
            self.state[t] = match chosen {
                Some(w) => {
                    self.holders.hold(&holder(w), &name, &self.hosts[t]);
                    State::On(w)
                }
                None => State::Waiting,
            };
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Plan(t) => match self.state[t] {
                    State::Waiting => self.place(t, None),
                    State::On(w) if !self.up[w] => self.place(t, Some(w)),
                    State::On(w) => {
                        // Kept, unless a group on a worker sorting first shares a host.
                        let name = format!("t{t}");
                        if keeps_place(
                            &self.holders,
                            &holder(w),
                            &name,
                            &self.hosts[t],
                            self.stopped(),
                        )
                        .is_err()
                        {
                            self.state[t] = State::Releasing(w);
                        }
                    }
                    // The old worker confirmed the stop (or lapsed): placed again.
                    State::Releasing(w) => self.place(t, Some(w)),
                    State::Done => {}
                },
                Op::Release(t) => {
                    if let State::On(w) = self.state[t]
                        && self.up[w]
                    {
                        self.state[t] = State::Releasing(w);
                    }
                }
                Op::Finish(t) => {
                    if let State::On(w) | State::Releasing(w) = self.state[t] {
                        self.holders
                            .release(&holder(w), &format!("t{t}"), &self.hosts[t]);
                        self.state[t] = State::Done;
                    }
                }
                Op::Lose(w) => self.up[w] = false,
                Op::Join(w) => {
                    // Only a worker nothing is assigned to any more: the controller moved every
                    // task off it before (a lapsed worker's tasks are placed again at once).
                    let empty = self
                        .state
                        .iter()
                        .all(|s| !matches!(s, State::On(x) | State::Releasing(x) if *x == w));
                    if empty {
                        self.up[w] = true;
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn no_host_is_ever_crawled_on_two_live_workers(
            hosts in prop::collection::vec(task_hosts(), 2..=10),
            capacity in prop::array::uniform4(1_u64..=4),
            ops in prop::collection::vec(op(10), 1..=80),
        ) {
            let tasks = hosts.len();
            let mut model = Model {
                up: [true; WORKERS],
                capacity,
                state: vec![State::Waiting; tasks],
                hosts,
                holders: HostHolders::default(),
            };
            for op in ops.iter().filter(|op| match op {
                Op::Plan(t) | Op::Release(t) | Op::Finish(t) => *t < tasks,
                _ => true,
            }) {
                model.apply(op);
                let split = model.holders.split_hosts(model.stopped());
                prop_assert!(split.is_empty(), "after {op:?}: {split:?} split; {:?}", model.state);
                // Every waiting task's placement was refused for a reason: nothing placeable
                // waits when it could go (checked by planning it again: still waiting, or placed
                // without breaking the invariant, which the next iteration checks).
            }
            // Liveness: with every worker up and every task planned until nothing changes, a
            // task waits only when its hosts are split or its bound worker is full.
            model.up = [true; WORKERS];
            for _ in 0..3 {
                for t in 0..tasks {
                    model.apply(&Op::Plan(t));
                }
            }
            for t in 0..tasks {
                if model.state[t] == State::Waiting {
                    let affinity = model.holders.affinity("ns", &format!("t{t}"), &model.hosts[t], |_| false);
                    match &affinity {
                        Affinity::Split(..) => {}
                        Affinity::Bound(h) => {
                            let w: usize = h.holder.worker["worker-".len()..].parse().unwrap();
                            let load = model.workers()[w].load;
                            prop_assert!(load >= model.capacity[w], "t{t} waits for {affinity:?}");
                        }
                        other => {
                            let full = model.workers().iter().all(|w| w.load >= w.capacity.unwrap());
                            prop_assert!(full, "t{t} waits with {other:?}");
                        }
                    }
                }
            }
        }
    }
}
