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
    /// A quiet spell ([`Heartbeat::quiet`]) is over: end the connection, as agreed with the peer.
    QuietOver,
}

/// The state is compact (56 bytes) because a server keeps one per connection: times are
/// microseconds since the instant the machine was created, durations whole milliseconds.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    origin: Instant,
    interval_ms: u32,
    timeout_ms: u32,
    /// Last time any frame arrived (or the connection opened), µs since `origin`.
    last_seen: u64,
    /// When the next ping is due, µs since `origin`.
    next_ping: u64,
    /// When the outstanding ping (the latest one without a pong yet) was sent; `NONE` if none.
    ping_sent_at: u64,
    /// Round-trip time of the latest answered ping in µs (saturating); `NO_RTT` if none yet.
    last_rtt_us: u32,
    /// The end of a quiet spell, ms since `origin`; 0: none (it fits the struct's padding).
    quiet_until_ms: u32,
}

const NONE: u64 = u64::MAX;
const NO_RTT: u32 = u32::MAX;

/// Bounds applied to the configured durations: a zero interval would never advance, and the
/// millisecond fields hold up to ~49 days.
const MIN_INTERVAL_MS: u32 = 1;
const MAX_MS: u32 = u32::MAX;

fn clamp_ms(d: Duration, min: u32) -> u32 {
    (d.as_millis().min(u128::from(MAX_MS)) as u32).max(min)
}

impl Heartbeat {
    pub fn new(interval: Duration, timeout: Duration, now: Instant) -> Self {
        let interval_ms = clamp_ms(interval, MIN_INTERVAL_MS);
        Heartbeat {
            origin: now,
            interval_ms,
            timeout_ms: clamp_ms(timeout, 0),
            last_seen: 0,
            next_ping: u64::from(interval_ms) * 1000,
            ping_sent_at: NONE,
            last_rtt_us: NO_RTT,
            quiet_until_ms: 0,
        }
    }

    /// Measure the path's idle timeout: from `now` for `spell`, neither pings nor the peer's
    /// silence count (the peer is silent too, by agreement); then [`Action::QuietOver`]. A
    /// spell is capped at ~49 days from the machine's creation.
    pub fn quiet(&mut self, now: Instant, spell: Duration) {
        let until = (self.micros(now) / 1000).saturating_add(spell.as_millis() as u64);
        self.quiet_until_ms = until.clamp(1, u64::from(MAX_MS)) as u32;
    }

    /// Whether a quiet spell was agreed (it lasts until [`Action::QuietOver`]).
    pub fn is_quiet(&self) -> bool {
        self.quiet_until_ms != 0
    }

    fn quiet_until_us(&self) -> Option<u64> {
        (self.quiet_until_ms != 0).then(|| u64::from(self.quiet_until_ms) * 1000)
    }

    /// `now` as µs since `origin` (instants before it count as the origin).
    fn micros(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_micros().min(u128::from(NONE - 1)) as u64
    }

    fn instant(&self, micros: u64) -> Instant {
        self.origin + Duration::from_micros(micros)
    }

    fn deadline_us(&self) -> u64 {
        self.last_seen + (u64::from(self.interval_ms) + u64::from(self.timeout_ms)) * 1000
    }

    /// The instant after which, with nothing inbound, the peer counts as dead.
    pub fn deadline(&self) -> Instant {
        self.instant(self.deadline_us())
    }

    /// When [`Heartbeat::poll`] will next call for something (a ping, or the peer's death),
    /// without deciding anything: for an owner that sleeps, so that it never consumes a ping
    /// it will not send.
    pub fn next_due(&self) -> Instant {
        match self.quiet_until_us() {
            Some(until) => self.instant(until),
            None => self.instant(self.next_ping.min(self.deadline_us())),
        }
    }

    /// When the latest frame arrived (or the connection opened).
    pub fn last_seen(&self) -> Instant {
        self.instant(self.last_seen)
    }

    /// Any frame arrived: data, ping, pong or close.
    pub fn on_inbound(&mut self, now: Instant) {
        self.last_seen = self.last_seen.max(self.micros(now));
    }

    /// A pong arrived: proof of life, and the round trip of the outstanding ping.
    /// Returns the round-trip time when a ping was outstanding.
    pub fn on_pong(&mut self, now: Instant) -> Option<Duration> {
        self.on_inbound(now);
        if self.ping_sent_at == NONE {
            return None;
        }
        let sent = std::mem::replace(&mut self.ping_sent_at, NONE);
        let rtt = self.micros(now).saturating_sub(sent);
        self.last_rtt_us = rtt.min(u64::from(NO_RTT - 1)) as u32;
        Some(Duration::from_micros(rtt))
    }

    /// Decide what to do at `now`. Call on every wake-up; after `SendPing` call again.
    pub fn poll(&mut self, now: Instant) -> Action {
        let now_us = self.micros(now);
        if let Some(until) = self.quiet_until_us() {
            if now_us >= until {
                return Action::QuietOver;
            }
            return Action::Wait(self.instant(until));
        }
        if now_us >= self.deadline_us() {
            return Action::PeerDead;
        }
        if now_us >= self.next_ping {
            // Catch up without a burst if the owner was late (e.g. a suspended laptop).
            let step = u64::from(self.interval_ms) * 1000;
            self.next_ping += (now_us - self.next_ping) / step * step + step;
            self.ping_sent_at = now_us;
            return Action::SendPing;
        }
        Action::Wait(self.instant(self.next_ping.min(self.deadline_us())))
    }

    pub fn last_rtt(&self) -> Option<Duration> {
        (self.last_rtt_us != NO_RTT).then(|| Duration::from_micros(u64::from(self.last_rtt_us)))
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.timeout_ms))
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
    fn a_quiet_spell_holds_pings_and_death_then_ends() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(50), t0);
        hb.quiet(t0 + ms(10), ms(1000));
        assert_eq!(hb.poll(t0 + ms(100)), Action::Wait(t0 + ms(1010)), "no ping");
        assert_eq!(hb.poll(t0 + ms(500)), Action::Wait(t0 + ms(1010)), "silence is agreed");
        assert_eq!(hb.next_due(), t0 + ms(1010));
        assert_eq!(hb.poll(t0 + ms(1010)), Action::QuietOver);
        assert_eq!(std::mem::size_of::<Heartbeat>(), 56, "one per connection: keep it compact");
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
    fn state_stays_small() {
        // One per server connection: see decision 0007.
        assert!(std::mem::size_of::<Heartbeat>() <= 56);
    }

    #[test]
    fn late_wakeup_sends_one_ping_not_a_burst() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(ms(100), ms(10_000), t0);
        assert_eq!(hb.poll(t0 + ms(550)), Action::SendPing);
        assert_eq!(hb.poll(t0 + ms(550)), Action::Wait(t0 + ms(600)));
    }
}
