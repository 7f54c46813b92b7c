//! Liveness as a state machine driven by an explicit `now`.
//!
//! Both ends use it. The owner sends a ping every `interval` (fixed cadence: cheap, predictable,
//! and it keeps idle-timeout proxies on the path from cutting the connection); **any** inbound
//! frame counts as life; nothing inbound for `interval + timeout` means the peer is dead, and the
//! owner must abort the transport at once — a dead peer never completes a closing handshake.
//!
//! The machine also measures round-trip time from a ping to the first pong after it.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use tether_core::heartbeat::{Heartbeat, Action};
//! let t0 = Instant::now();
//! let mut hb = Heartbeat::new(Duration::from_millis(100), Duration::from_millis(50), t0);
//! assert_eq!(hb.poll(t0), Action::Wait(t0 + Duration::from_millis(100)));
//! assert_eq!(hb.poll(t0 + Duration::from_millis(100)), Action::SendPing);
//! assert_eq!(hb.poll(t0 + Duration::from_millis(150)), Action::PeerDead);
//! ```

use std::time::{Duration, Instant};

/// What the owner must do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a ping now, then poll again.
    SendPing,
    /// The peer showed no sign of life for `interval + timeout`: abort the connection.
    PeerDead,
    /// Nothing to do until this instant; sleep until then (or until a frame arrives).
    Wait(Instant),
}

#[derive(Clone, Debug)]
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// Last time any frame arrived (or the connection opened).
    last_seen: Instant,
    /// When the next ping is due.
    next_ping: Instant,
    /// When the outstanding ping (the latest one without a pong yet) was sent.
    ping_sent_at: Option<Instant>,
    /// Round-trip time of the latest answered ping.
    last_rtt: Option<Duration>,
}

/// Bounds applied to the configured durations: a zero interval would never advance, and
/// absurdly large ones would overflow `Instant` arithmetic.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Heartbeat {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        let interval = interval.clamp(MIN_INTERVAL, MAX_DURATION);
        let timeout = timeout.min(MAX_DURATION);
        Heartbeat {
            interval,
            timeout,
            last_seen: now,
            next_ping: now + interval,
            ping_sent_at: None,
            last_rtt: None,
        }
    }

    /// The instant after which, with nothing inbound, the peer counts as dead.
    pub fn deadline(&self) -> Instant {
        self.last_seen + self.interval + self.timeout
    }

    /// Any frame arrived: data, ping, pong or close.
    pub fn on_inbound(&mut self, now: Instant) {
        self.last_seen = self.last_seen.max(now);
    }

    /// A pong arrived: proof of life, and the round trip of the outstanding ping.
    /// Returns the round-trip time when a ping was outstanding.
    pub fn on_pong(&mut self, now: Instant) -> Option<Duration> {
        self.on_inbound(now);
        let sent = self.ping_sent_at.take()?;
        let rtt = now.saturating_duration_since(sent);
        self.last_rtt = Some(rtt);
        Some(rtt)
    }

    /// Decide what to do at `now`. Call on every wake-up; after `SendPing` call again.
    pub fn poll(&mut self, now: Instant) -> Action {
        if now >= self.deadline() {
            return Action::PeerDead;
        }
        if now >= self.next_ping {
            // Catch up without a burst if the owner was late (e.g. a suspended laptop).
            while self.next_ping <= now {
                self.next_ping += self.interval;
            }
            self.ping_sent_at = Some(now);
            return Action::SendPing;
        }
        Action::Wait(self.next_ping.min(self.deadline()))
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        self.last_rtt
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn pings_on_a_fixed_cadence_even_with_traffic() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(50), t0);
        hb.on_inbound(t0 + ms(90));
        assert_eq!(hb.poll(t0 + ms(100)), Action::SendPing);
        assert_eq!(hb.poll(t0 + ms(100)), Action::Wait(t0 + ms(200)));
    }

    #[test]
    fn any_inbound_frame_postpones_death() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(50), t0);
        assert_eq!(hb.poll(t0 + ms(100)), Action::SendPing);
        hb.on_inbound(t0 + ms(140));
        assert_eq!(hb.deadline(), t0 + ms(290));
        assert_eq!(hb.poll(t0 + ms(200)), Action::SendPing);
        assert_eq!(hb.poll(t0 + ms(289)), Action::Wait(t0 + ms(290)));
        assert_eq!(hb.poll(t0 + ms(290)), Action::PeerDead);
    }

    #[test]
    fn silent_peer_dies_at_interval_plus_timeout() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(50), t0);
        assert_eq!(hb.poll(t0 + ms(100)), Action::SendPing);
        assert_eq!(hb.poll(t0 + ms(101)), Action::Wait(t0 + ms(150)));
        assert_eq!(hb.poll(t0 + ms(150)), Action::PeerDead);
    }

    #[test]
    fn pong_measures_round_trip() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(50), t0);
        assert_eq!(hb.poll(t0 + ms(100)), Action::SendPing);
        assert_eq!(hb.on_pong(t0 + ms(112)), Some(ms(12)));
        assert_eq!(hb.on_pong(t0 + ms(113)), None, "unsolicited pong has no round trip");
        assert_eq!(hb.last_rtt(), Some(ms(12)));
    }

    #[test]
    fn degenerate_durations_are_clamped() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(hb.interval(), ms(1));
        assert_eq!(hb.poll(t0 + ms(1)), Action::PeerDead, "terminates, no endless loop");
        let hb = Heartbeat::new(Duration::MAX, Duration::MAX, t0);
        assert!(hb.deadline() > t0);
    }

    #[test]
    fn late_wakeup_sends_one_ping_not_a_burst() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(10_000), t0);
        assert_eq!(hb.poll(t0 + ms(550)), Action::SendPing);
        assert_eq!(hb.poll(t0 + ms(550)), Action::Wait(t0 + ms(600)));
    }
}
