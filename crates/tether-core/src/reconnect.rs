//! The reconnect policy: after each close or failed connect, decide whether to try again and when.
//!
//! Rules, in order:
//! 1. A close the application asked for never reconnects.
//! 2. A server `disconnect` advice with `reconnect: false` stops; so does a close code whose
//!    catalogue advice is "stop" (1008, the 4500–4999 band), and a connect attempt that failed in
//!    a way retrying cannot fix (bad URL, the handshake refused with HTTP 4xx).
//! 3. A connection that stayed up at least `min_uptime` resets the backoff to its first step.
//! 4. `max_attempts` consecutive failures stop (none by default: retry forever).
//! 5. A server hint (`retry_after_ms` in the advice) sets the delay to a uniform pick in
//!    `[hint, 2 × hint)`; otherwise the backoff with full jitter decides.
//!
//! The owner calls [`Reconnector::on_open`] and [`Reconnector::on_close`]; one owner, one loop,
//! so there is never more than one reconnect in flight.

use crate::backoff::Backoff;
use crate::close_code::{CloseCode, Initiator, RetryAdvice};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReconnectPolicy {
    pub backoff: Backoff,
    /// Uptime after which a connection counts as healthy and the backoff starts over.
    pub min_uptime: Duration,
    /// Stop after this many consecutive failed attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        ReconnectPolicy {
            backoff: Backoff::default(),
            min_uptime: crate::defaults::MIN_UPTIME,
            max_attempts: None,
        }
    }
}

/// The facts of one ended connection (or failed connect) that the policy needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    /// `None` when the connection never opened (refused, DNS, handshake failure).
    pub code: Option<CloseCode>,
    pub initiator: Initiator,
    /// The application called `close()`.
    pub requested_by_user: bool,
    /// From a `disconnect` advice, when one arrived before the close.
    pub advice_reconnect: Option<bool>,
    pub advice_retry_after: Option<Duration>,
    /// Set when the attempt failed permanently (bad URL, HTTP 4xx on the handshake): the text
    /// says why, and the client stops.
    pub fatal: Option<String>,
}

impl Ended {
    /// A connect attempt that failed before the WebSocket opened.
    pub fn connect_failed() -> Self {
        Ended {
            code: None,
            initiator: Initiator::Network,
            requested_by_user: false,
            advice_reconnect: None,
            advice_retry_after: None,
            fatal: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    RequestedByUser,
    ServerAdvisedNoReconnect,
    CloseCode(CloseCode),
    MaxAttempts(u32),
    /// The connect attempt failed in a way retrying cannot fix.
    Refused(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::RequestedByUser => write!(f, "closed by the application"),
            StopReason::ServerAdvisedNoReconnect => {
                write!(f, "the server advised not to reconnect")
            }
            StopReason::CloseCode(c) => write!(f, "close code {c} means retrying cannot help"),
            StopReason::MaxAttempts(n) => write!(f, "gave up after {n} failed attempts"),
            StopReason::Refused(why) => write!(f, "retrying cannot help: {why}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Retry { attempt: u32, delay: Duration },
    Stop(StopReason),
}

#[derive(Clone, Debug)]
pub struct Reconnector {
    policy: ReconnectPolicy,
    /// Consecutive attempts since the last healthy connection.
    failures: u32,
    opened_at: Option<Instant>,
}

impl Reconnector {
    pub fn new(policy: ReconnectPolicy) -> Self {
        Reconnector { policy, failures: 0, opened_at: None }
    }

    pub fn on_open(&mut self, now: Instant) {
        self.opened_at = Some(now);
    }

    /// Decide after a close or a failed connect. `unit` is uniform in `[0, 1)`.
    pub fn on_close(&mut self, now: Instant, ended: &Ended, unit: f64) -> Decision {
        let opened_at = self.opened_at.take();
        if ended.requested_by_user {
            return Decision::Stop(StopReason::RequestedByUser);
        }
        if let Some(why) = &ended.fatal {
            return Decision::Stop(StopReason::Refused(why.clone()));
        }
        if ended.advice_reconnect == Some(false) {
            return Decision::Stop(StopReason::ServerAdvisedNoReconnect);
        }
        let advice = ended.code.map(|c| c.advice());
        if let (Some(code), Some(RetryAdvice::Stop)) = (ended.code, advice) {
            return Decision::Stop(StopReason::CloseCode(code));
        }
        if opened_at.is_some_and(|t| now.saturating_duration_since(t) >= self.policy.min_uptime) {
            self.failures = 0;
        }
        self.failures += 1;
        if let Some(max) = self.policy.max_attempts {
            if self.failures > max {
                return Decision::Stop(StopReason::MaxAttempts(max));
            }
        }
        let delay = match ended.advice_retry_after {
            Some(hint) => hint + hint.mul_f64(unit.clamp(0.0, 1.0)),
            None => self.policy.backoff.delay(self.failures, unit),
        };
        Decision::Retry { attempt: self.failures, delay }
    }

    /// Consecutive failed attempts so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed(code: u16, initiator: Initiator) -> Ended {
        Ended { code: Some(CloseCode(code)), initiator, ..Ended::connect_failed() }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn backoff_grows_across_failures_and_resets_after_uptime() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(ReconnectPolicy::default());
        let e = Ended::connect_failed();
        assert_eq!(
            r.on_close(t0, &e, 0.999_999).clone(),
            Decision::Retry { attempt: 1, delay: secs(1).mul_f64(0.999_999) }
        );
        assert!(
            matches!(r.on_close(t0, &e, 0.5), Decision::Retry { attempt: 2, delay } if delay == secs(1))
        );
        assert!(
            matches!(r.on_close(t0, &e, 0.5), Decision::Retry { attempt: 3, delay } if delay == secs(2))
        );
        // Short-lived connection: still failing.
        r.on_open(t0);
        assert!(matches!(
            r.on_close(t0 + secs(1), &closed(1006, Initiator::Network), 0.5),
            Decision::Retry { attempt: 4, .. }
        ));
        // Healthy connection: start over.
        r.on_open(t0);
        assert!(matches!(
            r.on_close(t0 + secs(6), &closed(1006, Initiator::Network), 0.5),
            Decision::Retry { attempt: 1, .. }
        ));
    }

    #[test]
    fn stop_codes_and_advice_stop() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(ReconnectPolicy::default());
        assert_eq!(
            r.on_close(t0, &closed(1008, Initiator::Server), 0.5),
            Decision::Stop(StopReason::CloseCode(CloseCode(1008)))
        );
        assert_eq!(
            r.on_close(t0, &closed(4501, Initiator::Server), 0.5),
            Decision::Stop(StopReason::CloseCode(CloseCode(4501)))
        );
        let advised = Ended { advice_reconnect: Some(false), ..closed(1001, Initiator::Server) };
        assert_eq!(
            r.on_close(t0, &advised, 0.5),
            Decision::Stop(StopReason::ServerAdvisedNoReconnect)
        );
        let user = Ended { requested_by_user: true, ..closed(1000, Initiator::Client) };
        assert_eq!(r.on_close(t0, &user, 0.5), Decision::Stop(StopReason::RequestedByUser));
        let refused = Ended { fatal: Some("HTTP 404".into()), ..Ended::connect_failed() };
        assert_eq!(
            r.on_close(t0, &refused, 0.5),
            Decision::Stop(StopReason::Refused("HTTP 404".into()))
        );
        // A plain 1000 from a server is not a "go away forever".
        assert!(matches!(
            r.on_close(t0, &closed(1000, Initiator::Server), 0.5),
            Decision::Retry { .. }
        ));
    }

    #[test]
    fn server_hint_wins_over_backoff() {
        let t0 = Instant::now();
        let mut r = Reconnector::new(ReconnectPolicy::default());
        let e = Ended {
            advice_retry_after: Some(Duration::from_millis(500)),
            ..closed(1012, Initiator::Server)
        };
        assert_eq!(
            r.on_close(t0, &e, 0.0),
            Decision::Retry { attempt: 1, delay: Duration::from_millis(500) }
        );
        assert_eq!(
            r.on_close(t0, &e, 0.5),
            Decision::Retry { attempt: 2, delay: Duration::from_millis(750) }
        );
    }

    #[test]
    fn max_attempts_stops() {
        let t0 = Instant::now();
        let mut r =
            Reconnector::new(ReconnectPolicy { max_attempts: Some(2), ..Default::default() });
        let e = Ended::connect_failed();
        assert!(matches!(r.on_close(t0, &e, 0.1), Decision::Retry { attempt: 1, .. }));
        assert!(matches!(r.on_close(t0, &e, 0.1), Decision::Retry { attempt: 2, .. }));
        assert_eq!(r.on_close(t0, &e, 0.1), Decision::Stop(StopReason::MaxAttempts(2)));
    }
}
