//! The hub: which connection is subscribed to which channel on this node, and local fan-out.
//!
//! Channels are spread over shards, each behind a std `Mutex` (held only for map operations and
//! non-blocking `try_send`s, never across an `.await`). A publication is encoded **once** per
//! protocol mode and handed to each subscriber as a cheap clone of the same bytes. Offsets are
//! assigned under the shard lock, so per-channel order is the order subscribers see.
//!
//! Delivery never blocks the publisher: a subscriber whose bounded queue is full is flagged as a
//! slow consumer and its connection task closes it (4001).

use crate::metrics::Metrics;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tether_core::codec;
use tether_core::protocol::ServerMessage;
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Identifies a connection within this process.
pub type ConnId = u64;

/// How a connection wants publications rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `tether.v1.json`: `{"type":"publication",...}` objects.
    Json,
    /// No subprotocol: the publication's data only.
    Raw,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Json => "json",
            Mode::Raw => "raw",
        }
    }
}

/// State shared between a connection task and the hub.
#[derive(Default)]
pub struct ConnSignals {
    /// Set when a delivery found the outbound queue full.
    pub overflowed: AtomicBool,
    pub wake: Notify,
}

/// The hub's handle on one subscribed connection.
#[derive(Clone)]
pub struct Subscriber {
    pub tx: mpsc::Sender<Message>,
    pub signals: Arc<ConnSignals>,
    pub mode: Mode,
}

struct Channel {
    next_offset: u64,
    subscribers: HashMap<ConnId, Subscriber>,
}

/// Result of a local fan-out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The publication's offset in its channel, when the channel had subscribers here.
    pub offset: Option<u64>,
    /// Subscribers the publication was queued to.
    pub delivered: u64,
}

/// One lock's worth of channels.
type Shard = Mutex<HashMap<Arc<str>, Channel>>;

pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let n = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) * 4)
            .next_power_of_two();
        Hub {
            shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            metrics,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        let i = self.hasher.hash_one(channel) as usize & (self.shards.len() - 1);
        &self.shards[i]
    }

    /// Add a subscriber. Returns false when it was already subscribed.
    pub fn subscribe(&self, channel: &str, conn: ConnId, sub: Subscriber) -> bool {
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let entry = shard
            .entry(Arc::from(channel))
            .or_insert_with(|| Channel { next_offset: 1, subscribers: HashMap::new() });
        let added = entry.subscribers.insert(conn, sub).is_none();
        if added {
            self.metrics.subscriptions.inc();
        }
        added
    }

    /// Remove a subscriber; drops the channel when it was the last one.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let Some(entry) = shard.get_mut(channel) else { return false };
        let removed = entry.subscribers.remove(&conn).is_some();
        if removed {
            self.metrics.subscriptions.dec();
        }
        if entry.subscribers.is_empty() {
            shard.remove(channel);
        }
        removed
    }

    /// Queue a publication to every local subscriber of `channel`.
    pub fn publish(&self, channel: &str, data: &RawValue) -> Delivery {
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let Some(entry) = shard.get_mut(channel) else {
            return Delivery { offset: None, delivered: 0 };
        };
        let offset = entry.next_offset;
        entry.next_offset += 1;
        // Encode once per mode, lazily; every subscriber gets a clone of the same bytes.
        let mut json: Option<Utf8Bytes> = None;
        let mut raw: Option<Utf8Bytes> = None;
        let mut delivered = 0;
        for sub in entry.subscribers.values() {
            let frame = match sub.mode {
                Mode::Json => json
                    .get_or_insert_with(|| {
                        codec::encode(&ServerMessage::Publication {
                            channel: channel.to_owned(),
                            offset,
                            data: data.to_owned(),
                        })
                        .into()
                    })
                    .clone(),
                Mode::Raw => raw.get_or_insert_with(|| codec::raw_text(data).into()).clone(),
            };
            match sub.tx.try_send(Message::Text(frame)) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.signals.overflowed.store(true, Ordering::Relaxed);
                    sub.signals.wake.notify_one();
                }
                // The connection is ending; it unsubscribes itself on the way out.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        Delivery { offset: Some(offset), delivered }
    }

    /// Whether `channel` has a subscriber on this node.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        self.shard(channel).lock().expect("hub shard lock").contains_key(channel)
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| s.lock().expect("hub shard lock").len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(mode: Mode, cap: usize) -> (Subscriber, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(cap);
        (Subscriber { tx, signals: Arc::default(), mode }, rx)
    }

    fn data(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    #[test]
    fn fans_out_once_encoded_per_mode_with_increasing_offsets() {
        let hub = Hub::new(Arc::default());
        let (a, mut ra) = sub(Mode::Json, 8);
        let (b, mut rb) = sub(Mode::Raw, 8);
        assert!(hub.subscribe("c", 1, a.clone()));
        assert!(!hub.subscribe("c", 1, a), "second subscribe is refused");
        hub.subscribe("c", 2, b);
        assert_eq!(hub.publish("c", &data(r#""hi""#)), Delivery { offset: Some(1), delivered: 2 });
        assert_eq!(hub.publish("c", &data("{}")).offset, Some(2));
        assert_eq!(
            ra.try_recv().unwrap().to_text().unwrap(),
            r#"{"type":"publication","channel":"c","offset":1,"data":"hi"}"#
        );
        assert_eq!(rb.try_recv().unwrap().to_text().unwrap(), "hi");
        assert_eq!(rb.try_recv().unwrap().to_text().unwrap(), "{}");
    }

    #[test]
    fn full_queue_flags_slow_consumer_without_blocking() {
        let hub = Hub::new(Arc::default());
        let (a, _ra) = sub(Mode::Raw, 1);
        let signals = a.signals.clone();
        hub.subscribe("c", 1, a);
        assert_eq!(hub.publish("c", &data("1")).delivered, 1);
        assert_eq!(hub.publish("c", &data("2")).delivered, 0);
        assert!(signals.overflowed.load(Ordering::Relaxed));
    }

    #[test]
    fn last_unsubscribe_drops_the_channel() {
        let hub = Hub::new(Arc::default());
        let (a, _ra) = sub(Mode::Raw, 1);
        hub.subscribe("c", 1, a);
        assert_eq!(hub.channel_count(), 1);
        assert!(hub.unsubscribe("c", 1));
        assert!(!hub.unsubscribe("c", 1));
        assert_eq!(hub.channel_count(), 0);
        assert_eq!(hub.publish("c", &data("1")), Delivery { offset: None, delivered: 0 });
    }
}
