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
//! queue is full is flagged as a slow consumer and its connection task closes it (1013, "slow consumer").

pub use crate::mailbox::{Delivery, Outbound, OutboundQueue, PushError};
use crate::metrics::Metrics;
use bytes::Bytes;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_core::codec;
use tether_core::protocol::ServerMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Utf8Bytes;

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
    /// Whether subscribers that negotiated permessage-deflate get it compressed (compression
    /// on, the channel matches, the message is big enough)...
    compress: bool,
    /// ...and the compressed frame, built by the first such subscriber's delivery and shared by
    /// all of them (no context takeover makes it the same bytes for everyone). `None` inside:
    /// compressing did not make it smaller.
    deflated: std::sync::OnceLock<Option<Bytes>>,
}

impl Published {
    /// Frame `text` once for all subscribers.
    pub fn new(text: Utf8Bytes, channel: Arc<str>, epoch: Arc<str>, offset: u64) -> Self {
        Self::with_compression(text, channel, epoch, offset, false)
    }

    /// As [`Published::new`], compressed for deflate subscribers when `compress`.
    pub fn with_compression(
        text: Utf8Bytes,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        compress: bool,
    ) -> Self {
        let (frame, wire) = if text.len() <= crate::connection::FRAGMENT {
            let (wire, start) = text_frame(text.as_bytes());
            // The text shares the frame's allocation; it was UTF-8 before the copy.
            match Utf8Bytes::try_from(wire.slice(start..)) {
                Ok(frame) => (frame, Some(wire)),
                Err(_) => (text, None),
            }
        } else {
            (text, None)
        };
        let deflated = std::sync::OnceLock::new();
        Published { frame, wire, channel, epoch, offset, compress, deflated }
    }

    /// Whether a compressed frame was built (and was smaller than the plain one).
    pub fn is_compressed(&self) -> bool {
        self.deflated.get().is_some_and(|d| d.is_some())
    }

    /// The bytes to write for a subscriber, as one frame: compressed when it negotiated
    /// permessage-deflate (`deflate`) and compression applies; `None` when the message goes out
    /// through the WebSocket layer instead (large and not compressed).
    pub fn wire_for(&self, deflate: bool) -> Option<&[u8]> {
        if deflate && self.compress {
            let compressed = self.deflated.get_or_init(|| {
                let frame =
                    tether_core::permessage_deflate::compressed_text_frame(self.frame.as_bytes());
                (frame.len() < self.frame.len()).then(|| Bytes::from(frame))
            });
            if let Some(frame) = compressed {
                return Some(frame);
            }
        }
        self.wire.as_deref()
    }
}

/// `text` as one complete, unmasked WebSocket text frame (framing by tungstenite's
/// `FrameHeader`), and where the text starts in it.
pub fn text_frame(text: &[u8]) -> (Bytes, usize) {
    let header = FrameHeader { opcode: OpCode::Data(Data::Text), ..FrameHeader::default() };
    let len = text.len() as u64;
    let mut wire = Vec::with_capacity(header.len(len) + text.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut wire);
    let start = wire.len();
    wire.extend_from_slice(text);
    (Bytes::from(wire), start)
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
type Shard = Mutex<HashMap<Arc<str>, Channel>>;

/// A channel's local subscribers, and how its publications reach them.
struct Channel {
    /// The map's key, for tagging publications (connections match it by pointer).
    name: Arc<str>,
    subscribers: HashMap<ConnId, Subscriber>,
    pace: Pace,
}

impl std::ops::Deref for Channel {
    type Target = HashMap<ConnId, Subscriber>;
    fn deref(&self) -> &Self::Target {
        &self.subscribers
    }
}

impl std::ops::DerefMut for Channel {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.subscribers
    }
}

/// Direct delivery (the publisher writes to every ready socket itself) is the cheapest per
/// delivery, but writes each publication on its own. When publications on a channel come
/// faster than that, connection tasks gathering several per write keep up where direct writes
/// cannot (measured: 5,000 subscribers × 100/s needs about four per write on one core). So a
/// publication goes direct only while the channel's publications come, on average, at least
/// twice as far apart as a direct fan-out to its subscribers is expected to take: direct
/// fan-out then uses at most half a core.
/// - Averages, not the last gap or the last fan-out: on a saturated server publications are
///   handled in bursts with long gaps between them, and one slow fan-out (a page fault, a
///   preemption) must not switch a channel to queued (an outlier counts as twice the average).
/// - A queued fan-out still writes to its first `SAMPLE` subscribers directly, so the estimate
///   keeps following the machine (a whole direct fan-out as a probe stalls a busy channel for
///   tens of milliseconds: measured, p99 at 5,000 × 100/s went from 130 to 240 ms).
#[derive(Default)]
struct Pace {
    last: Option<Instant>,
    /// Moving average of the time between publications (weight 1/8 for the newest).
    spacing: Option<Duration>,
    /// Moving average of the time per direct write (weight 1/4 for the newest).
    per_subscriber: Duration,
}

/// Subscribers written to directly by a queued fan-out, to measure (see [`Pace`]).
const SAMPLE: usize = 32;

impl Pace {
    /// Note a publication to `subscribers` at `now`; whether it may go direct.
    fn publication(&mut self, now: Instant, subscribers: usize) -> bool {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last);
            self.spacing = Some(match self.spacing {
                None => gap,
                Some(avg) => (avg * 7 + gap) / 8,
            });
        }
        self.last = Some(now);
        let expected = self.per_subscriber * u32::try_from(subscribers).unwrap_or(u32::MAX);
        self.spacing.is_none_or(|avg| avg >= expected * 2)
    }

    /// Direct delivery to some subscribers took `took`, `written` of them written directly
    /// (the others were queued: not ready, or busy writing).
    fn direct_took(&mut self, took: Duration, written: u64) {
        if written == 0 {
            return;
        }
        let sample = took / u32::try_from(written).unwrap_or(u32::MAX);
        self.per_subscriber = if self.per_subscriber.is_zero() {
            sample
        } else {
            // An outlier counts as at most twice the estimate: a lasting slowdown still raises
            // it within a few fan-outs.
            (self.per_subscriber * 3 + sample.min(self.per_subscriber * 2)) / 4
        };
    }
}

pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// Whether publishers may write to ready sockets themselves (see `mailbox`).
    direct: bool,
    /// permessage-deflate for publications: `None` off; else (minimum size, channel patterns).
    compression: Option<(usize, Vec<tether_core::channel::ChannelPattern>)>,
}

impl Hub {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let n = (std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) * 4)
            .next_power_of_two();
        Hub {
            shards: (0..n).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            metrics,
            direct: true,
            compression: None,
        }
    }

    /// Compress publications of at least `min_size` bytes on channels matching `patterns` for
    /// subscribers that negotiated permessage-deflate.
    pub fn compression(
        mut self,
        min_size: usize,
        patterns: Vec<tether_core::channel::ChannelPattern>,
    ) -> Self {
        self.compression = Some((min_size, patterns));
        self
    }

    /// Turn direct delivery (publishers writing to ready sockets) on or off; on by default.
    pub fn direct_delivery(mut self, on: bool) -> Self {
        self.direct = on;
        self
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
        let added = shard
            .entry(key.clone())
            .or_insert_with(|| Channel {
                name: key.clone(),
                subscribers: HashMap::new(),
                pace: Pace::default(),
            })
            .insert(conn, sub)
            .is_none();
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
        let mut shard = self.shard(channel).lock().expect("hub shard lock");
        let Some(Channel { name, subscribers, pace }) = shard.get_mut(channel) else { return 0 };
        let started = Instant::now();
        let all_direct = pace.publication(started, subscribers.len()) && self.direct;
        // Queued fan-outs still send to a few subscribers directly, to keep measuring.
        let sample = if self.direct { SAMPLE } else { 0 };
        let mut sampled = None;
        // Encode once per mode, lazily; every subscriber gets a reference to the same one.
        let mut json: Option<Arc<Published>> = None;
        let mut raw: Option<Arc<Published>> = None;
        let compressible = |text: &Utf8Bytes| {
            self.compression.as_ref().is_some_and(|(min, patterns)| {
                text.len() >= *min && tether_core::channel::any_matches(patterns, channel)
            })
        };
        let (mut delivered, mut written, mut written_bytes, mut dropped) = (0, 0, 0, 0);
        for (i, sub) in subscribers.values().enumerate() {
            if i == sample && !all_direct {
                sampled = Some((started.elapsed(), written));
            }
            let direct = all_direct || i < sample;
            let slot = match sub.mode {
                Mode::Json => &mut json,
                Mode::Raw => &mut raw,
            };
            let publication = slot
                .get_or_insert_with(|| {
                    let text = render(sub.mode, channel, epoch, offset, data);
                    let compress = compressible(&text);
                    Arc::new(Published::with_compression(
                        text,
                        name.clone(),
                        epoch.clone(),
                        offset,
                        compress,
                    ))
                })
                .clone();
            match sub.queue.deliver(publication, direct) {
                Ok(Delivery::Queued) => delivered += 1,
                Ok(Delivery::Written(bytes)) => {
                    delivered += 1;
                    written += 1;
                    written_bytes += bytes as u64;
                }
                Ok(Delivery::Skipped) => {}
                // Flagged and woken by `push`: the connection closes as a slow consumer.
                // Closed: the connection is ending; it unsubscribes itself on the way out.
                Err(PushError::Full | PushError::Closed) => dropped += 1,
            }
        }
        match sampled {
            _ if all_direct => pace.direct_took(started.elapsed(), written),
            Some((took, written)) => pace.direct_took(took, written),
            None => {}
        }
        let m = &self.metrics;
        let compressed = [&json, &raw].into_iter().flatten().filter(|p| p.is_compressed()).count();
        m.publications_compressed.inc_by(compressed as u64);
        m.deliveries.inc_by(delivered);
        m.deliveries_dropped.inc_by(dropped);
        m.direct_deliveries.inc_by(written);
        m.messages_out.inc_by(written);
        m.bytes_out.inc_by(written_bytes);
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

    /// Publications every `every` to 5,000 subscribers, each direct write taking `cost`; how
    /// many of `n` went direct (queued ones write to `SAMPLE` subscribers directly).
    fn paced(pace: &mut Pace, start: &mut Instant, every: Duration, cost: Duration, n: u32) -> u32 {
        let mut direct = 0;
        for _ in 0..n {
            *start += every;
            if pace.publication(*start, 5000) {
                pace.direct_took(cost * 5000, 5000);
                direct += 1;
            } else {
                pace.direct_took(cost * SAMPLE as u32, SAMPLE as u64);
            }
        }
        direct
    }

    #[test]
    fn pace_goes_direct_when_publications_are_sparse_and_queued_when_dense() {
        let (mut pace, mut t) = (Pace::default(), Instant::now());
        let (fast, slow) = (Duration::from_micros(6), Duration::from_micros(40));
        let (sparse, dense) = (Duration::from_millis(100), Duration::from_millis(10));
        // 10/s with 30 ms fan-outs: direct throughout.
        assert_eq!(paced(&mut pace, &mut t, sparse, fast, 50), 50);
        // 100/s: queued once the average spacing has followed (a few dozen publications).
        paced(&mut pace, &mut t, dense, fast, 50);
        assert_eq!(paced(&mut pace, &mut t, dense, fast, 1000), 0);
        // Back to 10/s: direct again.
        paced(&mut pace, &mut t, sparse, fast, 50);
        assert_eq!(paced(&mut pace, &mut t, sparse, fast, 100), 100);
        // One slow fan-out does not switch the channel to queued.
        paced(&mut pace, &mut t, sparse, slow, 1);
        assert_eq!(paced(&mut pace, &mut t, sparse, fast, 100), 100, "after one slow fan-out");
        // A slower machine does, and the samples bring it back once writes are fast again.
        paced(&mut pace, &mut t, sparse, slow, 20);
        assert_eq!(paced(&mut pace, &mut t, sparse, slow, 10), 0);
        paced(&mut pace, &mut t, sparse, fast, 20);
        assert_eq!(paced(&mut pace, &mut t, sparse, fast, 100), 100);
    }

    /// A subscriber and its queue (the test plays the connection's side).
    struct Rx(Arc<OutboundQueue>);

    impl Rx {
        fn try_recv(&mut self) -> Option<Outbound> {
            self.0.pop()
        }
    }

    fn sub(mode: Mode, cap: usize) -> (Subscriber, Rx) {
        let queue = Arc::new(OutboundQueue::new(cap, 1 << 20));
        (Subscriber { queue: queue.clone(), mode }, Rx(queue))
    }

    fn data(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Publication(p) | Outbound::Admitted { publication: p, .. } => {
                p.frame.to_string()
            }
            Outbound::Reply(m) => m.into_text().unwrap().to_string(),
        }
    }

    fn position(o: &Outbound) -> Option<(&str, &str, u64)> {
        match o {
            Outbound::Publication(p) | Outbound::Admitted { publication: p, .. } => {
                Some((&*p.channel, &*p.epoch, p.offset))
            }
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
