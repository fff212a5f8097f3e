//! The opt-in rebalance (`--rebalance`): while this replica leads, about once a second (and
//! soon after a worker Pod changes), plan moves that even out load within a token-bucket budget
//! and request each through the index's one move path, the handoff ([`super::Index::move_off`]):
//! the reconcilers then release the task on its worker and place it once that worker confirmed
//! the stop (or its heartbeat lapsed), each a fenced, term-bounded write like any decision.
//!
//! Off by default because every move restarts a crawl task on another worker (with the
//! `postgres` sink it resumes from its last checkpoint; with a file sink it starts over), so
//! evening out load is a trade the operator chooses, at the pace the operator chooses.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crawler_core::{Hysteresis, Load, PolicyKind, TokenBucket};
use jiff::Timestamp;

use super::{Context, PlanContext};
use crate::telemetry::RebalanceStage;

/// Default of `--rebalance-moves-per-second`: slow enough that a cluster of a few hundred tasks
/// evens out in minutes without a burst of restarts.
pub const DEFAULT_MOVES_PER_SECOND: f64 = 1.0;
/// Default of `--rebalance-threshold`, in load units: two workers closer than this are left
/// alone (with unit weights, loads end within 2 of each other).
pub const DEFAULT_THRESHOLD: Load = 2;
/// Default of `--rebalance-cooldown`: a task placed or moved less than this long ago stays.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);
/// Highest `--rebalance-moves-per-second` accepted: beyond it the budget no longer limits
/// anything the API server would notice (a status write each; placement itself runs at
/// hundreds per second).
pub const MAX_MOVES_PER_SECOND: f64 = 1000.0;

/// How often a leader looks for moves when nothing woke it earlier.
const PERIOD: Duration = Duration::from_secs(1);
/// After a worker Pod changed, wait this long before planning: a scale-up creates Pods a few
/// milliseconds apart, and planning once for all of them moves less.
const SETTLE: Duration = Duration::from_millis(200);

/// The rebalance's flags, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct RebalanceSettings {
    /// Moves per second, on average (the token bucket's rate).
    pub moves_per_second: f64,
    /// Hysteresis in load units (see [`crawler_core::Hysteresis`]).
    pub threshold: Load,
    /// See [`crawler_core::Hysteresis`].
    pub cooldown: Duration,
}

/// A rebalance flag the controller cannot work with, phrased for the person who passed it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "--rebalance-moves-per-second must be a number above 0 and at most {MAX_MOVES_PER_SECOND} \
         (got {0}); e.g. 0.2 for one move every 5 s"
    )]
    MovesPerSecond(f64),
    #[error(
        "--rebalance evens out load, which undoes what --policy=bin-pack packs together; use \
         --policy=least-loaded with --rebalance, or leave --rebalance off"
    )]
    BinPack,
}

impl Default for RebalanceSettings {
    fn default() -> Self {
        Self {
            moves_per_second: DEFAULT_MOVES_PER_SECOND,
            threshold: DEFAULT_THRESHOLD,
            cooldown: DEFAULT_COOLDOWN,
        }
    }
}

impl RebalanceSettings {
    pub fn validate(&self, policy: PolicyKind) -> Result<(), SettingsError> {
        let rate = self.moves_per_second;
        if !(rate.is_finite() && rate > 0.0 && rate <= MAX_MOVES_PER_SECOND) {
            return Err(SettingsError::MovesPerSecond(rate));
        }
        if policy == PolicyKind::BinPack {
            return Err(SettingsError::BinPack);
        }
        Ok(())
    }

    /// Moves that may be made at once after a quiet spell: one second's worth, at least one.
    pub fn burst(&self) -> u32 {
        // At most MAX_MOVES_PER_SECOND (validated), so the cast is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let burst = self.moves_per_second.floor() as u32;
        burst.max(1)
    }

    pub fn hysteresis(&self) -> Hysteresis {
        Hysteresis {
            threshold: self.threshold,
            cooldown: self.cooldown,
        }
    }
}

/// The rebalance loop (runs for as long as the controller; spawned only with `--rebalance`).
pub(super) async fn run(ctx: Arc<Context>, settings: RebalanceSettings) {
    tracing::info!(
        moves_per_second = settings.moves_per_second,
        burst = settings.burst(),
        threshold = settings.threshold,
        cooldown = ?settings.cooldown,
        "rebalance on"
    );
    let mut bucket = TokenBucket::new(settings.moves_per_second, settings.burst(), Instant::now());
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = ctx.workers_changed.notified() => tokio::time::sleep(SETTLE).await,
        }
        if !ctx.leadership.borrow().is_leading_now() {
            continue;
        }
        let now = Instant::now();
        let budget = bucket.available(now);
        if budget == 0 {
            continue;
        }
        let timestamp = Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_else(|_| Timestamp::now());
        let keys = {
            let mut index = ctx.index.lock();
            if !index.synced() {
                continue;
            }
            index.rebalance(
                &PlanContext {
                    policy: ctx.policy.as_ref(),
                    worker_port: ctx.settings.worker_port,
                    now: timestamp,
                },
                settings.hysteresis(),
                budget,
            )
        };
        if keys.is_empty() {
            continue;
        }
        // One token per move requested; the reconcilers make it (release, then placement), and
        // count it made when the placement is written.
        bucket.spend(keys.len(), now);
        ctx.metrics
            .rebalance_moves(RebalanceStage::Planned, keys.len());
        tracing::info!(moves = keys.len(), "rebalance: moves requested");
        ctx.queue.add_all(keys);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_checked_with_messages_that_say_what_to_do() {
        let ok = RebalanceSettings::default();
        assert_eq!(ok.validate(PolicyKind::LeastLoaded), Ok(()));
        assert_eq!(ok.burst(), 1);
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 1000.5] {
            let bad = RebalanceSettings {
                moves_per_second: rate,
                ..RebalanceSettings::default()
            };
            let err = bad.validate(PolicyKind::LeastLoaded).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("--rebalance-moves-per-second must be a number above 0"),
                "{err}"
            );
        }
        assert_eq!(
            ok.validate(PolicyKind::BinPack).unwrap_err().to_string(),
            "--rebalance evens out load, which undoes what --policy=bin-pack packs together; use \
             --policy=least-loaded with --rebalance, or leave --rebalance off"
        );
        let slow = RebalanceSettings {
            moves_per_second: 0.2,
            ..RebalanceSettings::default()
        };
        assert_eq!(slow.burst(), 1, "at least one move");
        let fast = RebalanceSettings {
            moves_per_second: 12.5,
            ..RebalanceSettings::default()
        };
        assert_eq!(fast.burst(), 12, "one second's worth");
    }
}
