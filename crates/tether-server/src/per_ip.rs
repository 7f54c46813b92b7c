//! Limits per client address: open connections and handshakes per second. One script must not
//! take every connection slot, nor make the server spend its time on handshakes.
//!
//! Loopback addresses are exempt unless `limit_loopback` is set: behind a reverse proxy on the
//! same host every client comes from 127.0.0.1, and tests and benchmarks connect thousands of
//! clients from there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use tether_core::rate::TokenBucket;

/// Addresses remembered at most (open connections, or handshakes recent enough to matter).
/// Beyond it, a handshake from a new address is refused until entries age out.
const MAX_ADDRESSES: usize = 100_000;

struct Entry {
    open: u32,
    handshakes: TokenBucket,
}

/// Why a handshake was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// More handshakes per second than `handshake_rate_per_ip`.
    Rate,
    /// `max_connections_per_ip` already open.
    Connections,
    /// The table of addresses is full (a flood from many addresses).
    Addresses,
}

pub struct PerIp {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    max_connections: u32,
    rate: f32,
    burst: f32,
    limit_loopback: bool,
}

impl PerIp {
    /// `max_connections` 0 and `rate` 0 each mean unlimited.
    pub fn new(max_connections: usize, rate: u32, limit_loopback: bool) -> Self {
        PerIp {
            entries: Mutex::new(HashMap::new()),
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            rate: rate as f32,
            // A page that opens a few tabs at once must not be refused: twice a second's worth.
            burst: (rate as f32 * 2.0).max(1.0),
            limit_loopback,
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        (self.max_connections == 0 && self.rate == 0.0)
            || (ip.is_loopback() && !self.limit_loopback)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a handshake from `ip` at `now_ms`; on success one connection is open for it until
    /// [`PerIp::release`].
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refused> {
        if self.exempt(ip) {
            return Ok(());
        }
        let mut entries = self.lock();
        if !entries.contains_key(&ip) && entries.len() >= MAX_ADDRESSES {
            self.sweep(&mut entries, now_ms);
            if entries.len() >= MAX_ADDRESSES {
                return Err(Refused::Addresses);
            }
        }
        let entry = entries.entry(ip).or_insert_with(|| Entry {
            open: 0,
            handshakes: TokenBucket::full(self.burst, now_ms),
        });
        if self.rate > 0.0 && !entry.handshakes.take(now_ms, self.rate, self.burst) {
            return Err(Refused::Rate);
        }
        if self.max_connections > 0 && entry.open >= self.max_connections {
            return Err(Refused::Connections);
        }
        entry.open += 1;
        Ok(())
    }

    /// A connection from `ip` admitted earlier has ended.
    pub fn release(&self, ip: IpAddr, now_ms: u64) {
        if self.exempt(ip) {
            return;
        }
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&ip) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.handshakes.is_full(now_ms, self.rate, self.burst) {
                entries.remove(&ip);
            }
        }
    }

    /// Forget addresses with nothing open and a full handshake bucket (nothing to remember).
    pub fn sweep_now(&self, now_ms: u64) {
        let mut entries = self.lock();
        self.sweep(&mut entries, now_ms);
    }

    fn sweep(&self, entries: &mut HashMap<IpAddr, Entry>, now_ms: u64) {
        entries.retain(|_, e| e.open > 0 || !e.handshakes.is_full(now_ms, self.rate, self.burst));
    }

    /// Addresses currently remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn connections_per_address_are_capped_and_given_back() {
        let limits = PerIp::new(2, 0, false);
        assert_eq!(limits.admit(A, 0), Ok(()));
        assert_eq!(limits.admit(A, 0), Ok(()));
        assert_eq!(limits.admit(A, 0), Err(Refused::Connections));
        assert_eq!(limits.admit(B, 0), Ok(()), "another address is not affected");
        limits.release(A, 0);
        assert_eq!(limits.admit(A, 0), Ok(()));
        for ip in [A, A, B] {
            limits.release(ip, 0);
        }
        assert!(limits.is_empty(), "nothing left to remember");
    }

    #[test]
    fn handshakes_per_second_are_limited_then_forgotten() {
        let limits = PerIp::new(0, 5, false); // burst 10
        let admitted = (0..20).filter(|_| limits.admit(A, 1_000).is_ok()).count();
        assert_eq!(admitted, 10);
        assert_eq!(limits.admit(A, 1_100), Err(Refused::Rate));
        assert_eq!(limits.admit(A, 1_200), Ok(()), "one more after 200 ms at 5/s");
        for _ in 0..11 {
            limits.release(A, 1_200);
        }
        assert_eq!(limits.len(), 1, "remembered while the bucket refills");
        limits.sweep_now(10_000);
        assert!(limits.is_empty());
    }

    #[test]
    fn loopback_is_exempt_unless_asked() {
        let local = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let exempt = PerIp::new(1, 1, false);
        assert!((0..10).all(|_| exempt.admit(local, 0).is_ok()));
        let limited = PerIp::new(1, 100, true);
        assert_eq!(limited.admit(local, 0), Ok(()));
        assert_eq!(limited.admit(local, 0), Err(Refused::Connections));
    }
}
