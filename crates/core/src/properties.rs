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
