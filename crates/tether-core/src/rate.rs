//! A token bucket, sans I/O: the caller says what time it is (milliseconds from any origin) and
//! what the rate and burst are, so that the state per connection stays 8 bytes.

/// `rate` tokens per second flow in, at most `burst` are kept; each event takes one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    tokens: f32,
    /// When `tokens` was last brought up to date, in the caller's milliseconds (wrapping).
    last_ms: u32,
}

impl TokenBucket {
    /// A bucket holding `burst` tokens at `now_ms`.
    pub fn full(burst: f32, now_ms: u64) -> Self {
        TokenBucket { tokens: burst, last_ms: now_ms as u32 }
    }

    fn refill(&mut self, now_ms: u64, rate: f32, burst: f32) {
        // Wrapping: the clock is kept as u32 milliseconds (49 days); a connection idle longer
        // than that simply finds its bucket full, which it would be anyway.
        let elapsed = (now_ms as u32).wrapping_sub(self.last_ms);
        self.tokens = (self.tokens + elapsed as f32 * rate / 1000.0).min(burst);
        self.last_ms = now_ms as u32;
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now_ms: u64, rate: f32, burst: f32) -> bool {
        self.refill(now_ms, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is full again at `now_ms` (nothing to remember about this client).
    pub fn is_full(&self, now_ms: u64, rate: f32, burst: f32) -> bool {
        let mut copy = *self;
        copy.refill(now_ms, rate, burst);
        copy.tokens >= burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let (rate, burst) = (10.0, 5.0);
        let mut b = TokenBucket::full(burst, 1_000);
        assert_eq!((0..8).filter(|_| b.take(1_000, rate, burst)).count(), 5, "the burst");
        assert!(!b.take(1_050, rate, burst), "half a token after 50 ms");
        assert!(b.take(1_100, rate, burst), "one token after 100 ms");
        // Over one second at 10/s: ten more, never more than the burst saved.
        let taken = (0..100).filter(|i| b.take(1_100 + 10 * (i + 1), rate, burst)).count();
        assert_eq!(taken, 10);
        assert!(!b.is_full(2_100, rate, burst));
        assert!(b.is_full(2_700, rate, burst));
        let mut idle = TokenBucket::full(burst, 0);
        assert!(idle.take(10_000_000, rate, burst));
        assert_eq!((0..10).filter(|_| idle.take(10_000_000, rate, burst)).count(), 4, "capped");
    }

    #[test]
    fn the_clock_may_wrap() {
        let (rate, burst) = (1.0, 1.0);
        let start = u32::MAX as u64 - 100;
        let mut b = TokenBucket::full(burst, start);
        assert!(b.take(start, rate, burst));
        assert!(!b.take(start + 500, rate, burst));
        assert!(b.take(start + 1_000, rate, burst), "across the u32 wrap");
    }
}
