//! Choosing a worker for a resource that has none (or lost it): the policy over the namespace's
//! workers, host affinity across namespaces, the note that says where and why (or why
//! nowhere), and queueing the resources that wait for room when room is freed.

use crawler_core::{self as scheduler, Affinity, Hold, Holder, Load, Readiness, Request};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::crd::{CONDITION_ASSIGNED, CrawlerResourceStatus, Phase};

use super::{
    HostAffinity, Index, Key, Namespace, PlanContext, PlanEvent, Reason,
    handoff::{HandedOff, MoveRequest},
    status::{address, lost_reason, set_assigned_condition, set_unassigned},
};

impl Index {
    /// The resources waiting for room in every namespace where some worker's load went down since
    /// the last call (see [`Namespace::room_freed`]): the controller queues them, so room freed by
    /// a deletion, a move, a handoff, a rebalance, a lighter spec or a forgotten decision is
    /// offered at once to what waits for it.
    pub fn room_freed(&mut self) -> Vec<Key> {
        let mut keys = Vec::new();
        // A host freed in one namespace may let a task of any namespace go.
        let mut hosts_freed = false;
        for ns in self.namespaces.values_mut() {
            hosts_freed |= std::mem::take(&mut ns.hosts_freed);
        }
        let hosts_freed = hosts_freed && self.host_affinity == HostAffinity::On;
        for (ns_name, ns) in &mut self.namespaces {
            if std::mem::take(&mut ns.room_freed) || hosts_freed {
                keys.extend(ns.waiting(ns_name));
            }
        }
        keys
    }

    /// Every resource waiting for a worker, in every namespace: the controller's periodic safety
    /// resync queues them (planning one whose status is right writes nothing).
    pub fn all_waiting(&self) -> Vec<Key> {
        self.namespaces
            .iter()
            .flat_map(|(ns_name, ns)| ns.waiting(ns_name))
            .collect()
    }

    /// Where host affinity lets `key` go (every namespace's holds count: a host's budget is the
    /// installation's), and, if it runs somewhere, a task on another worker that shares a host
    /// with it and stays there while this one moves ([`crawler_core::keeps_place`]). Free and
    /// none when host affinity is off.
    pub(super) fn host_affinity(&self, key: &Key) -> (Affinity, Option<Hold>) {
        let Some(entry) = self
            .namespaces
            .get(&key.namespace)
            .and_then(|ns| ns.resources.get(&key.name))
            .filter(|e| self.host_affinity == HostAffinity::On && !e.hosts.is_empty())
        else {
            return (Affinity::Free, None);
        };
        let mut affinity = Affinity::Free;
        for ns in self.namespaces.values() {
            if ns.hosts.is_empty() {
                continue;
            }
            let here = ns
                .hosts
                .affinity(&key.namespace, &key.name, &entry.hosts, |h| {
                    ns.stopped(&h.worker)
                });
            affinity = match (affinity, here) {
                (a @ (Affinity::Split(..) | Affinity::OtherNamespace(_)), _)
                | (a, Affinity::Free) => a,
                (_, Affinity::Bound(h) | Affinity::Split(h, _)) if ns.name != key.namespace => {
                    Affinity::OtherNamespace(h)
                }
                (_, here) => here,
            };
        }
        let conflict = entry
            .status
            .assigned_worker
            .as_ref()
            .map(|w| Holder::new(key.namespace.clone(), w.clone()))
            .and_then(|own| {
                self.namespaces.values().find_map(|ns| {
                    scheduler::keeps_place(&ns.hosts, &own, &key.name, &entry.hosts, |h| {
                        ns.stopped(&h.worker)
                    })
                    .err()
                })
            });
        (affinity, conflict)
    }
}

impl Namespace {
    /// Why a resource leaves worker `old`, for the Reassigned event: the handoff, the move
    /// asked for, the host it shares with another worker's tasks, or what became of `old`.
    fn move_reason(
        &self,
        old: &str,
        request: &Request,
        handed_off: Option<HandedOff>,
        asked: Option<&MoveRequest>,
        host_conflict: Option<&Hold>,
    ) -> String {
        match (handed_off.and_then(HandedOff::describe), asked) {
            (Some(how), _) => how.to_owned(),
            (None, Some(asked)) => asked.why.clone(),
            (None, None) => host_conflict.map_or_else(
                || lost_reason(self.workers.get(old), request).to_owned(),
                shared_host,
            ),
        }
    }

    /// Chooses a worker for a resource that has none (or lost it), and fills `desired` with the
    /// decision or with why there is none. Returns the Event to publish and the worker to assume.
    pub(super) fn place(
        &self,
        weight: Load,
        request: &Request,
        current: &CrawlerResourceStatus,
        (handed_off, asked, affinity, host_conflict): (
            Option<HandedOff>,
            Option<&MoveRequest>,
            &Affinity,
            Option<&Hold>,
        ),
        desired: &mut CrawlerResourceStatus,
        ctx: &PlanContext<'_>,
    ) -> (Option<PlanEvent>, Option<String>) {
        // The resource still counts on its current worker; if that worker may take it again
        // (a completed handoff off a worker that is still ready), it competes without that
        // weight, as it will carry once the resource has left.
        let own = current.assigned_worker.as_deref().filter(|w| {
            self.workers
                .get(*w)
                .is_some_and(|e| e.worker.readiness == Readiness::Ready)
        });
        let adjusted: Vec<scheduler::Worker>;
        let placed = if let Some(own) = own {
            adjusted = self
                .workers
                .values()
                .map(|w| {
                    let mut worker = w.worker.clone();
                    if worker.name == own {
                        worker.load = worker.load.saturating_sub(weight);
                    }
                    worker
                })
                .collect();
            scheduler::place_with_hosts(ctx.policy, &adjusted, request, affinity)
        } else {
            scheduler::place_with_hosts(
                ctx.policy,
                self.workers.values().map(|w| &w.worker),
                request,
                affinity,
            )
        };
        match placed {
            Ok(placement) => {
                let chosen = placement.worker.name.clone();
                let load = placement.worker.load;
                let worker = &self.workers[&chosen];
                desired.phase = Some(Phase::Assigned);
                desired.assigned_worker = Some(chosen.clone());
                desired.assigned_address =
                    worker.ip.as_ref().map(|ip| address(ip, ctx.worker_port));
                desired.assigned_at = Some(Time(ctx.now));
                desired.assignments = Some(current.assignments.unwrap_or(0) + 1);
                // Every assignment names its run (1 at the first placement); a move keeps it.
                desired.run = Some(desired.run.unwrap_or(1));
                let capacity = worker
                    .worker
                    .capacity
                    .map_or_else(|| "unbounded".to_owned(), |c| c.to_string());
                let how = format!(
                    "by {}: load {load} -> {} of {capacity}",
                    ctx.policy.name(),
                    load + weight
                );
                let (reason, note) = match &current.assigned_worker {
                    Some(old) => {
                        let why = self.move_reason(old, request, handed_off, asked, host_conflict);
                        (
                            asked.map_or(Reason::Reassigned, |m| m.reason),
                            format!("moved from worker {old} ({why}) to {chosen} {how}"),
                        )
                    }
                    None => (Reason::Assigned, format!("placed on worker {chosen} {how}")),
                };
                set_assigned_condition(desired, current, true, reason, &note, ctx.now);
                (
                    Some(PlanEvent {
                        warning: false,
                        reason,
                        note,
                    }),
                    Some(chosen),
                )
            }
            Err(diagnosis) => {
                set_unassigned(desired, Phase::Unschedulable);
                let message = diagnosis.to_string();
                let event = current
                    .condition(CONDITION_ASSIGNED)
                    .is_none_or(|c| c.message != message)
                    .then(|| PlanEvent {
                        warning: true,
                        reason: Reason::Unschedulable,
                        note: message.clone(),
                    });
                set_assigned_condition(
                    desired,
                    current,
                    false,
                    Reason::unschedulable(&diagnosis),
                    &message,
                    ctx.now,
                );
                (event, None)
            }
        }
    }

    /// Resources waiting for a worker (not assigned, not suspended, not done).
    pub(super) fn waiting(&self, namespace: &str) -> Vec<Key> {
        self.resources
            .iter()
            .filter(|(_, r)| !r.suspend && r.effective_worker().is_none() && !r.done())
            .map(|(name, _)| Key::new(namespace, name.clone()))
            .collect()
    }
}

/// Why a task leaves its worker under host affinity: another task crawls one of its hosts on a
/// worker whose name sorts first.
pub(super) fn shared_host(hold: &Hold) -> String {
    format!(
        "host {} is crawled on worker {} by task {} as well, and tasks that share a host run on \
         one worker",
        hold.host, hold.holder.worker, hold.task
    )
}
