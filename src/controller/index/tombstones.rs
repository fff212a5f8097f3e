//! Tombstones: a resource deleted (or replaced by another object under its name) while its
//! worker may still run it holds back an object created again under the same name, until
//! [`successor_hold`] after the deletion was seen or until that worker's heartbeat stops being
//! alive.

use std::time::{Duration, Instant};

use crate::crd::Phase;

use super::{Index, Key, Namespace, ResourceEntry};

/// A deleted resource whose task its worker may still be running (its view of its assignments
/// can lag the deletion by up to its watch's `stale_after`): an object created again under the
/// same name is not placed until `hold` after the deletion was seen, or until that worker's
/// heartbeat stops being alive.
#[derive(Clone, Debug)]
pub(super) struct Tombstone {
    /// The deleted object's uid: only another object is held back.
    pub(super) uid: Option<String>,
    pub(super) worker: String,
    /// When the deletion was seen, stamped by the next [`Index::successors_due`] (a tick: later
    /// than the event by at most one tick, which only lengthens the hold).
    pub(super) seen: Option<Instant>,
    /// [`successor_hold`] for that worker.
    pub(super) hold: Duration,
}

/// How long after a deletion was seen an object created again under the same name waits before
/// it is placed, when the deleted one was assigned to a worker that may still run it
/// ([`crate::heartbeat::successor_hold`] of the worker's heartbeat duration, as its Lease says;
/// for a worker whose Lease is not known, the longest any worker needs: 19 s).
pub(super) fn successor_hold(heartbeat: Option<&super::workers::Heartbeat>) -> Duration {
    crate::heartbeat::successor_hold(heartbeat.map_or(Duration::MAX, |h| h.duration))
}

impl Index {
    /// Ends the holds on successors that are due (`now`: the tick's time; a hold not yet stamped
    /// starts now). Returns the successors to reconcile.
    pub fn successors_due(&mut self, now: Instant) -> Vec<Key> {
        let mut keys = Vec::new();
        for (ns_name, ns) in &mut self.namespaces {
            let mut ended = Vec::new();
            ns.tombstones.retain(|name, t| {
                let seen = *t.seen.get_or_insert(now);
                let due = now >= seen + t.hold;
                if due {
                    ended.push(name.clone());
                }
                !due
            });
            keys.extend(
                ended
                    .into_iter()
                    .filter(|name| ns.resources.contains_key(name))
                    .map(|name| Key::new(ns_name.clone(), name)),
            );
        }
        keys
    }
}

impl Namespace {
    /// Remembers a resource just deleted (or replaced by another object under its name) whose
    /// task its worker may still run: assigned, not confirmed released, on a worker whose
    /// heartbeat has not lapsed. Its successor is held back (see [`Tombstone`]).
    pub(super) fn bury(&mut self, namespace: &str, name: &str, gone: &ResourceEntry) {
        let status = &gone.status;
        // The effective worker: a placement written (or being written) but not yet seen by the
        // watch may already have started the task there.
        let Some(worker) = gone.effective_worker().map(str::to_owned) else {
            return;
        };
        let released = status.phase == Some(Phase::Releasing)
            && gone
                .released_by
                .as_ref()
                .is_some_and(|(w, n)| *w == worker && Some(*n) == status.assignments);
        let stopped = self.heartbeats.get(&worker).is_some_and(|h| !h.alive());
        if released || stopped {
            return;
        }
        let hold = successor_hold(self.heartbeats.get(&worker));
        tracing::info!(
            namespace,
            resource = name,
            %worker,
            "deleted while its worker may still run it: an object created again under this name \
             is placed no earlier than {hold:?} from now"
        );
        self.tombstones.insert(
            name.to_owned(),
            Tombstone {
                uid: gone.uid.clone(),
                worker,
                seen: None,
                hold,
            },
        );
    }

    /// `worker`'s heartbeat stopped being alive: it has stopped every task, so the successors
    /// held back for it may be placed. Returns them.
    pub(super) fn unbury_on(&mut self, namespace: &str, worker: &str) -> Vec<Key> {
        let mut ended = Vec::new();
        self.tombstones.retain(|name, t| {
            let on = t.worker == worker;
            if on {
                ended.push(name.clone());
            }
            !on
        });
        ended
            .into_iter()
            .filter(|name| self.resources.contains_key(name))
            .map(|name| Key::new(namespace, name))
            .collect()
    }
}
