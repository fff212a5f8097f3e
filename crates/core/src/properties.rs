//! Property tests for the invariants the design promises (DESIGN §4): every placeable resource is
//! placed, never on an ineligible worker, on a best worker by the policy; load spreads within one
//! weight; answers do not depend on input order.

use std::collections::BTreeMap;
use std::num::NonZeroU64;

use proptest::prelude::*;
use proptest::sample::select;

use super::*;

const KEYS: [&str; 3] = ["gpu", "zone", "tier"];
const VALUES: [&str; 2] = ["a", "b"];

fn name() -> impl Strategy<Value = String> {
    select(KEYS.to_vec()).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    select(VALUES.to_vec()).prop_map(str::to_owned)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(name(), value(), 0..=3)
}

fn readiness() -> impl Strategy<Value = Readiness> {
    prop_oneof![
        3 => Just(Readiness::Ready),
        1 => select(NotReady::ALL.to_vec()).prop_map(Readiness::NotReady),
    ]
}

fn operator() -> impl Strategy<Value = Operator> {
    let values = || prop::collection::btree_set(value(), 1..=2);
    prop_oneof![
        values().prop_map(Operator::In),
        values().prop_map(Operator::NotIn),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist),
    ]
}

fn selector() -> impl Strategy<Value = WorkerSelector> {
    let requirement =
        (name(), operator()).prop_map(|(key, operator)| Requirement { key, operator });
    let match_labels = prop::collection::btree_map(name(), value(), 0..=1);
    let match_expressions = prop::collection::vec(requirement, 0..=2);
    prop_oneof![
        2 => Just(WorkerSelector::everything()),
        1 => (match_labels, match_expressions).prop_map(|(match_labels, match_expressions)| {
            WorkerSelector { match_labels, match_expressions }
        }),
    ]
}

fn request(max_weight: u64) -> impl Strategy<Value = Request> {
    (1..=max_weight, selector()).prop_map(|(weight, selector)| {
        Request::new(NonZeroU64::new(weight).unwrap()).with_selector(selector)
    })
}

/// Up to eight workers with unique names that are not in sorted order, so that tie-breaking by
/// name is exercised against listing order.
fn workers() -> impl Strategy<Value = Vec<Worker>> {
    let worker = (
        labels(),
        readiness(),
        prop::option::weighted(0.7, 0..12_u64),
        0..10_u64,
    );
    prop::collection::vec(worker, 0..=8)
        .prop_map(|workers| {
            workers
                .into_iter()
                .enumerate()
                .map(|(index, (labels, readiness, capacity, load))| Worker {
                    name: format!("worker-{}", (index * 5) % 8),
                    labels,
                    readiness,
                    capacity,
                    load,
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle()
}

fn policy() -> impl Strategy<Value = PolicyKind> {
    select(PolicyKind::ALL.to_vec())
}

fn loads(workers: &[Worker]) -> BTreeMap<&str, Load> {
    workers
        .iter()
        .map(|worker| (worker.name.as_str(), worker.load))
        .collect()
}

fn spread(workers: &[Worker]) -> Load {
    let loads = workers.iter().map(|worker| worker.load);
    loads.clone().max().unwrap_or(0) - loads.min().unwrap_or(0)
}

/// `count` ready, unlabelled, empty workers of the same capacity (or all unbounded).
fn identical_workers(count: usize, capacity: Option<Load>, loads: &[Load]) -> Vec<Worker> {
    (0..count)
        .map(|index| Worker {
            capacity,
            load: loads.get(index).copied().unwrap_or(0),
            ..Worker::new(format!("worker-{index}"))
        })
        .collect()
}

proptest! {
    /// One decision is sound, complete and optimal: it succeeds exactly when some worker passes
    /// the filters; the chosen worker passes them and no feasible worker is strictly better by
    /// the policy or equal with a smaller name; on failure, every worker is counted once, under
    /// the reason the filters gave for it.
    #[test]
    fn a_decision_is_sound_complete_and_optimal(
        workers in workers(),
        request in request(6),
        kind in policy(),
    ) {
        let policy = kind.build();
        let feasible: Vec<&Worker> =
            workers.iter().filter(|worker| filter(worker, &request).is_ok()).collect();
        match place(policy.as_ref(), &workers, &request) {
            Ok(placement) => {
                prop_assert!(filter(placement.worker, &request).is_ok());
                prop_assert_eq!(placement.policy, policy.name());
                for other in &feasible {
                    let chosen = placement.worker;
                    let order = policy
                        .compare(&request, chosen, other)
                        .then_with(|| chosen.name.cmp(&other.name));
                    prop_assert!(order.is_le(), "{} chosen over better {}", chosen.name, other.name);
                }
            }
            Err(diagnosis) => {
                prop_assert!(feasible.is_empty(), "placeable on {feasible:?} but got {diagnosis}");
                prop_assert_eq!(diagnosis.workers(), workers.len());
                for unfit in Unfit::ALL {
                    let expected =
                        workers.iter().filter(|worker| filter(worker, &request) == Err(unfit)).count();
                    prop_assert_eq!(diagnosis.count(unfit), expected, "{:?}", unfit);
                }
                let reason = if workers.is_empty() { "NoWorkers" } else { "NoEligibleWorker" };
                prop_assert_eq!(diagnosis.reason(), reason);
            }
        }
    }

    /// A batch assumes each decision: replaying it against a separate load table, every placement
    /// passed the filters at its moment (ready, selector, capacity with everything before it),
    /// every failure had no feasible worker at its moment, and the final loads are the initial
    /// loads plus the weights placed.
    #[test]
    fn a_batch_places_every_placeable_resource_on_an_eligible_worker(
        workers in workers(),
        requests in prop::collection::vec(request(6), 0..24),
        kind in policy(),
    ) {
        let mut schedule = Schedule::new(kind.build(), workers.clone());
        let outcomes = schedule.place_all(&requests);
        prop_assert_eq!(outcomes.len(), requests.len());
        let mut model = workers;
        for (request, outcome) in requests.iter().zip(&outcomes) {
            match outcome {
                Ok(name) => {
                    let worker = model.iter_mut().find(|worker| &worker.name == name).unwrap();
                    prop_assert_eq!(filter(worker, request), Ok(()));
                    worker.load += request.weight.get();
                }
                Err(_) => prop_assert!(model.iter().all(|worker| filter(worker, request).is_err())),
            }
        }
        prop_assert_eq!(loads(schedule.workers()), loads(&model));
    }

    /// Same input, same output; and the output does not depend on the order workers are listed.
    #[test]
    fn decisions_are_deterministic_and_independent_of_worker_order(
        (workers, shuffled) in workers()
            .prop_flat_map(|workers| (Just(workers.clone()), Just(workers).prop_shuffle())),
        requests in prop::collection::vec(request(6), 0..16),
        kind in policy(),
    ) {
        let first = Schedule::new(kind.build(), workers.clone()).place_all(&requests);
        let again = Schedule::new(kind.build(), workers).place_all(&requests);
        let reordered = Schedule::new(kind.build(), shuffled).place_all(&requests);
        prop_assert_eq!(&first, &again);
        prop_assert_eq!(&first, &reordered);
    }

    /// Least-loaded spread. With equal capacities (or all unbounded), every worker ready and no
    /// selectors, least-loaded always picks a worker of minimum load, so placing weight w moves
    /// that worker from min to min + w: the new max is at most max(old max, min + w) and the new
    /// min is at least the old min. By induction, spread (max - min load) after the batch is at
    /// most max(initial spread, heaviest weight placed); a rejected resource changes nothing,
    /// because if the least-loaded worker lacks room, so does every other. From fresh workers
    /// the spread is at most the heaviest weight placed, and with unit weights at most 1.
    #[test]
    fn least_loaded_keeps_loads_within_one_weight(
        count in 1..=6_usize,
        capacity in prop::option::of(1..=40_u64),
        initial in prop::collection::vec(0..10_u64, 0..=6),
        weights in prop::collection::vec(1..=5_u64, 0..40),
    ) {
        for initial in [&[][..], &initial[..]] {
            let workers = identical_workers(count, capacity, initial);
            let initial_spread = spread(&workers);
            let mut schedule = Schedule::new(PolicyKind::LeastLoaded.build(), workers);
            let mut heaviest_placed = 0;
            for &weight in &weights {
                let request = Request::new(NonZeroU64::new(weight).unwrap());
                let least = schedule.workers().iter().map(|worker| worker.load).min().unwrap();
                if let Ok(worker) = schedule.place(&request) {
                    prop_assert_eq!(worker.load - weight, least, "placed on a least-loaded worker");
                    heaviest_placed = heaviest_placed.max(weight);
                }
                prop_assert!(spread(schedule.workers()) <= initial_spread.max(heaviest_placed));
            }
        }
    }

    #[test]
    fn least_loaded_with_unit_weights_differs_by_at_most_one(
        count in 1..=6_usize,
        capacity in prop::option::of(1..=20_u64),
        resources in 0..60_usize,
    ) {
        let workers = identical_workers(count, capacity, &[]);
        let mut schedule = Schedule::new(PolicyKind::LeastLoaded.build(), workers);
        schedule.place_all(&vec![Request::unit(); resources]);
        prop_assert!(spread(schedule.workers()) <= 1);
        let placed: Load = schedule.workers().iter().map(|worker| worker.load).sum();
        let room = capacity.map_or(Load::MAX, |capacity| capacity * count as Load);
        prop_assert_eq!(placed, room.min(resources as Load), "everything that fits is placed");
    }

    /// Bin-pack fills one worker before the next: with equal capacities and unit weights, at most
    /// one worker is ever partly full, because a partly full worker is fuller than an empty one
    /// and still has room, so it is always preferred.
    #[test]
    fn bin_pack_keeps_at_most_one_worker_partly_full(
        count in 1..=6_usize,
        capacity in 1..=8_u64,
        resources in 0..60_usize,
    ) {
        let workers = identical_workers(count, Some(capacity), &[]);
        let mut schedule = Schedule::new(PolicyKind::BinPack.build(), workers);
        for _ in 0..resources {
            let _ = schedule.place(&Request::unit());
            let partly_full =
                schedule.workers().iter().filter(|worker| (1..capacity).contains(&worker.load)).count();
            prop_assert!(partly_full <= 1);
        }
        let used = schedule.workers().iter().filter(|worker| worker.load > 0).count();
        let placed = (resources as u64).min(capacity * count as u64);
        prop_assert_eq!(used as u64, placed.div_ceil(capacity), "as few workers as the load needs");
    }

    /// The baseline never fails while there are workers, and keeps payload counts within one of
    /// each other (it is round-robin by count), whatever the weights.
    #[test]
    fn original_algorithm_balances_counts_only(
        count in 1..=6_usize,
        requests in prop::collection::vec(request(6), 0..30),
    ) {
        let workers = identical_workers(count, None, &[]);
        let outcomes = original_algorithm(&workers, &requests);
        let mut counts: BTreeMap<&str, usize> =
            workers.iter().map(|worker| (worker.name.as_str(), 0)).collect();
        for outcome in &outcomes {
            *counts.get_mut(outcome.as_deref().unwrap()).unwrap() += 1;
        }
        let max = counts.values().max().unwrap();
        let min = counts.values().min().unwrap();
        prop_assert!(max - min <= 1);
    }
}

// === Rebalance ===

/// Workers (as [`workers`]) with tasks placed on them: each worker's load is its tasks' weights
/// plus some load that does not move (tasks the caller did not list), as in the controller.
fn cluster() -> impl Strategy<Value = (Vec<Worker>, Vec<Task<u32>>)> {
    let task = (
        0..8_usize,
        request(4),
        prop::option::weighted(0.3, 0..120_u64),
    );
    (
        workers(),
        prop::collection::vec(task, 0..40),
        prop::collection::vec(0..4_u64, 8),
    )
        .prop_map(|(mut workers, tasks, fixed)| {
            if workers.is_empty() {
                return (workers, Vec::new());
            }
            let count = workers.len();
            for (worker, fixed) in workers.iter_mut().zip(fixed) {
                worker.load = fixed;
            }
            let tasks = tasks
                .into_iter()
                .enumerate()
                .map(|(id, (on, request, since))| {
                    let worker = &mut workers[on % count];
                    worker.load += request.weight.get();
                    Task {
                        id: u32::try_from(id).unwrap(),
                        worker: worker.name.clone(),
                        request,
                        since_moved: since.map(std::time::Duration::from_secs),
                    }
                })
                .collect();
            (workers, tasks)
        })
}

fn hysteresis() -> impl Strategy<Value = Hysteresis> {
    (0..=3_u64, prop::option::of(0..60_u64)).prop_map(|(threshold, cooldown)| Hysteresis {
        threshold,
        cooldown: std::time::Duration::from_secs(cooldown.unwrap_or(0)),
    })
}

fn ready_spread(workers: &[Worker]) -> Load {
    let ready: Vec<Worker> = workers
        .iter()
        .filter(|w| w.readiness == Readiness::Ready)
        .cloned()
        .collect();
    spread(&ready)
}

/// Σ load² over ready workers: every admissible move lowers it by at least 2.
fn potential(workers: &[Worker]) -> u128 {
    workers
        .iter()
        .filter(|w| w.readiness == Readiness::Ready)
        .map(|w| u128::from(w.load) * u128::from(w.load))
        .sum()
}

/// Applies `moves` to a model of the cluster, checking each against the rules the planner
/// promises: the budget; a task moves at most once, from where it is, if not cooling; the target
/// is another ready worker that passes the filters (selector, capacity) at that moment; the
/// hysteresis (gap above the threshold, weight below the gap); spread never grows.
fn apply_checked(
    workers: &mut [Worker],
    tasks: &mut [Task<u32>],
    moves: &[Move<u32>],
    hysteresis: Hysteresis,
    budget: usize,
) -> Result<(), TestCaseError> {
    prop_assert!(
        moves.len() <= budget,
        "{} moves over budget {budget}",
        moves.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for m in moves {
        prop_assert!(
            seen.insert(m.task),
            "task {} moved twice in one plan",
            m.task
        );
        let task = tasks.iter_mut().find(|t| t.id == m.task).unwrap();
        prop_assert_eq!(&task.worker, &m.from);
        prop_assert!(
            task.since_moved.is_none_or(|d| d >= hysteresis.cooldown),
            "cooling task moved"
        );
        prop_assert_ne!(&m.from, &m.to);
        let weight = task.request.weight.get();
        prop_assert_eq!(m.weight, weight);
        let from = workers.iter().position(|w| w.name == m.from).unwrap();
        let to = workers.iter().position(|w| w.name == m.to).unwrap();
        prop_assert_eq!(workers[from].readiness, Readiness::Ready);
        prop_assert_eq!(
            filter(&workers[to], &task.request),
            Ok(()),
            "target {} ineligible",
            m.to
        );
        prop_assert_eq!(
            (workers[from].load, workers[to].load),
            (m.from_load, m.to_load)
        );
        let gap = m.from_load - m.to_load;
        prop_assert!(
            gap > hysteresis.threshold && weight < gap,
            "gap {gap}, weight {weight}"
        );
        let (spread_before, potential_before) = (ready_spread(workers), potential(workers));
        workers[from].load -= weight;
        workers[to].load += weight;
        prop_assert!(ready_spread(workers) <= spread_before, "spread grew");
        prop_assert!(potential(workers) + 2 <= potential_before);
        task.worker.clone_from(&m.to);
        task.since_moved = Some(std::time::Duration::ZERO);
    }
    Ok(())
}

proptest! {
    /// Every plan keeps the promises move by move (see `apply_checked`), whatever the workers,
    /// selectors, capacities, cooldowns and budget.
    #[test]
    fn a_rebalance_plan_is_admissible_move_by_move(
        (mut workers, mut tasks) in cluster(),
        hysteresis in hysteresis(),
        budget in 0..12_usize,
        kind in policy(),
    ) {
        let moves = plan_rebalance(kind.build().as_ref(), &workers, &tasks, hysteresis, budget);
        apply_checked(&mut workers, &mut tasks, &moves, hysteresis, budget)?;
    }

    /// Planning again and again (each plan applied, moved tasks cooling for one round) reaches
    /// a round that plans nothing, within the bound the potential gives: Σ load² drops by at
    /// least 2 per move, so there are at most Σ load² / 2 moves in all.
    #[test]
    fn repeated_rebalancing_converges(
        (mut workers, mut tasks) in cluster(),
        threshold in 0..=3_u64,
        budget in 1..5_usize,
    ) {
        let hysteresis = Hysteresis { threshold, cooldown: std::time::Duration::from_secs(1) };
        let bound = potential(&workers) / 2 + 1;
        let mut rounds = 0;
        loop {
            let moves = plan_rebalance(&LeastLoaded, &workers, &tasks, hysteresis, budget);
            if moves.is_empty() {
                // No round plans nothing while some task is still cooling from the last one.
                for task in &mut tasks {
                    task.since_moved = None;
                }
                if plan_rebalance(&LeastLoaded, &workers, &tasks, hysteresis, budget).is_empty() {
                    break;
                }
                continue;
            }
            for task in &mut tasks {
                task.since_moved = None;
            }
            apply_checked(&mut workers, &mut tasks, &moves, hysteresis, budget)?;
            rounds += 1;
            prop_assert!(rounds <= bound, "{rounds} rounds, bound {bound}");
        }
    }

    /// Where nothing constrains the moves (identical unbounded workers, unit tasks, no
    /// selectors), rebalancing ends with every pair of workers within the threshold, from any
    /// start: the workers that joined empty get their share.
    #[test]
    fn unit_tasks_on_identical_workers_end_within_the_threshold(
        count in 1..=6_usize,
        on in prop::collection::vec(0..6_usize, 0..60),
        threshold in 1..=3_u64,
        budget in 1..8_usize,
    ) {
        let mut workers = identical_workers(count, None, &[]);
        let mut tasks: Vec<Task<u32>> = on
            .iter()
            .enumerate()
            .map(|(id, on)| {
                let worker = &mut workers[on % count];
                worker.load += 1;
                Task {
                    id: u32::try_from(id).unwrap(),
                    worker: worker.name.clone(),
                    request: Request::unit(),
                    since_moved: None,
                }
            })
            .collect();
        let hysteresis = Hysteresis { threshold, cooldown: std::time::Duration::ZERO };
        loop {
            let moves = plan_rebalance(&LeastLoaded, &workers, &tasks, hysteresis, budget);
            if moves.is_empty() {
                break;
            }
            apply_checked(&mut workers, &mut tasks, &moves, hysteresis, budget)?;
        }
        prop_assert!(spread(&workers) <= threshold, "{workers:?}");
    }

    /// A cluster whose ready loads are within the threshold plans nothing.
    #[test]
    fn a_balanced_cluster_plans_nothing(
        (workers, tasks) in cluster(),
        hysteresis in hysteresis(),
        kind in policy(),
    ) {
        let moves = plan_rebalance(kind.build().as_ref(), &workers, &tasks, hysteresis, 100);
        if ready_spread(&workers) <= hysteresis.threshold {
            prop_assert!(moves.is_empty(), "{moves:?}");
        }
        // Nor does one whose tasks are all cooling.
        let cooling = Hysteresis { cooldown: std::time::Duration::MAX, ..hysteresis };
        let tasks: Vec<Task<u32>> = tasks
            .into_iter()
            .map(|t| Task { since_moved: Some(std::time::Duration::ZERO), ..t })
            .collect();
        prop_assert!(plan_rebalance(kind.build().as_ref(), &workers, &tasks, cooling, 100).is_empty());
    }

    /// The plan does not depend on the order workers and tasks are listed in.
    #[test]
    fn a_rebalance_plan_is_independent_of_listing_order(
        ((workers, tasks), shuffled_workers, shuffled_tasks) in cluster().prop_flat_map(|(w, t)| {
            (Just((w.clone(), t.clone())), Just(w).prop_shuffle(), Just(t).prop_shuffle())
        }),
        hysteresis in hysteresis(),
        budget in 0..12_usize,
    ) {
        let first = plan_rebalance(&LeastLoaded, &workers, &tasks, hysteresis, budget);
        let reordered =
            plan_rebalance(&LeastLoaded, &shuffled_workers, &shuffled_tasks, hysteresis, budget);
        prop_assert_eq!(first, reordered);
    }

    /// Over any interval of length t the bucket hands out at most burst + rate * t tokens,
    /// however often and greedily it is asked.
    #[test]
    fn the_token_bucket_never_exceeds_its_budget(
        rate_milli in 100..5_000_u32,
        burst in 1..5_u32,
        asks in prop::collection::vec((0..2_000_u64, 0..6_usize), 1..60),
    ) {
        let rate = f64::from(rate_milli) / 1000.0;
        let start = std::time::Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, start);
        let mut at = start;
        let mut spent: Vec<(std::time::Instant, usize)> = Vec::new();
        for (advance, want) in asks {
            at += std::time::Duration::from_millis(advance);
            let n = want.min(bucket.available(at));
            bucket.spend(n, at);
            spent.push((at, n));
        }
        for (i, (from, _)) in spent.iter().enumerate() {
            for (j, (to, _)) in spent.iter().enumerate().skip(i) {
                let total: usize = spent[i..=j].iter().map(|(_, n)| n).sum();
                let allowed = f64::from(burst) + rate * to.duration_since(*from).as_secs_f64();
                #[allow(clippy::cast_precision_loss)]
                let total = total as f64;
                prop_assert!(total <= allowed + 1e-9, "{total} tokens in [{i}, {j}], allowed {allowed}");
            }
        }
    }
}
