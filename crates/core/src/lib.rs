//! Placement: which worker should run a `CrawlerResource`.
//!
//! This module owns the decision and nothing else: workers (name, labels, readiness, capacity,
//! load) and a request (weight, `workerSelector`) in, a [`Placement`] or a [`Diagnosis`] out.
//! No I/O, no async, no Kubernetes client; the controller builds the inputs from its index,
//! "assumes" each decision (adds the weight to the chosen worker's load) before the next, and
//! writes status.
//!
//! Like the Kubernetes scheduler framework, a decision is a pipeline:
//! 1. [`filter()`]: readiness, then `workerSelector`, then capacity; each rejected worker yields an
//!    [`Unfit`] reason, and the reasons add up to the [`Diagnosis`] people read ("0/3 workers
//!    eligible: 2 not ready, 1 does not match workerSelector").
//! 2. a [`Policy`] ranks the survivors ([`LeastLoaded`] by default, or [`BinPack`]), chosen by
//!    [`PolicyKind`] from a flag, so the algorithm changes without touching the controller.
//! 3. ties go to the smallest worker name, so the answer never depends on listing order.
//!
//! Host affinity ([`HostHolders`], [`place_with_hosts`]): tasks that share a host run on one
//! worker, so that worker's per-host gate keeps the installation's budget for the host.
//!
//! [`plan_rebalance`] chooses moves that even out load after workers join (opt-in, budgeted by a
//! [`TokenBucket`], with [`Hysteresis`]); its targets are the ones placement would choose.
//!
//! [`Cron`] times a scheduled crawl's firings (`spec.schedule` in `spec.timeZone`): the next one
//! after an instant, and the one to act on now as a `CronJob` would.
//!
//! [`Schedule`] runs many decisions over a worker table it owns (tests, benchmarks), and
//! [`original_algorithm`] keeps the original Go master's algorithm as the benchmark baseline.

mod cron;
mod diagnosis;
mod filter;
mod hosts;
#[cfg(any(test, feature = "bench"))]
mod original;
mod placement;
mod policy;
mod rebalance;
#[cfg(any(test, feature = "bench"))]
mod schedule;
mod selector;
mod worker;

#[cfg(test)]
mod properties;

pub use cron::{Cron, CronError, Firings, MIN_EVERY};
pub use diagnosis::Diagnosis;
pub use filter::{Unfit, filter};
pub use hosts::{Affinity, Hold, Holder, HostHolders, keeps_place};
#[cfg(any(test, feature = "bench"))]
pub use original::original_algorithm;
pub use placement::{Placement, Request, place, place_with_hosts};
pub use policy::{BinPack, LeastLoaded, Policy, PolicyKind, UnknownPolicy};
pub use rebalance::{Hysteresis, Move, Task, TokenBucket, plan as plan_rebalance};
#[cfg(any(test, feature = "bench"))]
pub use schedule::{Outcome, Schedule};
pub use selector::{InvalidSelector, InvalidSelectorText, Operator, Requirement, WorkerSelector};
pub use worker::{Load, NotReady, Readiness, Worker};
