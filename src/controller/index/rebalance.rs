//! The opt-in rebalance, as the index sees it: which placed resources may move (the planner's
//! input, built from the index under its lock), and each chosen move requested through the one
//! entry point for moves, [`Index::move_off`]'s handoff: the resource is released on its worker
//! (phase `Releasing` while that worker's heartbeat is alive) and placed again, least loaded,
//! once that worker confirmed the stop or its heartbeat lapsed, with the reason `Rebalanced`.
//! The planner itself is pure ([`crawler_core::plan_rebalance`]); the controller's rebalance
//! loop owns the budget and queues the keys.

use std::time::Duration;

use crawler_core::{Hysteresis, Move, Readiness, Task};

use crate::crd::Phase;

use super::{Index, Key, Namespace, PlanContext, Reason, ResourceEntry, rules::RulesCheck};

impl Index {
    /// Plans at most `budget` moves over every namespace (workers in one namespace serve only
    /// its resources) and requests each through the handoff; returns the keys to reconcile, one
    /// per move requested.
    ///
    /// A namespace with a move or decision still under way (a resource `Releasing`, a move
    /// requested and not yet made, a decision the watch has not shown yet) is left alone this
    /// time: its loads are about to change, and planning on them again could move more than
    /// needed. So moves come in waves, each planned on settled loads, each no larger than the
    /// budget allows. Only resources that are assigned, kept where they are and not moving may
    /// move; the rest count in the loads and stay.
    pub fn rebalance(
        &mut self,
        ctx: &PlanContext<'_>,
        hysteresis: Hysteresis,
        budget: usize,
    ) -> Vec<Key> {
        let mut namespaces: Vec<String> = self.namespaces.keys().cloned().collect();
        namespaces.sort();
        let mut keys = Vec::new();
        for ns_name in namespaces {
            let left = budget - keys.len();
            if left == 0 {
                break;
            }
            let ns = &self.namespaces[&ns_name];
            // Most rounds: loads within the threshold, nothing to plan (one pass over the
            // workers, none over the resources).
            if !ns.uneven(hysteresis.threshold) || ns.resources.values().any(moving) {
                continue;
            }
            let workers: Vec<_> = ns.workers.values().map(|w| w.worker.clone()).collect();
            let tasks = ns.movable(ctx, self.host_affinity == super::HostAffinity::On);
            let moves =
                crawler_core::plan_rebalance(ctx.policy, &workers, &tasks, hysteresis, left);
            for m in moves {
                let key = Key::new(ns_name.clone(), m.task.clone());
                let asked =
                    self.request_move(&key, &m.from, &why(&m, hysteresis), Reason::Rebalanced);
                if asked.is_empty() {
                    // The planner and the move path read the same index under the same lock, so
                    // this does not happen; if it did, the move is only left out.
                    tracing::warn!(resource = %key, "a planned rebalance move was not requested");
                }
                keys.extend(asked);
            }
        }
        keys
    }
}

/// Whether a resource is being moved or decided: its namespace's loads are about to change.
fn moving(entry: &ResourceEntry) -> bool {
    entry.assumed.is_some()
        || entry.status.phase == Some(Phase::Releasing)
        || (entry.move_requested.as_ref()).is_some_and(|m| m.applies_to(&entry.status))
}

/// What the `Releasing` condition and Event say about a rebalance move.
fn why(planned: &Move<String>, hysteresis: Hysteresis) -> String {
    format!(
        "to even out load: {} carries {}, {} carries {}, more than {} apart (rebalance)",
        planned.from, planned.from_load, planned.to, planned.to_load, hysteresis.threshold
    )
}

impl Namespace {
    /// Whether the ready workers' loads differ by more than `threshold`: otherwise no move is
    /// admissible.
    fn uneven(&self, threshold: crawler_core::Load) -> bool {
        let ready = self
            .workers
            .values()
            .filter(|w| w.worker.readiness == Readiness::Ready)
            .map(|w| w.worker.load);
        match (ready.clone().max(), ready.min()) {
            (Some(max), Some(min)) => max - min > threshold,
            _ => false,
        }
    }

    /// The resources the rebalance may move: assigned to a ready worker that may keep them, with
    /// nothing pending.
    /// With host affinity, a task that shares a host with another stays: placement would bind
    /// it back to its group's worker (a restart for nothing); a group moves only as a whole,
    /// when its worker goes away.
    fn movable(&self, ctx: &PlanContext<'_>, host_affinity: bool) -> Vec<Task<String>> {
        self.resources
            .iter()
            .filter(|(name, entry)| !(host_affinity && self.shares_a_host(name, entry)))
            .filter_map(|(name, entry)| {
                let worker = self.keeps(entry)?;
                let request = entry.request.as_ref().ok()?.clone();
                let since_moved =
                    entry.status.assigned_at.as_ref().map(|at| {
                        Duration::try_from(ctx.now.duration_since(at.0)).unwrap_or_default()
                    });
                Some(Task {
                    id: name.clone(),
                    worker: worker.to_owned(),
                    request,
                    since_moved,
                })
            })
            .collect()
    }

    /// Whether another task of this namespace crawls one of `entry`'s hosts.
    fn shares_a_host(&self, name: &str, entry: &ResourceEntry) -> bool {
        entry.hosts.iter().any(|host| {
            self.hosts
                .holders(host)
                .any(|(_, tasks)| tasks.iter().any(|t| t != name))
        })
    }

    /// The worker `entry` is assigned to, if the rebalance may move it from there: placed (phase
    /// `Assigned`), not suspended, rules fine, not moving, and its worker ready and matching its
    /// selector (otherwise placement moves it anyway).
    fn keeps<'e>(&self, entry: &'e ResourceEntry) -> Option<&'e str> {
        if entry.suspend
            || moving(entry)
            || entry.resource_version.is_none()
            || matches!(entry.rules, RulesCheck::Invalid(_))
            || entry.status.phase != Some(Phase::Assigned)
        {
            return None;
        }
        let request = entry.request.as_ref().ok()?;
        let name = entry.status.assigned_worker.as_deref()?;
        let worker = &self.workers.get(name)?.worker;
        (worker.readiness == Readiness::Ready && request.selector.matches(&worker.labels))
            .then_some(name)
    }
}
