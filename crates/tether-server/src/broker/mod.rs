//! The broker: where publications get their stream position and how they reach every node.
//!
//! A gateway publishes through its [`Broker`]: the broker assigns the offset (and keeps history
//! when the channel's policy asks for it) and gets the publication to every node, whose [`Hub`]
//! fans it out locally, in offset order per channel. [`Broker::history`] answers a recovering
//! subscribe. [`MemoryBroker`] is the single-node implementation; a Redis backplane implements
//! the same trait for several nodes.

pub mod redis;
mod redis_scripts;

use crate::config::HistoryRule;
use crate::hub::Hub;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tether_core::channel::any_matches;
use tether_core::protocol::StreamPosition;
use tether_core::stream::{HistoryPolicy, Recovery, Stream};

/// The broker could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The backplane cannot be reached now. Retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A configured limit is reached (e.g. `max_channels`); retrying soon will not help.
    #[error("broker limit: {0}")]
    Limit(String),
}

/// What publishing returns to the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishReceipt {
    pub epoch: Arc<str>,
    pub offset: u64,
    /// Subscribers on this node the publication was queued to.
    pub delivered: u64,
}

/// What a (recovering) subscribe learns from the broker.
#[derive(Debug)]
pub struct History {
    /// The channel's epoch and top offset when history was read.
    pub position: StreamPosition,
    /// `None` without a recovery request; otherwise whether everything after it is in `publications`.
    pub recovered: Option<bool>,
    /// The missed publications, oldest first, when recovered.
    pub publications: Vec<(u64, Arc<RawValue>)>,
}

pub trait Broker: Send + Sync + 'static {
    /// Assign the next offset in `channel`, keep history per policy, and deliver everywhere.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>>;

    /// The channel's current position and, with `since`, the publications after it. Called
    /// after the subscriber is registered in the hub, so nothing falls between replay and live.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// Periodic housekeeping (expire history, drop idle streams). Called about once a second.
    fn maintain(&self) {}

    /// Whether publications can be accepted now, or why not (`/readyz` reports this).
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// A short name for logs and `/healthz`.
    fn name(&self) -> &'static str;
}

/// Most publications one recovery replays; a client further behind is told `recovered: false`
/// (and refetches its state) rather than being sent an unbounded replay.
pub const MAX_REPLAY: u64 = 10_000;

/// The history policy for a channel: the first matching rule.
pub fn history_policy(rules: &[HistoryRule], channel: &str) -> Option<HistoryPolicy> {
    rules
        .iter()
        .find(|r| any_matches(std::slice::from_ref(&r.pattern), channel))
        .map(|r| HistoryPolicy { size: r.size, ttl: r.ttl })
}

/// A fresh epoch: random, so that a restarted node never reuses one.
pub fn new_epoch() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

struct Entry {
    epoch: Arc<str>,
    stream: Stream<Arc<RawValue>>,
}

type Shard = Mutex<HashMap<Arc<str>, Entry>>;

/// Single-node broker: streams in memory; publishing is local fan-out.
///
/// A channel's stream lives while it has history or local subscribers; an idle one is dropped by
/// [`Broker::maintain`] (its next incarnation gets a new epoch, so a client holding the old one
/// is told `recovered: false` instead of being handed a false continuation).
pub struct MemoryBroker {
    hub: Arc<Hub>,
    rules: Vec<HistoryRule>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Streams held, and the most allowed.
    streams: AtomicUsize,
    max_streams: usize,
}

impl MemoryBroker {
    pub fn new(hub: Arc<Hub>, rules: Vec<HistoryRule>, max_streams: usize) -> Self {
        MemoryBroker {
            hub,
            rules,
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            streams: AtomicUsize::new(0),
            max_streams,
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % self.shards.len()]
    }

    /// Run `f` on the channel's stream, creating it when needed (and allowed).
    fn with_stream<R>(
        &self,
        channel: &str,
        f: impl FnOnce(&mut Entry) -> R,
    ) -> Result<R, BrokerError> {
        let mut shard = self.shard(channel).lock().expect("stream shard lock");
        if let Some(entry) = shard.get_mut(channel) {
            return Ok(f(entry));
        }
        if self.streams.fetch_add(1, Ordering::Relaxed) >= self.max_streams {
            self.streams.fetch_sub(1, Ordering::Relaxed);
            return Err(BrokerError::Limit(format!(
                "{} channels are active (max_channels); retry when some are idle",
                self.max_streams
            )));
        }
        let epoch = new_epoch();
        let entry = Entry {
            epoch: Arc::from(epoch.as_str()),
            stream: Stream::new(epoch, history_policy(&self.rules, channel)),
        };
        Ok(f(shard.entry(Arc::from(channel)).or_insert(entry)))
    }

    /// Streams currently held.
    pub fn stream_count(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }
}

impl Broker for MemoryBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>> {
        // Offset assignment and delivery happen under the stream's lock: concurrent publishers
        // cannot deliver out of offset order.
        let result = self.with_stream(channel, |entry| {
            let offset = entry.stream.append(Arc::from(data.to_owned()), Instant::now());
            let delivered = self.hub.publish(channel, &entry.epoch, offset, data);
            PublishReceipt { epoch: entry.epoch.clone(), offset, delivered }
        });
        Box::pin(std::future::ready(result))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        let result = self.with_stream(channel, |entry| {
            let position = entry.stream.position();
            let (recovered, publications) = match since {
                None => (None, Vec::new()),
                Some(since) if position.offset.saturating_sub(since.offset) > MAX_REPLAY => {
                    (Some(false), Vec::new())
                }
                Some(since) => match entry.stream.recover(since, Instant::now()) {
                    Recovery::Recovered(publications) => (Some(true), publications),
                    Recovery::NotRecovered => (Some(false), Vec::new()),
                },
            };
            History { position, recovered, publications }
        });
        Box::pin(std::future::ready(result))
    }

    fn maintain(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().expect("stream shard lock");
            let before = shard.len();
            shard.retain(|channel, entry| {
                !entry.stream.is_idle(now) || self.hub.has_subscribers(channel)
            });
            self.streams.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tether_core::channel::ChannelPattern;

    fn broker(max: usize) -> MemoryBroker {
        let rules = vec![HistoryRule {
            pattern: ChannelPattern::new("chat:*"),
            size: 3,
            ttl: Duration::from_secs(60),
        }];
        MemoryBroker::new(Arc::new(Hub::new(Arc::default())), rules, max)
    }

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn now<F: std::future::Future>(f: F) -> F::Output {
        // The memory broker's futures are ready at once.
        futures_util::FutureExt::now_or_never(f).expect("memory broker futures are ready")
    }

    #[test]
    fn offsets_history_and_recovery() {
        let b = broker(10);
        let r1 = now(b.publish("chat:a", &raw("1"))).unwrap();
        let r2 = now(b.publish("chat:a", &raw("2"))).unwrap();
        assert_eq!((r1.offset, r2.offset, r1.epoch == r2.epoch), (1, 2, true));
        let since = StreamPosition { epoch: r1.epoch.to_string(), offset: 1 };
        let h = now(b.history("chat:a", Some(&since))).unwrap();
        assert_eq!(h.recovered, Some(true));
        assert_eq!(h.position.offset, 2);
        assert_eq!(
            h.publications.iter().map(|(o, d)| (*o, d.get())).collect::<Vec<_>>(),
            [(2, "2")]
        );
        // No history policy for `news`: only an up-to-date client recovers.
        now(b.publish("news", &raw("1"))).unwrap();
        let h = now(b.history("news", None)).unwrap();
        assert_eq!((h.recovered, h.position.offset), (None, 1));
    }

    #[test]
    fn idle_streams_are_dropped_and_come_back_with_a_new_epoch() {
        let b = broker(10);
        let first = now(b.publish("news", &raw("1"))).unwrap().epoch;
        assert_eq!(b.stream_count(), 1);
        b.maintain();
        assert_eq!(b.stream_count(), 0, "no history, no subscribers: dropped");
        let second = now(b.publish("news", &raw("1"))).unwrap().epoch;
        assert_ne!(first, second);
        now(b.publish("chat:x", &raw("1"))).unwrap();
        b.maintain();
        assert_eq!(b.stream_count(), 1, "a stream with history stays");
    }

    #[test]
    fn a_replay_longer_than_max_replay_is_not_attempted() {
        let rules = vec![HistoryRule {
            pattern: ChannelPattern::new("*"),
            size: 20_000,
            ttl: Duration::from_secs(60),
        }];
        let b = MemoryBroker::new(Arc::new(Hub::new(Arc::default())), rules, 10);
        let epoch = now(b.publish("c", &raw("0"))).unwrap().epoch.to_string();
        for _ in 0..MAX_REPLAY {
            now(b.publish("c", &raw("1"))).unwrap();
        }
        let far = StreamPosition { epoch: epoch.clone(), offset: 0 };
        let h = now(b.history("c", Some(&far))).unwrap();
        assert_eq!(
            (h.recovered, h.publications.len()),
            (Some(false), 0),
            "{} behind",
            MAX_REPLAY + 1
        );
        let near = StreamPosition { epoch, offset: 1 };
        assert_eq!(now(b.history("c", Some(&near))).unwrap().publications.len() as u64, MAX_REPLAY);
    }

    #[test]
    fn the_number_of_streams_is_bounded() {
        let b = broker(2);
        now(b.publish("chat:a", &raw("1"))).unwrap();
        now(b.publish("chat:b", &raw("1"))).unwrap();
        assert!(matches!(now(b.publish("chat:c", &raw("1"))), Err(BrokerError::Limit(_))));
        assert!(now(b.publish("chat:a", &raw("2"))).is_ok(), "existing streams keep working");
    }
}
