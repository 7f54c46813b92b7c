//! What the client did, readable at any time without asking it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters that show what the supervisor did; cheap to read at any time.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Connect attempts started.
    pub connect_attempts: AtomicU64,
    /// Connections that opened.
    pub opened: AtomicU64,
    /// Sessions ended by the client's heartbeat watchdog.
    pub heartbeat_timeouts: AtomicU64,
    /// Supervisor tasks running: 1 while the client lives, never 2.
    pub supervisors: AtomicU64,
    /// The extensions the server agreed to on the latest connection ("" when none), e.g.
    /// permessage-deflate.
    pub extensions: std::sync::Mutex<String>,
}

impl ClientStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
