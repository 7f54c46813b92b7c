//! TCP connections that have not become WebSockets yet (TLS handshake, HTTP request head, or
//! plain HTTP requests), capped at `max_pending_handshakes`. At the cap the *oldest* is closed
//! to make room: a slowloris client holds its connections open by sending its request slowly,
//! so its connections are the old ones, and a client that sends its request promptly always
//! gets in (with `handshake_timeout` ending each slow one anyway).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub(crate) struct Pending {
    live: Mutex<Live>,
    max: usize,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Live {
    next_id: u64,
    /// By age: the first is the oldest.
    connections: BTreeMap<u64, CancellationToken>,
    /// When the last "cap reached" line was logged (one a minute at most).
    last_logged: Option<std::time::Instant>,
}

/// One pending connection; dropping it (the connection upgraded or ended) gives its place back.
pub(crate) struct Place {
    id: u64,
    evicted: CancellationToken,
    pending: Arc<Pending>,
}

impl Place {
    /// Cancelled when the connection was closed to make room for a newer one.
    pub fn eviction(&self) -> CancellationToken {
        self.evicted.clone()
    }
}

/// A connection's place, for the request it carries: a response that will stream for long
/// (SSE) gives it back once it is established, as an upgrade does, so that long-lived streams
/// neither count as unfinished handshakes nor get evicted as the oldest of them.
#[derive(Clone)]
pub(crate) struct Held(pub Arc<std::sync::Mutex<Option<Place>>>);

impl Held {
    /// The connection is established: no longer pending.
    pub fn settle(&self) {
        drop(crate::sync::lock(&self.0).take());
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut live = crate::sync::lock(&self.pending.live);
        live.connections.remove(&self.id);
        self.pending.metrics.pending_handshakes.set(live.connections.len() as i64);
    }
}

impl Pending {
    pub fn new(max: usize, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(Pending { live: Mutex::default(), max: max.max(1), metrics })
    }

    /// Take a place for a just-accepted connection, closing the oldest one when at the cap.
    pub fn enter(self: &Arc<Self>) -> Place {
        let mut live = crate::sync::lock(&self.live);
        while live.connections.len() >= self.max {
            let Some((_, oldest)) = live.connections.pop_first() else { break };
            oldest.cancel();
            self.metrics.pending_handshakes_evicted.inc();
            let now = std::time::Instant::now();
            if live.last_logged.is_none_or(|t| now.duration_since(t).as_secs() >= 60) {
                live.last_logged = Some(now);
                tracing::warn!(
                    max_pending_handshakes = self.max,
                    "max_pending_handshakes reached: closing the oldest unfinished connections \
                     (slow or stalled clients; see tether_pending_handshakes_evicted_total)"
                );
            }
        }
        let id = live.next_id;
        live.next_id += 1;
        let evicted = CancellationToken::new();
        live.connections.insert(id, evicted.clone());
        self.metrics.pending_handshakes.set(live.connections.len() as i64);
        Place { id, evicted, pending: self.clone() }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        crate::sync::lock(&self.live).connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_gives_way_and_places_are_given_back() {
        let pending = Pending::new(2, Arc::new(crate::metrics::Metrics::new()));
        let a = pending.enter();
        let b = pending.enter();
        assert_eq!(pending.len(), 2);
        let c = pending.enter();
        assert!(a.evicted.is_cancelled(), "the oldest was closed");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert_eq!(pending.len(), 2);
        drop(a); // an evicted place's drop changes nothing
        assert_eq!(pending.len(), 2);
        drop(b);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.metrics.pending_handshakes_evicted.get(), 1);
        drop(c);
        assert_eq!(pending.metrics.pending_handshakes.get(), 0);
    }
}
