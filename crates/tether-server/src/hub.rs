//! The hub: which connection is subscribed to which channel on this node, and local fan-out.
//!
//! Channels are spread over shards, each behind a std `Mutex` (held only for map operations and
//! non-blocking `try_send`s, never across an `.await`). A publication is encoded **once** per
//! protocol mode and handed to each subscriber as a cheap clone of the same bytes, tagged with
//! its stream position so that the connection can drop what it already delivered (the seam
//! between a recovery replay and live traffic).
//!
//! Offsets are not assigned here: the broker assigns them, and calls [`Hub::publish`] in
//! offset order per channel. Delivery never blocks the publisher: a subscriber whose bounded
//! queue is full is flagged as a slow consumer and its connection task closes it (4001).

use crate::metrics::Metrics;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tether_core::codec;
use tether_core::protocol::ServerMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
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

/// A publication rendered for one protocol mode, with its place in its channel's stream.
/// Built once per publication and mode; every subscriber's queue holds an `Arc` of it.
#[derive(Debug)]
pub struct Published {
    /// The message's text.
    pub frame: Utf8Bytes,
    /// The whole WebSocket frame (header and text), when it goes out as one frame: server
    /// frames are not masked, so every subscriber can be sent the same bytes, gathered into one
    /// vectored write per batch. `None` for messages sent as fragments (see `connection`).
    pub wire: Option<Bytes>,
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
}

impl Published {
    /// Frame `text` once for all subscribers (framing by tungstenite's `FrameHeader`).
    pub fn new(text: Utf8Bytes, channel: Arc<str>, epoch: Arc<str>, offset: u64) -> Self {
        let (frame, wire) = if text.len() <= crate::connection::FRAGMENT {
            let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
            let len = text.len() as u64;
            let mut wire = Vec::with_capacity(header.len(len) + text.len());
            // Writing into a Vec cannot fail.
            let _ = header.format(len, &mut wire);
            let start = wire.len();
            wire.extend_from_slice(text.as_bytes());
            let wire = Bytes::from(wire);
            // The text shares the frame's allocation; it was UTF-8 before the copy.
            match Utf8Bytes::try_from(wire.slice(start..)) {
                Ok(frame) => (frame, Some(wire)),
                Err(_) => (text, None),
            }
        } else {
            (text, None)
        };
        Published { frame, wire, channel, epoch, offset }
    }
}

/// One item of a connection's outbound queue.
pub enum Outbound {
    /// A reply or error for this connection.
    Reply(Message),
    /// A publication, shared with every other subscriber it went to.
    Publication(Arc<Published>),
}

/// A connection's mailbox: its bounded outbound queue, plus the signals the connection task
/// must wake up for (a delivery found the queue full; a parked connection's heartbeat is due).
/// Lighter than a tokio mpsc channel (which allocates a block of 32 slots per connection up
/// front): an idle queue holds no allocation at all, the memory a burst needed is released once
/// the queue drains, and a single waker slot serves both the running and the parked connection.
pub struct OutboundQueue {
    items: Mutex<VecDeque<Outbound>>,
    capacity: u32,
    closed: AtomicBool,
    /// Set when a delivery found the queue full: the connection closes as a slow consumer.
    overflowed: AtomicBool,
    /// Set by the parking lot's reactor: the parked connection's socket has something.
    socket_ready: AtomicBool,
    /// Set by the gateway (shutdown, resync): the connection must look at the gateway's state.
    signalled: AtomicBool,
    /// When the connection wants the lot's shared timer to signal it, in the lot's ticks:
    /// while parked, its next heartbeat; while active, when to consider parking.
    deadline: AtomicU64,
    waker: AtomicWaker,
}

/// Why a push was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    Full,
    Closed,
}

impl OutboundQueue {
    pub fn new(capacity: usize) -> Self {
        OutboundQueue {
            items: Mutex::new(VecDeque::new()),
            capacity: u32::try_from(capacity).unwrap_or(u32::MAX),
            closed: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            socket_ready: AtomicBool::new(false),
            signalled: AtomicBool::new(false),
            deadline: AtomicU64::new(u64::MAX),
            waker: AtomicWaker::new(),
        }
    }

    pub fn push(&self, item: Outbound) -> Result<(), PushError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(PushError::Closed);
        }
        {
            let mut items = self.items.lock().expect("outbound queue lock");
            if items.len() >= self.capacity as usize {
                drop(items);
                self.overflowed.store(true, Ordering::Release);
                self.waker.wake();
                return Err(PushError::Full);
            }
            items.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    pub fn pop(&self) -> Option<Outbound> {
        let mut items = self.items.lock().expect("outbound queue lock");
        let item = items.pop_front();
        if items.is_empty() && items.capacity() > 16 {
            items.shrink_to_fit();
        }
        item
    }

    pub fn is_empty(&self) -> bool {
        self.items.lock().expect("outbound queue lock").is_empty()
    }

    /// Whether a delivery was refused because the queue was full.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    /// Ready when there is something to do: an item, or an overflow. Registers the task's waker
    /// first, so a push racing this check is never missed.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        if self.overflowed() || !self.is_empty() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// The next item, waiting for one if the queue is empty; `None` when the connection was
    /// signalled (see [`OutboundQueue::signal`]) instead.
    pub async fn next(&self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            {
                let mut items = self.items.lock().expect("outbound queue lock");
                if let Some(item) = items.pop_front() {
                    if items.is_empty() && items.capacity() > 16 {
                        items.shrink_to_fit();
                    }
                    return Poll::Ready(Some(item));
                }
                // Registered under the lock: a push takes the lock after us, so its wake finds
                // this waker. One lock per poll instead of pop / register / pop.
                self.waker.register(cx.waker());
            }
            if self.signalled.swap(false, Ordering::AcqRel) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Wake the connection task and make a pending [`OutboundQueue::next`] return `None`, so
    /// that it looks at the gateway's state (shutdown, resync).
    pub fn signal(&self) {
        self.signalled.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// The parked socket became readable (or failed): wake the connection.
    pub(crate) fn set_socket_ready(&self) {
        self.socket_ready.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub(crate) fn socket_ready(&self) -> bool {
        self.socket_ready.load(Ordering::Acquire)
    }

    pub(crate) fn clear_socket_ready(&self) {
        self.socket_ready.store(false, Ordering::Release);
    }

    pub(crate) fn set_deadline(&self, ticks: u64) {
        self.deadline.store(ticks, Ordering::Relaxed);
    }

    pub(crate) fn deadline(&self) -> u64 {
        self.deadline.load(Ordering::Relaxed)
    }

    /// Refuse further pushes (the connection is ending).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }
}

/// The hub's handle on one subscribed connection.
#[derive(Clone)]
pub struct Subscriber {
    pub queue: Arc<OutboundQueue>,
    pub mode: Mode,
}

/// Render a publication for a mode (used for live fan-out and for recovery replays).
pub fn render(mode: Mode, channel: &str, epoch: &str, offset: u64, data: &RawValue) -> Utf8Bytes {
    match mode {
        Mode::Json => codec::encode(&ServerMessage::Publication {
            channel: channel.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            data: data.to_owned(),
        })
        .into(),
        Mode::Raw => codec::raw_text(data).into(),
    }
}

/// One lock's worth of channels → subscribers.
type Shard = Mutex<HashMap<Arc<str>, HashMap<ConnId, Subscriber>>>;

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

    /// Add a subscriber. Returns the channel's name as the hub holds it (the same `Arc` its
    /// publications are tagged with, so a connection can recognise them by pointer), or `None`
    /// when it was already subscribed.
    pub fn subscribe(&self, channel: &str, conn: ConnId, sub: Subscriber) -> Option<Arc<str>> {
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let key = match shard.get_key_value(channel) {
            Some((key, _)) => key.clone(),
            None => Arc::from(channel),
        };
        let added = shard.entry(key.clone()).or_default().insert(conn, sub).is_none();
        if !added {
            return None;
        }
        self.metrics.subscriptions.inc();
        Some(key)
    }

    /// Remove a subscriber; drops the channel when it was the last one.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> bool {
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let Some(subscribers) = shard.get_mut(channel) else { return false };
        let removed = subscribers.remove(&conn).is_some();
        if removed {
            self.metrics.subscriptions.dec();
        }
        if subscribers.is_empty() {
            shard.remove(channel);
        }
        removed
    }

    /// Queue a publication to every local subscriber of `channel`; returns how many took it.
    /// Callers deliver in offset order per channel.
    pub fn publish(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: &RawValue) -> u64 {
        let shard = self.shard(channel).lock().expect("hub shard lock");
        let Some((name, subscribers)) = shard.get_key_value(channel) else { return 0 };
        // Encode once per mode, lazily; every subscriber gets a reference to the same one.
        let mut json: Option<Arc<Published>> = None;
        let mut raw: Option<Arc<Published>> = None;
        let mut delivered = 0;
        for sub in subscribers.values() {
            let slot = match sub.mode {
                Mode::Json => &mut json,
                Mode::Raw => &mut raw,
            };
            let publication = slot
                .get_or_insert_with(|| {
                    Arc::new(Published::new(
                        render(sub.mode, channel, epoch, offset, data),
                        name.clone(),
                        epoch.clone(),
                        offset,
                    ))
                })
                .clone();
            match sub.queue.push(Outbound::Publication(publication)) {
                Ok(()) => delivered += 1,
                // Flagged and woken by `push`: the connection closes as a slow consumer.
                Err(PushError::Full) => {}
                // The connection is ending; it unsubscribes itself on the way out.
                Err(PushError::Closed) => {}
            }
        }
        self.metrics.deliveries.inc_by(delivered);
        delivered
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.shard(channel).lock().expect("hub shard lock").get(channel).map_or(0, |s| s.len())
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

    /// A subscriber and its queue (the test plays the connection's side).
    struct Rx(Arc<OutboundQueue>);

    impl Rx {
        fn try_recv(&mut self) -> Option<Outbound> {
            self.0.pop()
        }
    }

    fn sub(mode: Mode, cap: usize) -> (Subscriber, Rx) {
        let queue = Arc::new(OutboundQueue::new(cap));
        (Subscriber { queue: queue.clone(), mode }, Rx(queue))
    }

    fn data(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Publication(p) => p.frame.to_string(),
            Outbound::Reply(m) => m.into_text().unwrap().to_string(),
        }
    }

    fn position(o: &Outbound) -> Option<(&str, &str, u64)> {
        match o {
            Outbound::Publication(p) => Some((&*p.channel, &*p.epoch, p.offset)),
            Outbound::Reply(_) => None,
        }
    }

    #[test]
    fn fans_out_once_encoded_per_mode_with_tags() {
        let hub = Hub::new(Arc::default());
        let epoch: Arc<str> = Arc::from("e1");
        let (a, mut ra) = sub(Mode::Json, 8);
        let (b, mut rb) = sub(Mode::Raw, 8);
        assert!(hub.subscribe("c", 1, a.clone()).is_some());
        assert!(hub.subscribe("c", 1, a).is_none(), "second subscribe is refused");
        hub.subscribe("c", 2, b);
        assert_eq!(hub.publish("c", &epoch, 1, &data(r#""hi""#)), 2);
        let first = ra.try_recv().unwrap();
        assert_eq!(position(&first), Some(("c", "e1", 1)));
        assert_eq!(
            text(first),
            r#"{"type":"publication","channel":"c","offset":1,"epoch":"e1","data":"hi"}"#
        );
        assert_eq!(text(rb.try_recv().unwrap()), "hi");
    }

    #[test]
    fn full_queue_flags_slow_consumer_without_blocking() {
        let hub = Hub::new(Arc::default());
        let epoch: Arc<str> = Arc::from("e1");
        let (a, _ra) = sub(Mode::Raw, 1);
        let queue = a.queue.clone();
        hub.subscribe("c", 1, a);
        assert_eq!(hub.publish("c", &epoch, 1, &data("1")), 1);
        assert_eq!(hub.publish("c", &epoch, 2, &data("2")), 0);
        assert!(queue.overflowed());
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
        assert_eq!(hub.publish("c", &Arc::from("e"), 1, &data("1")), 0);
    }
}
