//! Rebalance: which placed tasks to move, and where, so that load evens out after workers join.
//!
//! Placement never moves work that is well placed (stability), so a worker that joins only gets
//! new tasks. The opt-in rebalance closes that gap with moves chosen here, under three brakes:
//!
//! - **hysteresis**: a task of weight `w` moves from worker `s` to worker `d` only when
//!   `load(s) - load(d) > threshold` and `w < load(s) - load(d)`. The second condition means
//!   both new loads lie strictly between the old ones: the spread never grows, the move never
//!   merely swaps which worker is heavier, and `sum(load²)` drops by `2w(gap - w) >= 2` with
//!   every move, so repeated planning reaches a state where it plans nothing (no ping-pong);
//! - **cooldown**: a task placed or moved less than `cooldown` ago stays where it is;
//! - **budget**: at most `budget` moves per call (the caller's token bucket, [`TokenBucket`]).
//!
//! The target of a move is the one placement itself would choose for the task among the other
//! workers ([`Policy`], filters for readiness, `workerSelector` and capacity, ties by name), so a
//! move never puts a task where the scheduler would not, and the planner and the controller's
//! move path agree on the target by construction.
//!
//! Like placement, this is pure: workers and tasks in, moves out; the caller assumes them.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::placement::{Request, choose};
use super::policy::Policy;
use super::worker::{Load, Readiness, Worker};

/// The brakes of a rebalance (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    /// A worker is relieved only when it carries more than this many load units above the
    /// target. At least 1 makes sense; 0 still converges (the `w < gap` rule alone).
    pub threshold: Load,
    /// A task placed or moved less than this long ago is not moved.
    pub cooldown: Duration,
}

/// One placed task, as the planner sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task<Id> {
    /// What the caller uses to find the task again; also the final tie-breaker (so the plan
    /// does not depend on the order tasks are listed in).
    pub id: Id,
    /// The worker it runs on now (a name among the workers).
    pub worker: String,
    /// Its weight and `workerSelector`.
    pub request: Request,
    /// How long ago it was placed or last moved; `None` when unknown (never cooling).
    pub since_moved: Option<Duration>,
}

/// A move the planner chose: `task` from worker `from` to worker `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move<Id> {
    pub task: Id,
    pub from: String,
    pub to: String,
    pub weight: Load,
    /// Loads of `from` and `to` before this move (after the moves planned before it).
    pub from_load: Load,
    pub to_load: Load,
}

/// Chooses at most `budget` moves, each admissible on the loads left by the ones before it
/// (the caller applies them in order).
///
/// `workers` carry their loads, every task included (also the ones not listed in `tasks`,
/// which count but do not move). Only ready workers give or take tasks; a task whose worker is
/// not among the ready workers is ignored (placement moves it anyway).
///
/// Each step relieves the most loaded worker that has an admissible move; among its tasks, it
/// moves the one that evens out the most (largest `w * (gap - w)`, then the smallest id). A
/// balanced cluster (ready loads within `threshold` of each other) costs one pass over the
/// workers.
pub fn plan<Id: Clone + Ord>(
    policy: &dyn Policy,
    workers: &[Worker],
    tasks: &[Task<Id>],
    hysteresis: Hysteresis,
    budget: usize,
) -> Vec<Move<Id>> {
    let mut workers: Vec<Worker> = workers
        .iter()
        .filter(|w| w.readiness == Readiness::Ready)
        .cloned()
        .collect();
    let mut moves = Vec::new();
    if budget == 0 || !spread_exceeds(&workers, hysteresis.threshold) {
        return moves;
    }
    // Tasks that may move, by the position of their worker.
    let mut on: Vec<Vec<&Task<Id>>> = vec![Vec::new(); workers.len()];
    for task in tasks {
        let cooling = task.since_moved.is_some_and(|d| d < hysteresis.cooldown);
        if cooling {
            continue;
        }
        if let Some(position) = workers.iter().position(|w| w.name == task.worker) {
            on[position].push(task);
        }
    }
    while moves.len() < budget {
        let Some(step) = next_move(policy, &workers, &on, hysteresis.threshold) else {
            break;
        };
        let weight = step.task.request.weight.get();
        moves.push(Move {
            task: step.task.id.clone(),
            from: workers[step.from].name.clone(),
            to: workers[step.to].name.clone(),
            weight,
            from_load: workers[step.from].load,
            to_load: workers[step.to].load,
        });
        workers[step.from].load -= weight;
        workers[step.to].load += weight;
        // A task moves at most once per plan: it is not listed on its new worker.
        on[step.from].remove(step.position);
    }
    moves
}

/// Whether the ready loads differ by more than `threshold`: otherwise no move is admissible.
fn spread_exceeds(workers: &[Worker], threshold: Load) -> bool {
    let loads = workers.iter().map(|w| w.load);
    let (Some(max), Some(min)) = (loads.clone().max(), loads.min()) else {
        return false;
    };
    max - min > threshold
}

struct Step<'t, Id> {
    from: usize,
    /// Position of the task in `on[from]`.
    position: usize,
    task: &'t Task<Id>,
    to: usize,
}

fn next_move<'t, Id: Ord>(
    policy: &dyn Policy,
    workers: &[Worker],
    on: &[Vec<&'t Task<Id>>],
    threshold: Load,
) -> Option<Step<'t, Id>> {
    let least = workers.iter().map(|w| w.load).min()?;
    // Sources from the most loaded down (ties by name); only those above the least loaded
    // worker by more than the threshold can have an admissible move.
    let mut sources: Vec<usize> = (0..workers.len())
        .filter(|&s| workers[s].load.saturating_sub(least) > threshold && !on[s].is_empty())
        .collect();
    sources.sort_by(|&a, &b| {
        workers[b]
            .load
            .cmp(&workers[a].load)
            .then_with(|| workers[a].name.cmp(&workers[b].name))
    });
    for from in sources {
        let source = &workers[from];
        let mut best: Option<(Load, Step<'t, Id>)> = None;
        // Tasks that ask the same (weight, selector) have the same target: choose it once per
        // request, not once per task (10,000 tasks on one worker are mostly alike).
        let mut targets: HashMap<&Request, Option<usize>> = HashMap::new();
        for (position, task) in on[from].iter().enumerate() {
            let weight = task.request.weight.get();
            // No target is lighter than the least loaded worker.
            if weight >= source.load - least {
                continue;
            }
            let target = *targets.entry(&task.request).or_insert_with(|| {
                let others = workers.iter().filter(|w| w.name != source.name);
                let (_, chosen) = choose(policy, others, &task.request).ok()?;
                workers.iter().position(|w| w.name == chosen.name)
            });
            let Some(to) = target else {
                continue;
            };
            let Some(gap) = source.load.checked_sub(workers[to].load) else {
                continue;
            };
            if gap <= threshold || weight >= gap {
                continue;
            }
            let evens = weight * (gap - weight);
            let better = best.as_ref().is_none_or(|(score, step)| {
                evens > *score || (evens == *score && task.id < step.task.id)
            });
            if better {
                best = Some((
                    evens,
                    Step {
                        from,
                        position,
                        task,
                        to,
                    },
                ));
            }
        }
        if let Some((_, step)) = best {
            return Some(step);
        }
    }
    None
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up. The rebalance spends one
/// token per move it requests, so over any interval of length `t` it requests at most
/// `burst + rate * t` moves.
///
/// Written here rather than taken from `governor` (which the controller uses for Events)
/// because the planner needs to know how many tokens are available *before* it plans, and
/// `governor` only answers "may I take n now".
#[derive(Clone, Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `rate` must be positive and finite, `burst` at least 1.
    pub fn new(rate: f64, burst: u32, now: Instant) -> Self {
        assert!(
            rate.is_finite() && rate > 0.0,
            "token bucket rate must be positive"
        );
        assert!(burst >= 1, "token bucket burst must be at least 1");
        Self {
            rate,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            refilled: now,
        }
    }

    /// Whole tokens available at `now`.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        // Non-negative and at most `burst` (a u32), so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let whole = self.tokens.floor() as usize;
        whole
    }

    /// Spends `n` tokens at `now`; panics if fewer are available (ask [`Self::available`]).
    pub fn spend(&mut self, n: usize, now: Instant) {
        let available = self.available(now);
        assert!(n <= available, "spending {n} tokens, {available} available");
        #[allow(clippy::cast_precision_loss)] // n <= burst <= u32::MAX
        let n = n as f64;
        self.tokens -= n;
    }

    /// When the next whole token is available (now, if one is).
    pub fn next_token(&mut self, now: Instant) -> Instant {
        self.refill(now);
        if self.tokens >= 1.0 {
            return now;
        }
        now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate)
    }

    fn refill(&mut self, now: Instant) {
        // A clock that went backwards (it cannot: Instant is monotonic) adds nothing.
        let elapsed = now.saturating_duration_since(self.refilled);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.burst);
        self.refilled = self.refilled.max(now);
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU64;

    use super::super::policy::LeastLoaded;
    use super::super::selector::WorkerSelector;
    use super::*;

    const NO_COOLDOWN: Hysteresis = Hysteresis {
        threshold: 2,
        cooldown: Duration::ZERO,
    };

    fn task(id: u32, worker: &str, weight: u64) -> Task<u32> {
        Task {
            id,
            worker: worker.to_owned(),
            request: Request::new(NonZeroU64::new(weight).unwrap()),
            since_moved: None,
        }
    }

    fn one_worker_holding(n: u32) -> (Vec<Worker>, Vec<Task<u32>>) {
        let tasks: Vec<Task<u32>> = (0..n).map(|id| task(id, "worker-1", 1)).collect();
        let workers = vec![
            Worker::new("worker-1").with_load(u64::from(n)),
            Worker::new("worker-2"),
            Worker::new("worker-3"),
        ];
        (workers, tasks)
    }

    #[test]
    fn workers_that_join_get_tasks_until_loads_are_within_the_threshold() {
        let (workers, tasks) = one_worker_holding(9);
        let moves = plan(&LeastLoaded, &workers, &tasks, NO_COOLDOWN, 100);
        let targets: Vec<&str> = moves.iter().map(|m| m.to.as_str()).collect();
        // 9/0/0 -> 4/3/2 in five moves, alternating (least loaded first, ties by name); a gap
        // of 2 is not more than the threshold, so the sixth move (to 3/3/3) is not made.
        assert_eq!(
            targets,
            ["worker-2", "worker-3", "worker-2", "worker-3", "worker-2"]
        );
        assert!(moves.iter().all(|m| m.from == "worker-1"));
        assert_eq!((moves[0].from_load, moves[0].to_load), (9, 0));
        // Task ids break ties: the smallest first.
        assert_eq!(
            moves.iter().map(|m| m.task).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
    }

    #[test]
    fn the_budget_caps_a_plan_and_the_rest_comes_next_time() {
        let (workers, tasks) = one_worker_holding(9);
        let moves = plan(&LeastLoaded, &workers, &tasks, NO_COOLDOWN, 2);
        assert_eq!(moves.len(), 2);
        assert!(plan(&LeastLoaded, &workers, &tasks, NO_COOLDOWN, 0).is_empty());
    }

    #[test]
    fn within_the_threshold_nothing_moves() {
        // 5/3: a gap of 2 is not more than the threshold 2.
        let workers = [
            Worker::new("worker-1").with_load(5),
            Worker::new("worker-2").with_load(3),
        ];
        let tasks: Vec<Task<u32>> = (0..5).map(|id| task(id, "worker-1", 1)).collect();
        assert!(plan(&LeastLoaded, &workers, &tasks, NO_COOLDOWN, 10).is_empty());
    }

    #[test]
    fn a_move_that_would_only_swap_the_imbalance_is_not_made() {
        // 6/0 with one task of weight 6: moving it gives 0/6. Weight 4 gives 2/4: the gap of
        // 6 shrinks to 2, admissible; weight 5 would leave 1/5 (gap 4, still better than 6)
        // and is admissible too, but the planner prefers the move that evens out most.
        let workers = [
            Worker::new("worker-1").with_load(6),
            Worker::new("worker-2"),
        ];
        let heavy = [task(1, "worker-1", 6)];
        assert!(plan(&LeastLoaded, &workers, &heavy, NO_COOLDOWN, 10).is_empty());
        let two = [task(1, "worker-1", 5), task(2, "worker-1", 1)];
        let moves = plan(&LeastLoaded, &workers, &two, NO_COOLDOWN, 10);
        assert_eq!(moves.len(), 1, "{moves:?}");
        // 1 * (6 - 1) = 5 == 5 * (6 - 5): a tie, the smaller id.
        assert_eq!(moves[0].task, 1);
    }

    #[test]
    fn cooling_tasks_stay() {
        let (workers, mut tasks) = one_worker_holding(9);
        let hysteresis = Hysteresis {
            threshold: 2,
            cooldown: Duration::from_secs(60),
        };
        for (i, t) in tasks.iter_mut().enumerate() {
            t.since_moved = Some(Duration::from_secs(if i < 7 { 10 } else { 60 }));
        }
        let moves = plan(&LeastLoaded, &workers, &tasks, hysteresis, 100);
        assert_eq!(
            moves.iter().map(|m| m.task).collect::<Vec<_>>(),
            [7, 8],
            "only the two placed a cooldown ago or longer"
        );
    }

    #[test]
    fn selectors_capacity_and_readiness_bound_the_targets() {
        let gpu =
            Request::unit().with_selector(WorkerSelector::default().with_label("gpu", "true"));
        let workers = [
            Worker::new("worker-1")
                .with_label("gpu", "true")
                .with_load(8),
            // Empty, but no gpu label: only the unlabelled tasks may go.
            Worker::new("worker-2"),
            // gpu, but full.
            Worker::new("worker-3")
                .with_label("gpu", "true")
                .with_capacity(1)
                .with_load(1),
            // gpu, empty, not ready.
            Worker::new("worker-4")
                .with_label("gpu", "true")
                .with_readiness(Readiness::NotReady(crate::NotReady::PodNotReady)),
        ];
        let tasks: Vec<Task<u32>> = (0..8)
            .map(|id| Task {
                request: if id < 6 { gpu.clone() } else { Request::unit() },
                ..task(id, "worker-1", 1)
            })
            .collect();
        let moves = plan(&LeastLoaded, &workers, &tasks, NO_COOLDOWN, 100);
        assert_eq!(
            moves
                .iter()
                .map(|m| (m.task, m.to.as_str()))
                .collect::<Vec<_>>(),
            [(6, "worker-2"), (7, "worker-2")]
        );
    }

    #[test]
    fn the_token_bucket_refills_at_its_rate_up_to_its_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(2.0, 3, start);
        assert_eq!(bucket.available(start), 3);
        bucket.spend(3, start);
        assert_eq!(bucket.available(start), 0);
        assert_eq!(bucket.next_token(start), start + Duration::from_millis(500));
        assert_eq!(bucket.available(start + Duration::from_millis(499)), 0);
        assert_eq!(bucket.available(start + Duration::from_millis(500)), 1);
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 3);
    }
}
