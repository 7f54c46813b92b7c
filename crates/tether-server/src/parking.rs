//! The parking lot: where idle connections wait without a WebSocket state or a timer of their own.
//!
//! A connection with nothing in flight for a moment parks (see `connection.rs`): it keeps its
//! socket and its mailbox (the outbound queue) and drops everything else. What it would
//! otherwise need a per-connection timer for is written into its mailbox as a deadline — for a
//! parked connection its next heartbeat, for an active one when to consider parking — and one
//! shared timer task scans the lot and signals the connections that are due. Shutdown signals
//! everyone through the lot too.
//!
//! A parked plain TCP socket also leaves tokio's reactor: tokio keeps a 256-byte, cache-line
//! aligned record per registered socket, so the lot watches parked sockets in an epoll set of
//! its own (through mio) and wakes their connection when one becomes readable. epoll's
//! bookkeeping lives in the kernel, not in the process. Registering a socket that already has
//! data reports it at once, so nothing that arrives while a socket moves is missed.
//!
//! The scan is O(connections) per tick; the tick is a fraction of the heartbeat timings (at the
//! default 25 s interval: every 500 ms, i.e. tens of microseconds of work per second for 15,000
//! connections), so deadlines are met within one tick.

use crate::mailbox::OutboundQueue;
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
    /// The epoll set for parked sockets (`None` if it could not be created: sockets then stay
    /// in tokio's reactor while parked, which works and costs more).
    registry: Option<mio::Registry>,
    /// Taken by the reactor task when it starts.
    poll: Mutex<Option<mio::Poll>>,
    /// The reactor task gave up on the epoll set: sockets stay in tokio's reactor from now on.
    reactor_lost: AtomicBool,
}

impl ParkingLot {
    /// `tick`: how often the shared timer scans for due connections.
    pub fn new(tick: Duration) -> Self {
        let poll = mio::Poll::new()
            .inspect_err(|e| tracing::warn!(error = %e, "no epoll set for parked sockets"))
            .ok();
        let registry = poll.as_ref().and_then(|p| p.registry().try_clone().ok());
        ParkingLot {
            mailboxes: Mutex::new(Slab::new()),
            origin: Instant::now(),
            tick: tick.max(Duration::from_millis(1)),
            timer_started: AtomicBool::new(false),
            registry,
            poll: Mutex::new(poll),
            reactor_lost: AtomicBool::new(false),
        }
    }

    /// The timer tick for heartbeat settings: a tenth of the shorter timing, 5 ms to 500 ms.
    pub fn tick_for(ping_interval: Duration, pong_timeout: Duration) -> Duration {
        (ping_interval.min(pong_timeout) / 10)
            .clamp(Duration::from_millis(5), Duration::from_millis(500))
    }

    pub fn register(&self, mailbox: Arc<OutboundQueue>) -> usize {
        crate::sync::lock(&self.mailboxes).insert(mailbox)
    }

    pub fn unregister(&self, key: usize) {
        crate::sync::lock(&self.mailboxes).try_remove(key);
    }

    /// Signal every connection (shutdown): each checks what happened.
    pub fn wake_all(&self) {
        for (_, mailbox) in crate::sync::lock(&self.mailboxes).iter() {
            mailbox.signal();
        }
    }

    /// `at` in the lot's ticks (milliseconds since it was created), for a mailbox's deadline.
    /// Rounded up, so that a connection is never woken before its deadline.
    pub fn ticks(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.origin);
        d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
    }

    /// Start the shared timer and the parked-socket reactor on first use (inside a tokio
    /// runtime). They stop when the lot is gone.
    pub fn ensure_tasks(self: &Arc<Self>) {
        if self.timer_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let lot = Arc::downgrade(self);
        tokio::spawn(run_timer(lot.clone(), self.tick));
        if let Some(poll) = crate::sync::lock(&self.poll).take() {
            tokio::spawn(run_reactor(lot, poll));
        }
    }

    /// Watch a parked socket; its connection's mailbox (slab `key`) is told when it is readable.
    /// An error means the socket must stay in tokio's reactor.
    pub fn watch(&self, key: usize, fd: std::os::fd::RawFd) -> std::io::Result<()> {
        let registry = self.registry.as_ref().ok_or(std::io::ErrorKind::Unsupported)?;
        let interest = mio::Interest::READABLE;
        registry.register(&mut mio::unix::SourceFd(&fd), mio::Token(key), interest)
    }

    /// Stop watching a socket that is becoming active again.
    pub fn unwatch(&self, fd: std::os::fd::RawFd) {
        if let Some(registry) = &self.registry {
            let _ = registry.deregister(&mut mio::unix::SourceFd(&fd));
        }
    }

    /// Whether parked sockets can leave tokio's reactor.
    pub fn has_reactor(&self) -> bool {
        self.registry.is_some() && !self.reactor_lost.load(Ordering::Acquire)
    }

    /// The epoll set cannot be polled: wake every connection, so that parked ones return to
    /// tokio's reactor (and stay there when they park again).
    fn lose_reactor(&self) {
        self.reactor_lost.store(true, Ordering::Release);
        // As if each socket had data: a parked connection wakes, finds nothing, and parks
        // again without leaving tokio's reactor.
        for (_, mailbox) in crate::sync::lock(&self.mailboxes).iter() {
            mailbox.set_socket_ready();
        }
    }

    fn socket_ready(&self, key: usize) {
        if let Some(mailbox) = crate::sync::lock(&self.mailboxes).get(key) {
            mailbox.set_socket_ready();
        }
    }

    /// Signal the connections whose deadline has passed: a parked one's heartbeat is due, an
    /// active one has been quiet for `park_after` and should consider parking.
    fn wake_due(&self) {
        let now = self.ticks(Instant::now());
        for (_, mailbox) in crate::sync::lock(&self.mailboxes).iter() {
            if mailbox.deadline() <= now {
                mailbox.signal();
            }
        }
    }
}

/// Wait on the lot's epoll set (itself registered in tokio's reactor) and pass its events on.
async fn run_reactor(lot: Weak<ParkingLot>, poll: mio::Poll) {
    const BATCH: usize = 1024;
    let mut fd = match crate::sys::register_epoll(poll) {
        Ok(fd) => fd,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the parked-socket epoll set; parked sockets stay in tokio's reactor");
            if let Some(lot) = lot.upgrade() {
                lot.lose_reactor();
            }
            return;
        }
    };
    let mut events = mio::Events::with_capacity(BATCH);
    let mut retry = Retry::default();
    loop {
        let Ok(mut guard) = fd.readable_mut().await else { return };
        if let Err(e) = guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // Not a reason to spin: the set stays readable, so wait before the next try, and
            // after a few failures in a row give the parked sockets back to tokio's reactor.
            guard.clear_ready();
            let Some(lot) = lot.upgrade() else { return };
            match retry.failed() {
                Some(wait) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "polling parked sockets failed");
                    drop(lot);
                    tokio::time::sleep(wait).await;
                }
                None => {
                    tracing::error!(error = %e, failures = MAX_POLL_FAILURES, "polling parked sockets keeps failing; parked sockets go back to tokio's reactor");
                    lot.lose_reactor();
                    return;
                }
            }
            continue;
        }
        retry = Retry::default();
        let Some(lot) = lot.upgrade() else { return };
        let n = events.iter().inspect(|e| lot.socket_ready(e.token().0)).count();
        if n < BATCH {
            guard.clear_ready(); // drained; a full batch means more may be waiting
        }
    }
}

/// Failed polls of the epoll set in a row before the lot gives up on it.
const MAX_POLL_FAILURES: u32 = 8;

/// The wait after each failed poll of the epoll set: 10 ms, doubling, up to a second; `None`
/// once [`MAX_POLL_FAILURES`] failed in a row.
#[derive(Default)]
struct Retry {
    failures: u32,
}

impl Retry {
    fn failed(&mut self) -> Option<Duration> {
        self.failures += 1;
        (self.failures < MAX_POLL_FAILURES)
            .then(|| Duration::from_millis(10 << self.failures.min(7)).min(Duration::from_secs(1)))
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
    fn failed_polls_wait_longer_each_time_and_end() {
        let mut retry = Retry::default();
        let waits: Vec<_> = std::iter::from_fn(|| retry.failed()).take(100).collect();
        assert_eq!(waits.len() as u32, MAX_POLL_FAILURES - 1, "bounded");
        assert_eq!(waits[0], Duration::from_millis(20));
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
    }

    #[test]
    fn tick_follows_the_heartbeat_settings() {
        let t = ParkingLot::tick_for(Duration::from_secs(25), Duration::from_secs(20));
        assert_eq!(t, Duration::from_millis(500));
        let t = ParkingLot::tick_for(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(t, Duration::from_millis(10));
    }
}
