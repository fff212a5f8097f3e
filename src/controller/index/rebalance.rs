//! The opt-in rebalance, as the index sees it: which placed resources may move (the planner's
//! input, built from the index under its lock), and each chosen move made as a decision like any
//! other: desired status, an `Assigned` condition and Event that say why, and an assumption
//! counted in the loads before the next decision. The planner itself is pure
//! ([`crawler_core::plan_rebalance`]); the controller's rebalance loop owns the budget and the
//! writes.

use std::time::Duration;

use crawler_core::{Hysteresis, Move, Readiness, Task, filter};

use crate::crd::{CrawlerResourceStatus, Phase};

use super::{
    Index, Key, Namespace, Plan, PlanContext, PlanEvent, Reason, ResourceEntry, Write,
    rules::{RulesCheck, set_rules_condition},
    status::{assign_to, controller_fields, set_assigned_condition},
};

impl Index {
    /// Plans at most `budget` moves over every namespace (workers in one namespace serve only
    /// its resources) and makes each: returns one write per move, each already assumed, so the
    /// loads the next decision sees include them.
    ///
    /// A namespace with a decision in flight (an assumption not yet settled by the watch) is
    /// left alone this time: planning on loads that are about to change could move more than
    /// needed. Only resources that are assigned, kept where they are, and not waiting for a
    /// write may move; the rest count in the loads and stay.
    pub fn rebalance(
        &mut self,
        ctx: &PlanContext<'_>,
        hysteresis: Hysteresis,
        budget: usize,
    ) -> Vec<Write> {
        let mut namespaces: Vec<&String> = self.namespaces.keys().collect();
        namespaces.sort();
        let namespaces: Vec<String> = namespaces.into_iter().cloned().collect();
        let mut writes = Vec::new();
        for ns_name in namespaces {
            let left = budget - writes.len();
            if left == 0 {
                break;
            }
            let ns = self.namespaces.get_mut(&ns_name).expect("listed above");
            if ns.resources.values().any(|r| r.assumed.is_some()) {
                continue;
            }
            let workers: Vec<_> = ns.workers.values().map(|w| w.worker.clone()).collect();
            let tasks = ns.movable(ctx);
            let moves =
                crawler_core::plan_rebalance(ctx.policy, &workers, &tasks, hysteresis, left);
            for m in moves {
                let key = Key::new(ns_name.clone(), m.task.clone());
                match ns.plan_move(&key, &m, hysteresis, ctx) {
                    Plan::Write(write) => writes.push(*write),
                    other => {
                        // The planner and the move path read the same index under the same
                        // lock, so this does not happen; if it did, the move is only dropped.
                        tracing::warn!(resource = %key, ?other, "a planned rebalance move was not made");
                    }
                }
            }
        }
        writes
    }
}

impl Namespace {
    /// The resources the rebalance may move: assigned to a ready worker that may keep them, with
    /// nothing pending (no decision in flight, no other change of status to write first).
    fn movable(&self, ctx: &PlanContext<'_>) -> Vec<Task<String>> {
        self.resources
            .iter()
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

    /// The worker `entry` is assigned to, if it is one the rebalance may move it from: placed
    /// (phase `Assigned`), not suspended, rules fine, no decision in flight, and its worker ready
    /// and matching its selector (otherwise placement moves it anyway).
    fn keeps<'e>(&self, entry: &'e ResourceEntry) -> Option<&'e str> {
        if entry.suspend
            || entry.assumed.is_some()
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

    /// Makes one planned move: the resource's status names the new worker (one more
    /// assignment), its `Assigned` condition and a `Rebalanced` Event say why, and the decision
    /// is assumed. `Plan::Nothing` if the move no longer holds (the resource changed, the
    /// target may not take it).
    fn plan_move(
        &mut self,
        key: &Key,
        planned: &Move<String>,
        hysteresis: Hysteresis,
        ctx: &PlanContext<'_>,
    ) -> Plan {
        let Some(entry) = self.resources.get(&key.name) else {
            return Plan::Nothing;
        };
        let (Some(resource_version), Ok(request)) = (&entry.resource_version, &entry.request)
        else {
            return Plan::Nothing;
        };
        if self.keeps(entry) != Some(planned.from.as_str()) {
            return Plan::Nothing;
        }
        let Some(target) = self.workers.get(&planned.to) else {
            return Plan::Nothing;
        };
        if filter(&target.worker, request).is_err() {
            return Plan::Nothing;
        }
        let current: &CrawlerResourceStatus = &entry.status;
        let mut desired = controller_fields(current);
        desired.observed_generation = entry.generation;
        assign_to(&mut desired, current, target, ctx);
        let note = format!(
            "moved from worker {} (load {}) to {} (load {} -> {}) to even out load: they were \
             more than {} apart (rebalance)",
            planned.from,
            planned.from_load,
            planned.to,
            planned.to_load,
            planned.to_load + planned.weight,
            hysteresis.threshold,
        );
        set_assigned_condition(
            &mut desired,
            current,
            true,
            Reason::Rebalanced,
            &note,
            ctx.now,
        );
        set_rules_condition(&mut desired, current, &entry.rules, ctx.now);
        for condition in &mut desired.conditions {
            condition.observed_generation = desired.observed_generation;
        }
        let write = Write {
            key: key.clone(),
            resource_version: resource_version.clone(),
            status: desired,
            assumes: Some(planned.to.clone()),
            event: Some(PlanEvent {
                warning: false,
                reason: Reason::Rebalanced,
                note,
            }),
        };
        self.assume(&key.name, planned.to.clone());
        Plan::Write(Box::new(write))
    }
}
