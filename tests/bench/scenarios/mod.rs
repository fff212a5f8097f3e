//! One module per scenario; `controller_benchmarks` (main.rs) runs them in order on one fleet.

pub(crate) mod bulk;
pub(crate) mod ceiling;
pub(crate) mod cold_start;
pub(crate) mod extract;
pub(crate) mod failover;
pub(crate) mod fleet;
pub(crate) mod footprint;
pub(crate) mod micro_scenario;
pub(crate) mod orphans;
