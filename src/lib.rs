//! crawler-operator: a distributed web crawler whose control plane is Kubernetes.
//!
//! ```text
//!  crd          the CrawlerResource API (spec users write, status the operator writes)
//!  scheduler    pure placement: filters, policies, diagnosis          (no I/O)
//!  controller   watches -> index -> plan -> fenced status writes       (uses scheduler, leader)
//!  leader       Lease leader election with a local renew deadline
//!  heartbeat    the worker heartbeat protocol (names, timing)
//!  crawl        the crawl engine a worker runs per task                (no Kubernetes)
//! ```

pub mod controller;
pub mod crawl;
pub mod crd;
pub mod heartbeat;
pub mod leader;
pub mod scheduler;
pub mod telemetry;
pub mod worker;
