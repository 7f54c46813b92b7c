//! Exponential backoff with full jitter: the delay before attempt `n` is uniform in
//! `[0, min(max, initial × factor^(n-1))]`. Full jitter spreads a crowd of clients that lost the
//! same server at the same moment over the whole window instead of sending them back in waves.
//! Randomness comes in as `unit` (a number in `[0, 1)`), so the policy is deterministic in tests.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling, however many attempts failed.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt.
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: crate::defaults::BACKOFF_INITIAL,
            max: crate::defaults::BACKOFF_MAX,
            factor: crate::defaults::BACKOFF_FACTOR,
        }
    }
}

impl Backoff {
    /// The jitter window's upper bound for attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before attempt `attempt`, given `unit` uniform in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_grows_then_caps() {
        let b = Backoff::default();
        let secs: Vec<u64> = (1..=8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_spans_the_window() {
        let b = Backoff::default();
        assert_eq!(b.delay(3, 0.0), Duration::ZERO);
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(b.delay(3, 1.5), Duration::from_secs(4), "unit is clamped");
    }
}
