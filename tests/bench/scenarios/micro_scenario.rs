//! Scenario 7a: micro.

#[allow(clippy::wildcard_imports)]
use crate::*;

pub(crate) fn scenario_micro(cfg: &Config, report: &mut Report) {
    let results = micro::run(cfg.resources, cfg.workers, cfg.micro_reps);
    let baseline = results
        .iter()
        .find(|r| r.name.starts_with("original"))
        .map(|r| r.per_placement);
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.name.to_owned(),
                r.what.to_owned(),
                format!("{:.2}", r.batch.as_secs_f64() * 1e3),
                format!("{:.0}", r.per_placement.as_nanos()),
                baseline.map_or_else(String::new, |b| {
                    format!(
                        "{:.1}x",
                        b.as_secs_f64() / r.per_placement.as_secs_f64().max(1e-12)
                    )
                }),
                r.spread.to_string(),
            ]
        })
        .collect();
    report.section(
        &format!(
            "7a. Placement alone: {} resources x {} workers, no API server (median of {} runs)",
            cfg.resources, cfg.workers, cfg.micro_reps
        ),
        format!(
            "{}\n`speed-up` is the original algorithm's time per placement divided by this row's. Spread is max - min load after the batch (weight 1 each).\n",
            table(&["placement", "what is timed", "batch ms", "ns / placement", "speed-up vs original", "spread"], rows)
        ),
    );
}

/// Scenario 7d: one rebalance round (`--rebalance`) under the controller's lock.
pub(crate) fn scenario_rebalance(cfg: &Config, report: &mut Report) {
    let rows = micro::rebalance(cfg.resources, cfg.workers, cfg.micro_reps)
        .iter()
        .map(|r| {
            vec![
                r.name.to_owned(),
                r.budget.to_string(),
                format!("{:.2}", r.round.as_secs_f64() * 1e3),
                r.moves.to_string(),
            ]
        })
        .collect();
    report.section(
        &format!(
            "7d. A rebalance round alone: {} resources x {} workers, no API server (median of {} runs)",
            cfg.resources,
            cfg.workers,
            cfg.micro_reps.min(7)
        ),
        format!(
            "{}\n`Index::rebalance`: the planner's input built from the index, the plan, each move's status and assumption; the controller holds the index lock for this long about once a second while `--rebalance` is on and it leads.\n",
            table(&["cluster", "budget", "round ms", "moves"], rows)
        ),
    );
}
