//! The parking lot: where idle connections wait without a WebSocket state or a timer of their own.
//!
//! A connection with nothing in flight for a moment parks (see `connection.rs`): it keeps its
//! socket and its mailbox (the outbound queue) and drops everything else. What it would
//! otherwise need a per-connection timer for — its next heartbeat — is written into its mailbox
//! as a deadline, and one shared timer task scans the lot and wakes the connections that are
//! due. Shutdown and a backplane resync wake everyone through the lot too.
//!
//! The scan is O(connections) per tick; the tick is a fraction of the heartbeat timings (at the
//! default 25 s interval: every 500 ms, i.e. tens of microseconds of work per second for 15,000
//! connections), so deadlines are met within one tick.

use crate::hub::OutboundQueue;
use slab::Slab;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

pub(crate) struct ParkingLot {
    /// Every open connection's mailbox.
    mailboxes: Mutex<Slab<Arc<OutboundQueue>>>,
    origin: Instant,
    tick: Duration,
    timer_started: AtomicBool,
}

impl ParkingLot {
    /// `tick`: how often the shared timer scans for due connections.
    pub fn new(tick: Duration) -> Self {
        ParkingLot {
            mailboxes: Mutex::new(Slab::new()),
            origin: Instant::now(),
            tick: tick.max(Duration::from_millis(1)),
            timer_started: AtomicBool::new(false),
        }
    }

    /// The timer tick for heartbeat settings: a tenth of the shorter timing, 5 ms to 500 ms.
    pub fn tick_for(ping_interval: Duration, pong_timeout: Duration) -> Duration {
        (ping_interval.min(pong_timeout) / 10)
            .clamp(Duration::from_millis(5), Duration::from_millis(500))
    }

    pub fn register(&self, mailbox: Arc<OutboundQueue>) -> usize {
        self.mailboxes.lock().expect("parking lot lock").insert(mailbox)
    }

    pub fn unregister(&self, key: usize) {
        self.mailboxes.lock().expect("parking lot lock").try_remove(key);
    }

    /// Wake every connection (shutdown, resync): each checks what happened.
    pub fn wake_all(&self) {
        for (_, mailbox) in self.mailboxes.lock().expect("parking lot lock").iter() {
            mailbox.wake();
        }
    }

    /// `at` in the lot's ticks (milliseconds since it was created), for a mailbox's deadline.
    /// Rounded up, so that a connection is never woken before its deadline.
    pub fn ticks(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin);
        d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// Start the shared timer on first use (inside a tokio runtime). It stops when the lot is gone.
    pub fn ensure_timer(self: &Arc<Self>) {
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let lot = Arc::downgrade(self);
        let tick = self.tick;
        tokio::spawn(run_timer(lot, tick));
    }

    /// Wake the connections whose deadline has passed.
    fn wake_due(&self) {
        let now = self.ticks(Instant::now());
        for (_, mailbox) in self.mailboxes.lock().expect("parking lot lock").iter() {
            if mailbox.deadline() <= now {
                mailbox.wake();
            }
        }
    }
}

async fn run_timer(lot: Weak<ParkingLot>, tick: Duration) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(lot) = lot.upgrade() else { return };
        lot.wake_due();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_round_up_so_nobody_wakes_early() {
        let lot = ParkingLot::new(Duration::from_millis(10));
        assert_eq!(lot.ticks(lot.origin), 0);
        assert_eq!(lot.ticks(lot.origin + Duration::from_micros(1500)), 2);
        assert_eq!(lot.ticks(lot.origin + Duration::from_millis(3)), 3);
    }

    #[test]
    fn tick_follows_the_heartbeat_settings() {
        let t = ParkingLot::tick_for(Duration::from_secs(25), Duration::from_secs(20));
        assert_eq!(t, Duration::from_millis(500));
        let t = ParkingLot::tick_for(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(t, Duration::from_millis(10));
    }
}
