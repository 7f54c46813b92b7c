//! Which connections on this node belong to which user (the JWT `sub`), and the orders
//! waiting for them (see `control`). A connection registers when its token names a user and
//! leaves when it ends; an order for a user is queued for each of that user's connections
//! here, and their mailboxes are flagged so that each task takes its orders and carries them
//! out itself.

use crate::control::{UserOrder, MAX_PENDING_ORDERS};
use crate::mailbox::OutboundQueue;
use crate::publication::ConnId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Entry {
    conn: ConnId,
    queue: Arc<OutboundQueue>,
    orders: Vec<Arc<UserOrder>>,
}

#[derive(Default)]
pub struct Users {
    map: Mutex<HashMap<Arc<str>, Vec<Entry>>>,
}

/// What [`Users::order`] did on this node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ordered {
    /// Connections the order was queued for...
    pub queued: usize,
    /// ...and connections that had [`MAX_PENDING_ORDERS`] waiting already (not queued).
    pub dropped: usize,
}

impl Users {
    /// Connection `conn` belongs to `user`.
    pub fn add(&self, user: &str, conn: ConnId, queue: Arc<OutboundQueue>) {
        let mut map = crate::sync::lock(&self.map);
        let entries = map.entry(Arc::from(user)).or_default();
        if !entries.iter().any(|e| e.conn == conn) {
            entries.push(Entry { conn, queue, orders: Vec::new() });
        }
    }

    /// Connection `conn` ended (or now belongs to someone else); its waiting orders go too.
    pub fn remove(&self, user: &str, conn: ConnId) {
        let mut map = crate::sync::lock(&self.map);
        if let Some(entries) = map.get_mut(user) {
            entries.retain(|e| e.conn != conn);
            if entries.is_empty() {
                map.remove(user);
            }
        }
    }

    /// Queue `order` for every connection of its user here and wake them.
    pub fn order(&self, order: UserOrder) -> Ordered {
        let order = Arc::new(order);
        let mut done = Ordered::default();
        let mut wake = Vec::new();
        {
            let mut map = crate::sync::lock(&self.map);
            for entry in map.get_mut(order.user.as_str()).into_iter().flatten() {
                if entry.orders.len() >= MAX_PENDING_ORDERS {
                    done.dropped += 1;
                    continue;
                }
                entry.orders.push(order.clone());
                wake.push(entry.queue.clone());
                done.queued += 1;
            }
        }
        // Outside the map's lock: the mailbox's is never taken under it.
        for queue in wake {
            queue.order();
        }
        done
    }

    /// The orders waiting for connection `conn` of `user`, oldest first.
    pub fn take(&self, user: &str, conn: ConnId) -> Vec<Arc<UserOrder>> {
        let mut map = crate::sync::lock(&self.map);
        map.get_mut(user)
            .and_then(|entries| entries.iter_mut().find(|e| e.conn == conn))
            .map(|e| std::mem::take(&mut e.orders))
            .unwrap_or_default()
    }

    /// Users with at least one connection here.
    pub fn user_count(&self) -> usize {
        crate::sync::lock(&self.map).len()
    }
}

impl super::Hub {
    /// Hand `order` to its user's connections here (see [`Users::order`]); returns how many
    /// took it.
    pub fn order(&self, order: UserOrder) -> usize {
        let done = self.users.order(order);
        self.metrics.user_orders.inc_by(done.queued as u64);
        self.metrics.user_orders_dropped.inc_by(done.dropped as u64);
        done.queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Act;

    fn bye(user: &str) -> UserOrder {
        UserOrder { user: user.into(), act: Act::Disconnect { code: 4500, reason: "bye".into() } }
    }

    #[test]
    fn an_order_reaches_every_connection_of_its_user_and_only_them() {
        let users = Users::default();
        let q = || Arc::new(OutboundQueue::new(8, 1 << 20));
        let (a1, a2, b) = (q(), q(), q());
        users.add("ada", 1, a1.clone());
        users.add("ada", 2, a2.clone());
        users.add("bob", 3, b.clone());
        assert_eq!(users.order(bye("ada")), Ordered { queued: 2, dropped: 0 });
        assert!(a1.take_ordered() && a2.take_ordered() && !b.take_ordered());
        assert_eq!(users.take("ada", 1).len(), 1);
        assert!(users.take("ada", 1).is_empty(), "taken once");
        users.remove("ada", 2);
        assert!(users.take("ada", 2).is_empty());
        users.remove("ada", 1);
        assert_eq!(users.user_count(), 1);
        assert_eq!(users.order(bye("nobody")), Ordered::default());
    }

    #[test]
    fn orders_waiting_per_connection_are_bounded() {
        let users = Users::default();
        users.add("ada", 1, Arc::new(OutboundQueue::new(8, 1 << 20)));
        for _ in 0..MAX_PENDING_ORDERS {
            assert_eq!(users.order(bye("ada")).queued, 1);
        }
        assert_eq!(users.order(bye("ada")), Ordered { queued: 0, dropped: 1 });
        assert_eq!(users.take("ada", 1).len(), MAX_PENDING_ORDERS);
    }
}
