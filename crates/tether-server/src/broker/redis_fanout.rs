//! Between the Redis pub/sub link and this node's subscribers: a bounded queue, and the one task
//! that fans its publications out and repairs what the node missed.
//!
//! The link's reader only parses and queues, so a slow fan-out (a channel with many
//! subscribers, a busy machine) never stops it reading: a reader that falls behind gets its
//! link dropped by Redis (`client-output-buffer-limit pubsub`), which would lose publications
//! for every channel at once. When the queue is full, a publication is dropped and its channel
//! marked for repair instead; when the link comes back after a loss, every channel is.
//!
//! **Repair** (decision 0022): for each channel with local subscribers, read history from the
//! lowest position they hold and deliver what follows, in order, before that channel's queued
//! publications (which the hub's subscribers then pass by as already delivered). What history
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
    repair: Repair,
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
    dropped: Counter,
    repairs: Family<OutcomeLabels, Counter>,
}

impl Fanout {
    pub fn new(metrics: &crate::metrics::Metrics) -> Arc<Fanout> {
        let fanout = Arc::new(Fanout {
            waiting: Mutex::default(),
            more: Notify::new(),
            queued: Gauge::default(),
            dropped: Counter::default(),
            repairs: Family::default(),
        });
        metrics.register(
            "tether_broker_fanout_queue",
            "Publications from Redis waiting for this node's fan-out (at most 65536, 64 MiB)",
            fanout.queued.clone(),
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
        let mut w = crate::sync::lock(&self.waiting);
        if w.items.len() >= MAX_QUEUED || w.bytes + size > MAX_QUEUED_BYTES {
            w.repair.mark(&incoming.channel);
            self.dropped.inc();
        } else {
            w.bytes += size;
            w.items.push_back(incoming);
            self.queued.set(w.items.len() as i64);
        }
        drop(w);
        self.more.notify_one();
    }

    /// The link came back after a loss: whatever was published meanwhile never arrived, on any
    /// channel. Called once the new link is subscribed, before it delivers anything.
    pub fn relinked(&self) {
        crate::sync::lock(&self.waiting).repair = Repair::Every;
        self.more.notify_one();
    }

    /// The next job: a pending repair first (its history reads cover the queued publications
    /// of its channels, which are then passed by), else the oldest publication.
    async fn next(&self) -> Job {
        loop {
            {
                let mut w = crate::sync::lock(&self.waiting);
                let repair = std::mem::take(&mut w.repair);
                if !matches!(repair, Repair::Nothing) {
                    return Job::Repair(repair);
                }
                if let Some(item) = w.items.pop_front() {
                    w.bytes -= item.data.get().len();
                    self.queued.set(w.items.len() as i64);
                    return Job::Deliver(item);
                }
            }
            // `notify_one` keeps a permit when nobody waits: a push between the look and
            // here is not missed.
            self.more.notified().await;
        }
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
            match job {
                Job::Deliver(p) => {
                    hub.deliver(&p.channel, &p.epoch, p.offset, &p.data);
                }
                Job::Repair(repair) => self.repair(repair, &*broker, &*hub).await,
            }
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
