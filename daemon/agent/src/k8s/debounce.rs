//! When to recompile: changes are gathered until the API has been quiet for `min`, but never
//! held longer than `max` after the first of them, so a burst of pod churn costs one map update
//! and a steady trickle still lands within `max`. Pure (times are passed in), so it is tested
//! without clocks. Used by the agent's Kubernetes loop.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Debounce {
    /// Quiet time after the last change before a recompile.
    pub min: Duration,
    /// Longest a change waits, however busy the API is.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Self {
            min: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        }
    }
}

impl Debounce {
    /// Whether a recompile is due now, given the first and the last pending change (`None`: no
    /// change pending).
    pub fn due(&self, first: Option<Instant>, last: Option<Instant>, now: Instant) -> bool {
        let (Some(first), Some(last)) = (first, last) else {
            return false;
        };
        now.saturating_duration_since(last) >= self.min
            || now.saturating_duration_since(first) >= self.max
    }

    /// How long to wait at most before `due` can turn true (for a loop's sleep).
    pub fn wait(&self, first: Option<Instant>, last: Option<Instant>, now: Instant) -> Duration {
        let (Some(first), Some(last)) = (first, last) else {
            return self.min;
        };
        let quiet = (last + self.min).saturating_duration_since(now);
        let bound = (first + self.max).saturating_duration_since(now);
        quiet.min(bound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn nothing_pending_is_never_due() {
        let d = Debounce::default();
        assert!(!d.due(None, None, Instant::now()));
    }

    #[test]
    fn a_single_change_waits_for_the_quiet_time() {
        let d = Debounce {
            min: ms(100),
            max: ms(1000),
        };
        let t0 = Instant::now();
        let first = Some(t0);
        assert!(!d.due(first, first, t0 + ms(99)));
        assert!(d.due(first, first, t0 + ms(100)));
        assert_eq!(d.wait(first, first, t0 + ms(40)), ms(60));
    }

    #[test]
    fn a_steady_burst_is_applied_by_the_max_interval() {
        let d = Debounce {
            min: ms(100),
            max: ms(1000),
        };
        let t0 = Instant::now();
        // A change every 50 ms: never quiet for 100 ms.
        for step in 0..19u32 {
            let now = t0 + ms(50) * step;
            assert!(!d.due(Some(t0), Some(now), now), "step {step}");
        }
        let now = t0 + ms(1000);
        assert!(d.due(Some(t0), Some(now), now), "held no longer than max");
        assert_eq!(d.wait(Some(t0), Some(t0 + ms(950)), t0 + ms(960)), ms(40));
    }
}
