//! crawler-operator: a distributed web crawler whose control plane is Kubernetes.
//!
//! The operator crate of the workspace; the two layers below it have no Kubernetes dependency,
//! and the build enforces that (`cargo tree -p crawler-core`, `-p crawler-crawl`):
//!
//! ```text
//!  crawler-core   (crates/core)   pure placement: filters, policies, diagnosis   (no I/O)
//!  crawler-crawl  (crates/crawl)  the crawl engine a worker runs per task        (HTTP only)
//!
//!  crd          the CrawlerResource API (spec users write, status the operator writes)
//!  controller   watches -> index -> plan -> fenced status writes   (uses crawler-core, leader)
//!  leader       Lease leader election with a local renew deadline
//!  heartbeat    the worker heartbeat protocol (names, timing)
//!  retry        the retry schedules (backon), one mechanism for every back-off
//!  rules        spec.rules in the crawl engine's terms (worker config, controller check)
//!  worker       assignment watch, task lifecycle, progress          (uses crawler-crawl, store)
//!  watch        watches whose liveness is checked (bookmarks, idle deadline, freshness)
//!  store        PostgreSQL result store: schema, fenced batches, resumable frontier
//! ```

pub mod controller;
pub mod crd;
pub mod heartbeat;
pub mod leader;
pub mod retry;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod watch;
pub mod worker;
