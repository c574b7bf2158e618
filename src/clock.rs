//! The one place time is read. The engine, its actors and the layers that
//! stamp records (api, ingest, channels) ask a [`Clock`] rather than the
//! system, so tests can run on simulated time: a manual clock stands still
//! until the test moves it, and an engine on one runs none of its timer loops
//! (expiry, transfer timers, snapshots, retention, passivation checks): the
//! test calls those steps itself, so what time it is, and when timers fire,
//! is decided by the test alone.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// Milliseconds since the Unix epoch, from the system clock or from a
/// manually driven one. Cloning shares the same time.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's wall clock (what the server runs on).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock at `start_ms` that moves only through [`Clock::advance`].
    pub fn manual(start_ms: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(start_ms))),
        }
    }

    /// Whether this is a manual clock (the caller drives timers).
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    #[inline]
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => system_now_ms(),
            Some(now) => now.load(Ordering::Acquire),
        }
    }

    /// Moves a manual clock forward by `ms` (never backwards) and answers the
    /// new time. The system clock cannot be moved: answered unchanged.
    pub fn advance(&self, ms: u64) -> i64 {
        match &self.manual {
            None => system_now_ms(),
            Some(now) => {
                let step = i64::try_from(ms).unwrap_or(i64::MAX);
                let moved = |t: i64| Some(t.saturating_add(step));
                let before = now
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, moved)
                    .unwrap_or_else(|t| t);
                before.saturating_add(step)
            }
        }
    }
}

/// The system's wall clock in ms since the epoch (0 before 1970).
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = Clock::manual(1_000);
        let other = clock.clone();
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(other.advance(250), 1_250);
        assert_eq!(clock.now_ms(), 1_250);
        assert!(clock.is_manual());
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let clock = Clock::system();
        let before = system_now_ms();
        let now = clock.now_ms();
        assert!(now >= before && now - before < 60_000);
        assert!(!clock.is_manual());
        assert!(clock.advance(10_000) < before + 60_000, "cannot be moved");
    }
}
