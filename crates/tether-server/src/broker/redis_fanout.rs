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
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tether_core::protocol::StreamPosition;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Publications waiting for the fan-out, at most...
pub const MAX_QUEUED: usize = 65_536;
/// ...and their data, in bytes at most.
pub const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Channels marked for repair one by one; past this, every channel is repaired.
const MAX_MARKED: usize = 10_000;
/// History reads one repair keeps in flight.
const REPAIR_READS: usize = 16;
/// A channel paused this long without its repair being asked for (its subscription could not
/// be made again, or nobody wants it now) is repaired anyway, which releases it.
const PAUSE_LIMIT: Duration = Duration::from_secs(5);

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
    /// From a link's loss until its repair is asked for: publications queued from here on
    /// (the new link's) wait, so that none overtakes the replay of what came before it.
    held_from: Option<u64>,
    /// Channels whose subscription the cluster took away (their slot moved): their
    /// publications wait aside until a repair asked for after the subscription was made again
    /// has run, so that none from the new subscription overtakes the replay of what was missed
    /// in between. Other channels go on.
    paused: HashMap<Arc<str>, Pause>,
    aside: VecDeque<Incoming>,
}

/// A paused channel (see `Waiting::paused`).
struct Pause {
    since: Instant,
    /// Subscribed again (or given up on), and its repair asked for since: a repair taken from
    /// now on releases it. One taken before (a drop's) read history too early.
    repair_asked: bool,
}

impl Waiting {
    fn len(&self) -> usize {
        self.items.len() + self.aside.len()
    }

    /// Paused channels given up on (see [`PAUSE_LIMIT`]) are marked for repair.
    fn overdue(&mut self, now: Instant) {
        let overdue: Vec<Arc<str>> = self
            .paused
            .iter()
            .filter(|(_, p)| !p.repair_asked && now.duration_since(p.since) >= PAUSE_LIMIT)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in overdue {
            self.mark(Some(&channel));
            if let Some(pause) = self.paused.get_mut(&channel) {
                pause.repair_asked = true;
            }
        }
    }

    /// The paused channels that `repair`, taken now, releases once it has run.
    fn releasing(&self, repair: &Repair) -> HashSet<Arc<str>> {
        let covered = |c: &Arc<str>| match repair {
            Repair::Nothing => false,
            Repair::Channels(set) => set.contains(c),
            Repair::Every => true,
        };
        self.paused
            .iter()
            .filter(|(c, p)| p.repair_asked && covered(c))
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Unpause `channels`; what waited aside for them, in order.
    fn release(&mut self, channels: &HashSet<Arc<str>>) -> Vec<Incoming> {
        self.paused.retain(|c, _| !channels.contains(c));
        let (released, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.aside)
            .into_iter()
            .partition(|p| channels.contains(&p.channel));
        self.aside = kept;
        self.bytes -= released.iter().map(|p| p.data.get().len()).sum::<usize>();
        released.into()
    }
}

impl Waiting {
    fn mark(&mut self, channel: Option<&Arc<str>>) {
        // The first mark sets when the repair may run: moving it on with every later mark
        // would let a marked channel's newer publications overtake its repair (a gap), or
        // put the repair off for as long as drops go on.
        if matches!(self.repair, Repair::Nothing) {
            self.repair_after = self.pushed;
        }
        match channel {
            Some(channel) => self.repair.mark(channel),
            None => self.repair = Repair::Every,
        }
    }
}

/// What the fan-out task does next.
enum Job {
    Deliver(Incoming),
    /// A repair, and the paused channels it releases once run.
    Repair(Repair, HashSet<Arc<str>>),
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
        if w.len() >= MAX_QUEUED || w.bytes + size > MAX_QUEUED_BYTES {
            w.mark(Some(&incoming.channel));
            self.dropped.inc();
        } else {
            w.bytes += size;
            if w.paused.contains_key(&incoming.channel) {
                w.aside.push_back(incoming);
            } else {
                w.pushed += 1;
                w.items.push_back(incoming);
            }
            self.queued.set(w.len() as i64);
        }
        drop(w);
        self.more.notify_one();
    }

    /// The link came back after a loss: whatever was published meanwhile never arrived, on any
    /// channel. Called once the new link is subscribed, before it delivers anything.
    pub fn relinked(&self) {
        let mut w = crate::sync::lock(&self.waiting);
        w.repair = Repair::Every;
        w.repair_after = match w.held_from.take() {
            Some(held) => held,
            None => w.pushed,
        };
        drop(w);
        self.more.notify_one();
    }

    /// The link was lost (or a cluster node was): what comes from here on waits for the
    /// repair that [`Fanout::relinked`] asks for once everything is subscribed again.
    pub fn hold(&self) {
        let mut w = crate::sync::lock(&self.waiting);
        if w.held_from.is_none() {
            w.held_from = Some(w.pushed);
        }
    }

    /// The cluster took `channel`'s subscription away (its slot moved): what comes for it
    /// from now on waits until [`Fanout::resubscribed`]'s repair has run.
    pub fn pause(&self, channel: &Arc<str>) {
        let mut w = crate::sync::lock(&self.waiting);
        let since = Instant::now();
        w.paused.entry(channel.clone()).or_insert(Pause { since, repair_asked: false });
    }

    /// `channel`'s feed was interrupted (its subscription in Redis was made again): repair it
    /// once what is queued has been delivered.
    pub fn resubscribed(&self, channel: &Arc<str>) {
        let mut w = crate::sync::lock(&self.waiting);
        w.mark(Some(channel));
        if let Some(pause) = w.paused.get_mut(channel) {
            pause.repair_asked = true;
        }
        drop(w);
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
            // here is not missed. A paused channel is looked at again now and then (it may be
            // overdue).
            let paused = !crate::sync::lock(&self.waiting).paused.is_empty();
            match paused {
                true => drop(tokio::time::timeout(PAUSE_LIMIT / 5, self.more.notified()).await),
                false => self.more.notified().await,
            }
        }
    }

    fn try_next(&self) -> Option<Job> {
        let mut w = crate::sync::lock(&self.waiting);
        if !w.paused.is_empty() {
            w.overdue(Instant::now());
        }
        if !matches!(w.repair, Repair::Nothing) && w.taken >= w.repair_after {
            let repair = std::mem::take(&mut w.repair);
            let releasing = w.releasing(&repair);
            return Some(Job::Repair(repair, releasing));
        }
        if w.held_from.is_some_and(|held| w.taken >= held) {
            return None; // until the repair is asked for (`relinked`)
        }
        let item = w.items.pop_front()?;
        w.taken += 1;
        w.bytes -= item.data.get().len();
        self.queued.set(w.len() as i64);
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
            Job::Repair(repair, releasing) => {
                self.repair(repair, broker, hub).await;
                // What waited aside for the repaired channels follows their replay (passed
                // by where the replay covered it), before anything queued after.
                if !releasing.is_empty() {
                    let released = {
                        let mut w = crate::sync::lock(&self.waiting);
                        let released = w.release(&releasing);
                        self.queued.set(w.len() as i64);
                        released
                    };
                    for p in released {
                        hub.deliver(&p.channel, &p.epoch, p.offset, &p.data);
                    }
                }
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
mod tests;
