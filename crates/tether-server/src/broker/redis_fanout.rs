//! Between the Redis pub/sub link and this node's subscribers: a bounded queue, and the one task
//! that fans its publications out and repairs what the node missed.
//!
//! The link's reader only parses and queues, so a slow fan-out (a channel with many
//! subscribers, a busy machine) never stops it reading: a reader that falls behind gets its
//! link dropped by Redis (`client-output-buffer-limit pubsub`), which would lose publications
//! for every channel at once. When the queue is full, a publication is dropped and its channel
//! marked for repair instead; when the link comes back after a loss, every channel is.
//!
//! **Repair** (decision 0022): once everything queued before the loss is delivered, for each
//! channel with local subscribers, read history from the lowest position they hold and deliver
//! what follows, in order, before that channel's later queued publications (which the hub's
//! subscribers then pass by as already delivered). What history
//! cannot give back (a channel without history, history gone, a new epoch) is told to the
//! subscribers behind it: their connections end with 1012 and their recovery says
//! `recovered: false`. A channel whose subscribers missed nothing is not disturbed.

use super::{Broker, LocalSubscribers, MAX_HISTORY_BYTES};
use crate::metrics::OutcomeLabels;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::value::RawValue;
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use tether_core::protocol::StreamPosition;
use tokio::sync::Notify;

/// Publications waiting for the fan-out, at most...
pub const MAX_QUEUED: usize = 65_536;
/// ...and their data, in bytes at most.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Channels marked for repair one by one; past this, every channel is repaired.
const MAX_MARKED: usize = 10_000;
/// History reads one repair keeps in flight.
const REPAIR_READS: usize = 16;

/// A publication as it came over the link.
pub struct Incoming {
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    pub data: Box<RawValue>,
}

/// Which channels may have missed publications.
#[derive(Default)]
enum Repair {
    #[default]
    Nothing,
    Channels(HashSet<Arc<str>>),
    Every,
}

impl Repair {
    fn mark(&mut self, channel: &Arc<str>) {
        match self {
            Repair::Nothing => *self = Repair::Channels(HashSet::from([channel.clone()])),
            Repair::Channels(set) if set.len() >= MAX_MARKED => *self = Repair::Every,
            Repair::Channels(set) => {
                set.insert(channel.clone());
            }
            Repair::Every => {}
        }
    }
}

#[derive(Default)]
struct Waiting {
    items: VecDeque<Incoming>,
    bytes: usize,
    /// Publications queued and taken so far: a repair is made once everything queued before
    /// it was asked for has been delivered, so that what is in the queue is not taken for
    /// missed.
    pushed: u64,
    taken: u64,
    repair: Repair,
    repair_after: u64,
}

impl Waiting {
    fn mark(&mut self, channel: Option<&Arc<str>>) {
        match channel {
            Some(channel) => self.repair.mark(channel),
            None => self.repair = Repair::Every,
        }
        self.repair_after = self.pushed;
    }
}

/// What the fan-out task does next.
enum Job {
    Deliver(Incoming),
    Repair(Repair),
}

/// The queue between the link's reader and the fan-out task.
pub struct Fanout {
    waiting: Mutex<Waiting>,
    more: Notify,
    queued: Gauge,
    received: Counter,
    dropped: Counter,
    repairs: Family<OutcomeLabels, Counter>,
}

impl Fanout {
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout {
            waiting: Mutex::default(),
            more: Notify::new(),
            queued: Gauge::default(),
            received: Counter::default(),
            dropped: Counter::default(),
            repairs: Family::default(),
        });
        metrics.register(
            "tether_broker_fanout_queue",
            "Publications from Redis waiting for this node's fan-out (at most 65536, 64 MiB)",
            fanout.queued.clone(),
        );
        metrics.register(
            "tether_broker_publications_received",
            "Publications this node received from Redis (only for channels it has subscribers for)",
            fanout.received.clone(),
        );
        metrics.register(
            "tether_broker_fanout_dropped",
            "Publications from Redis dropped because the fan-out queue was full (their channels are repaired)",
            fanout.dropped.clone(),
        );
        metrics.register(
            "tether_broker_repairs",
            "Channels checked after the node may have missed publications, by outcome (current, replayed, told, failed)",
            fanout.repairs.clone(),
        );
        fanout
    }

    /// Queue a publication from the link; never waits. A full queue drops it and marks its
    /// channel for repair.
    pub fn push(&self, incoming: Incoming) {
        let size = incoming.data.get().len();
        self.received.inc();
        let mut w = crate::sync::lock(&self.waiting);
        if w.items.len() >= MAX_QUEUED || w.bytes + size > MAX_QUEUED_BYTES {
            w.mark(Some(&incoming.channel));
            self.dropped.inc();
        } else {
            w.bytes += size;
            w.pushed += 1;
            w.items.push_back(incoming);
            self.queued.set(w.items.len() as i64);
        }
        drop(w);
        self.more.notify_one();
    }

    /// The link came back after a loss: whatever was published meanwhile never arrived, on any
    /// channel. Called once the new link is subscribed, before it delivers anything.
    pub fn relinked(&self) {
        crate::sync::lock(&self.waiting).mark(None);
        self.more.notify_one();
    }

    /// `channel`'s feed was interrupted (its subscription in Redis was made again): repair it
    /// once what is queued has been delivered.
    pub fn resubscribed(&self, channel: &Arc<str>) {
        crate::sync::lock(&self.waiting).mark(Some(channel));
        self.more.notify_one();
    }

    /// The next job: the oldest publication, or a pending repair once everything queued
    /// before it was asked for is delivered (its history reads may also cover publications
    /// queued after it, which are then passed by as delivered).
    async fn next(&self) -> Job {
        loop {
            if let Some(job) = self.try_next() {
                return job;
            }
            // `notify_one` keeps a permit when nobody waits: a push between the look and
            // here is not missed.
            self.more.notified().await;
        }
    }

    fn try_next(&self) -> Option<Job> {
        let mut w = crate::sync::lock(&self.waiting);
        if !matches!(w.repair, Repair::Nothing) && w.taken >= w.repair_after {
            return Some(Job::Repair(std::mem::take(&mut w.repair)));
        }
        let item = w.items.pop_front()?;
        w.taken += 1;
        w.bytes -= item.data.get().len();
        self.queued.set(w.items.len() as i64);
        Some(Job::Deliver(item))
    }

    /// Fan out what the link queues, in order, and repair what it marks, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        broker: Arc<dyn Broker>,
        hub: Arc<dyn LocalSubscribers>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let job = tokio::select! {
                _ = stop.cancelled() => return,
                job = self.next() => job,
            };
            self.handle(job, &*broker, &*hub).await;
        }
    }

    async fn handle(&self, job: Job, broker: &dyn Broker, hub: &dyn LocalSubscribers) {
        match job {
            Job::Deliver(p) => {
                hub.deliver(&p.channel, &p.epoch, p.offset, &p.data);
            }
            Job::Repair(repair) => self.repair(repair, broker, hub).await,
        }
    }

    async fn repair(&self, repair: Repair, broker: &dyn Broker, hub: &dyn LocalSubscribers) {
        let only: Option<Vec<Arc<str>>> = match repair {
            Repair::Nothing => return,
            Repair::Channels(set) => Some(set.into_iter().collect()),
            Repair::Every => None,
        };
        let behind: Vec<(Arc<str>, StreamPosition)> = hub
            .positions(only.as_deref())
            .into_iter()
            .flat_map(|(channel, lowest)| lowest.into_iter().map(move |p| (channel.clone(), p)))
            .collect();
        tracing::info!(channels = behind.len(), "repairing what this node may have missed");
        let mut reads = futures_util::stream::iter(behind)
            .map(|(channel, since)| async move {
                let read = catch_up(broker, &channel, since).await;
                (channel, read)
            })
            .buffer_unordered(REPAIR_READS);
        // Each channel's replay is delivered here, by this one task, before anything queued
        // after it: the channel's order holds.
        while let Some((channel, read)) = reads.next().await {
            let outcome = match read {
                Ok(CatchUp::Current) => "current",
                Ok(CatchUp::Replay(epoch, publications)) => {
                    for (offset, data) in publications {
                        hub.deliver(&channel, &epoch, offset, &data);
                    }
                    "replayed"
                }
                Ok(CatchUp::Lost(position)) => {
                    hub.lost(&channel, Some(&position));
                    "told"
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %e, "could not read history to repair a channel; its subscribers are told");
                    hub.lost(&channel, None);
                    "failed"
                }
            };
            tracing::debug!(%channel, outcome, "repaired");
            self.repairs.get_or_create(&OutcomeLabels { outcome }).inc();
        }
    }
}

/// What a channel's subscribers at `since` missed.
enum CatchUp {
    Current,
    Replay(Arc<str>, Vec<(u64, Arc<RawValue>)>),
    /// Missed, and history cannot give it back: the channel is now at this position.
    Lost(StreamPosition),
}

async fn catch_up(
    broker: &dyn Broker,
    channel: &str,
    since: StreamPosition,
) -> Result<CatchUp, super::BrokerError> {
    // Subscribed before the channel's first publication (epoch ""): from its start.
    let since = if since.epoch.is_empty() {
        let now = broker.history(channel, None, 0).await?.position;
        if now.epoch.is_empty() || now.offset == 0 {
            return Ok(CatchUp::Current);
        }
        StreamPosition { epoch: now.epoch, offset: 0 }
    } else {
        since
    };
    let history = broker.history(channel, Some(&since), MAX_HISTORY_BYTES).await?;
    Ok(match history.recovered {
        Some(true) if history.publications.is_empty() => CatchUp::Current,
        Some(true) => {
            CatchUp::Replay(Arc::from(history.position.epoch.as_str()), history.publications)
        }
        _ => CatchUp::Lost(history.position),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::MemoryBroker;
    use crate::config::HistoryRule;
    use crate::hub::{Hub, Mode, Outbound, OutboundQueue, Subscriber};
    use crate::mailbox::Admission;
    use crate::metrics::Metrics;
    use std::time::Duration;
    use tether_core::channel::ChannelPattern;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// A subscriber of `channel` on `hub`, subscribed before the channel's first publication.
    fn subscriber(hub: &Hub, conn: u64, channel: &str) -> Arc<OutboundQueue> {
        let queue = Arc::new(OutboundQueue::new(1024, 1 << 20));
        queue.with_subscriptions(|s| s.insert(Arc::from(channel)));
        queue.with_subscriptions(|s| s.get_mut(channel).unwrap().epoch = Some(Arc::from("")));
        hub.subscribe(channel, conn, Subscriber::new(queue.clone(), Mode::Json)).unwrap();
        queue
    }

    /// What the subscriber's connection would send: offsets, then `Err` at a gap.
    fn sent(queue: &OutboundQueue) -> Result<Vec<u64>, Vec<u64>> {
        let mut offsets = Vec::new();
        while let Some(item) = queue.pop() {
            let Outbound::Publication(p) = item else { continue };
            match queue.admit(&p) {
                Admission::Send => offsets.push(p.offset),
                Admission::Skip => {}
                Admission::Gap => return Err(offsets),
            }
        }
        Ok(offsets)
    }

    #[tokio::test]
    async fn what_a_full_queue_drops_is_replayed_from_history_in_order_or_told() {
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(metrics.clone()));
        let history = HistoryRule {
            pattern: ChannelPattern::new("h"),
            size: 100,
            ttl: Duration::from_secs(60),
        };
        // The broker as another node sees it: its own deliveries go elsewhere.
        let elsewhere = Arc::new(Hub::new(Arc::default()));
        let broker = MemoryBroker::new(elsewhere, vec![history.into()], 10);
        let (h, n) = (subscriber(&hub, 1, "h"), subscriber(&hub, 2, "n"));
        let fanout = Fanout::new(&metrics);
        let mut epochs = Vec::new();
        for channel in ["h", "h", "h", "n", "n"] {
            epochs.push(broker.publish(channel, &raw("1"), None).await.unwrap());
        }
        let incoming = |channel: &str, i: usize| Incoming {
            channel: Arc::from(channel),
            epoch: epochs[i].epoch.clone(),
            offset: epochs[i].offset,
            data: raw("1"),
        };
        // h:1 and n:1 are queued; the queue fills; h:2, h:3 and n:2 are dropped.
        fanout.push(incoming("h", 0));
        fanout.push(incoming("n", 3));
        for _ in 2..MAX_QUEUED {
            fanout.push(Incoming { channel: Arc::from("elsewhere"), ..incoming("h", 0) });
        }
        for (channel, i) in [("h", 1), ("h", 2), ("n", 4)] {
            fanout.push(incoming(channel, i));
        }
        assert_eq!(fanout.dropped.get(), 3);
        while let Some(job) = fanout.try_next() {
            fanout.handle(job, &broker, &*hub).await;
        }
        // h: h:1 from the queue, then h:2 and h:3 replayed from history.
        assert_eq!(sent(&h), Ok(vec![1, 2, 3]));
        // n has no history: its subscriber gets what was queued, then is told of n:2.
        assert_eq!(sent(&n), Err(vec![1]));
        let repairs = |outcome| fanout.repairs.get_or_create(&OutcomeLabels { outcome }).get();
        assert_eq!((repairs("replayed"), repairs("told")), (1, 1));
    }
}
