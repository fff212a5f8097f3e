//! Liveness and readiness, set by the process and read by `/healthz` and `/readyz`.
//!
//! Live means "do not restart me": it starts true and only a process that knows it is stuck
//! clears it. Ready means "send me work / count me": it starts false, with the reason `starting`.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use parking_lot::Mutex;

/// Shared health state. Cheap to clone: every clone reads and sets the same state.
#[derive(Clone, Debug)]
pub struct Health(Arc<State>);

#[derive(Debug)]
struct State {
    live: AtomicBool,
    /// Readiness and why not, changed together so `/readyz` never shows one without the other.
    ready: Mutex<Readiness>,
}

#[derive(Debug)]
struct Readiness {
    ready: bool,
    /// Shown in the `/readyz` body while not ready.
    reason: Option<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Live, not ready, reason `starting`.
    pub fn new() -> Self {
        Health(Arc::new(State {
            live: AtomicBool::new(true),
            ready: Mutex::new(Readiness {
                ready: false,
                reason: Some("starting".to_owned()),
            }),
        }))
    }

    /// Marks the process ready or not; either way the not-ready reason is cleared.
    pub fn set_ready(&self, ready: bool) {
        self.update(ready, None);
    }

    /// Marks the process not ready, with a reason for people (shown in the `/readyz` body).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        self.update(false, Some(reason.into()));
    }

    /// Whether the process is ready.
    pub fn is_ready(&self) -> bool {
        self.0.ready.lock().ready
    }

    /// Why the process is not ready; `None` when it is ready or no reason was given.
    pub fn not_ready_reason(&self) -> Option<String> {
        let readiness = self.0.ready.lock();
        if readiness.ready {
            None
        } else {
            readiness.reason.clone()
        }
    }

    /// Marks the process live (the default) or stuck; `/healthz` fails while it is not live.
    pub fn set_live(&self, live: bool) {
        if self.0.live.swap(live, Ordering::AcqRel) != live {
            if live {
                tracing::info!("live again");
            } else {
                tracing::warn!("no longer live: /healthz fails from now on");
            }
        }
    }

    /// Whether the process is live.
    pub fn is_live(&self) -> bool {
        self.0.live.load(Ordering::Acquire)
    }

    fn update(&self, ready: bool, reason: Option<String>) {
        let mut readiness = self.0.ready.lock();
        if readiness.ready != ready || readiness.reason != reason {
            if ready {
                tracing::info!("ready");
            } else {
                tracing::info!(reason = reason.as_deref().unwrap_or(""), "not ready");
            }
        }
        *readiness = Readiness { ready, reason };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_live_and_not_ready() {
        let health = Health::default();
        assert!(health.is_live());
        assert!(!health.is_ready());
        assert_eq!(health.not_ready_reason().as_deref(), Some("starting"));
    }

    #[test]
    fn clones_share_the_state() {
        let health = Health::new();
        let other = health.clone();
        other.set_ready(true);
        assert!(health.is_ready());
        assert_eq!(health.not_ready_reason(), None);

        other.set_not_ready("lost the API server");
        assert!(!health.is_ready());
        assert_eq!(
            health.not_ready_reason().as_deref(),
            Some("lost the API server")
        );

        other.set_ready(false);
        assert_eq!(health.not_ready_reason(), None);

        other.set_live(false);
        assert!(!health.is_live());
        other.set_live(true);
        assert!(health.is_live());
    }
}
