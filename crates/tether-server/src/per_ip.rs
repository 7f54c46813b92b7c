//! Limits per client: open connections and handshakes per second. One script must not take
//! every connection slot, nor make the server spend its time on handshakes.
//!
//! A client is an IPv4 address, or an IPv6 network of `ipv6_prefix` bits (one host usually
//! holds a whole /64 and can use a new address for every connection). Loopback addresses are
//! exempt unless `limit_loopback` is set: behind a reverse proxy on the same host every client
//! comes from 127.0.0.1, and tests and benchmarks connect thousands of clients from there.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use tether_core::rate::TokenBucket;

/// Clients remembered at most. A full table never refuses a new client: it first forgets the
/// clients that have nothing open (their rate history), and beyond that admits untracked.
const MAX_CLIENTS: usize = 100_000;

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
}

pub struct PerIp {
    entries: Mutex<HashMap<IpAddr, Entry>>,
    capacity: usize,
    max_connections: u32,
    rate: f32,
    burst: f32,
    limit_loopback: bool,
    ipv6_prefix: u8,
    /// Clients forgotten early to make room (see [`MAX_CLIENTS`]).
    evictions: prometheus_client::metrics::counter::Counter,
}

impl PerIp {
    /// `max_connections` 0 and `rate` 0 each mean unlimited.
    pub fn new(max_connections: usize, rate: u32, limit_loopback: bool, ipv6_prefix: u8) -> Self {
        PerIp {
            entries: Mutex::new(HashMap::new()),
            capacity: MAX_CLIENTS,
            max_connections: u32::try_from(max_connections).unwrap_or(u32::MAX),
            rate: rate as f32,
            // A page that opens a few tabs at once must not be refused: twice a second's worth.
            burst: (rate as f32 * 2.0).max(1.0),
            limit_loopback,
            ipv6_prefix: ipv6_prefix.min(128),
            evictions: Default::default(),
        }
    }

    /// Count evictions in this metric.
    pub fn counting_evictions(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.evictions = counter;
        self
    }

    #[cfg(test)]
    fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The client an address belongs to: IPv4 addresses (also IPv4-mapped IPv6 ones) as they
    /// are, IPv6 addresses cut to their network.
    pub fn client_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6);
                    let mask =
                        u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(bits & mask))
                }
            },
        }
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        (self.max_connections == 0 && self.rate == 0.0)
            || (ip.is_loopback() && !self.limit_loopback)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        crate::sync::lock(&self.entries)
    }

    /// Count a handshake from `ip` at `now_ms`; on success one connection is open for it until
    /// [`PerIp::release`].
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refused> {
        if self.exempt(ip) {
            return Ok(());
        }
        let client = self.client_of(ip);
        let mut entries = self.lock();
        if !entries.contains_key(&client) && entries.len() >= self.capacity {
            self.make_room(&mut entries, now_ms);
            if entries.len() >= self.capacity {
                // Every remembered client has a connection open: more than the table holds
                // are open (max_connections above it). Admit without counting.
                return Ok(());
            }
        }
        let entry = entries.entry(client).or_insert_with(|| Entry {
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
        let client = self.client_of(ip);
        let mut entries = self.lock();
        if let Some(entry) = entries.get_mut(&client) {
            entry.open = entry.open.saturating_sub(1);
            if entry.open == 0 && entry.handshakes.is_full(now_ms, self.rate, self.burst) {
                entries.remove(&client);
            }
        }
    }

    /// Forget clients with nothing open and a full handshake bucket (nothing to remember).
    pub fn sweep_now(&self, now_ms: u64) {
        let mut entries = self.lock();
        self.sweep(&mut entries, now_ms);
    }

    fn sweep(&self, entries: &mut HashMap<IpAddr, Entry>, now_ms: u64) {
        entries.retain(|_, e| e.open > 0 || !e.handshakes.is_full(now_ms, self.rate, self.burst));
    }

    /// The table is full: forget what needs no remembering, then the rate history of clients
    /// with nothing open (a flood from many addresses must not lock new clients out; the cost
    /// is that those addresses' handshake rates start afresh).
    fn make_room(&self, entries: &mut HashMap<IpAddr, Entry>, now_ms: u64) {
        self.sweep(entries, now_ms);
        if entries.len() >= self.capacity {
            let before = entries.len();
            entries.retain(|_, e| e.open > 0);
            self.evictions.inc_by((before - entries.len()) as u64);
        }
    }

    /// Clients currently remembered.
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
        let limits = PerIp::new(2, 0, false, 64);
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
        let limits = PerIp::new(0, 5, false, 64); // burst 10
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
        let exempt = PerIp::new(1, 1, false, 64);
        assert!((0..10).all(|_| exempt.admit(local, 0).is_ok()));
        let limited = PerIp::new(1, 100, true, 64);
        assert_eq!(limited.admit(local, 0), Ok(()));
        assert_eq!(limited.admit(local, 0), Err(Refused::Connections));
    }

    #[test]
    fn ipv6_clients_are_limited_per_network() {
        let limits = PerIp::new(2, 0, false, 64);
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(limits.admit(a("2001:db8:1:2::1"), 0), Ok(()));
        assert_eq!(limits.admit(a("2001:db8:1:2:ffff::9"), 0), Ok(()));
        assert_eq!(
            limits.admit(a("2001:db8:1:2:abcd::7"), 0),
            Err(Refused::Connections),
            "a third address in the same /64 is the same client"
        );
        assert_eq!(limits.admit(a("2001:db8:1:3::1"), 0), Ok(()), "the next /64 is another");
        // An IPv4-mapped address is its IPv4 client.
        assert_eq!(limits.client_of(a("::ffff:192.0.2.1")), A);
        let per_address = PerIp::new(1, 0, false, 128);
        assert_eq!(per_address.admit(a("2001:db8::1"), 0), Ok(()));
        assert_eq!(per_address.admit(a("2001:db8::2"), 0), Ok(()));
    }

    #[test]
    fn a_full_table_does_not_lock_new_clients_out() {
        // Before: a handshake from a new address was refused while the table was full.
        let limits = PerIp::new(5, 1, false, 64).with_capacity(4);
        let ip = |n: u8| IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, n));
        // A flood from many addresses, each using up its handshake budget (burst 2).
        for n in 0..4 {
            assert_eq!(limits.admit(ip(n), 0), Ok(()));
            assert_eq!(limits.admit(ip(n), 0), Ok(()));
            limits.release(ip(n), 0);
            limits.release(ip(n), 0);
        }
        assert_eq!(limits.len(), 4, "remembered while their buckets refill");
        assert_eq!(limits.admit(ip(200), 0), Ok(()), "a new client gets in");
        assert_eq!(limits.len(), 1);
        // Clients with connections open are never forgotten: their limits still hold.
        let limits = PerIp::new(1, 0, false, 64).with_capacity(2);
        assert_eq!(limits.admit(ip(1), 0), Ok(()));
        assert_eq!(limits.admit(ip(2), 0), Ok(()));
        assert_eq!(limits.admit(ip(3), 0), Ok(()), "admitted untracked");
        assert_eq!(limits.admit(ip(1), 0), Err(Refused::Connections));
    }
}
