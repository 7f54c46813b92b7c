//! Interest: the node subscribes in Redis only to the channels it has local subscribers for,
//! so it receives only what it will deliver (issue 22, point 1). Adding nodes then adds
//! fan-out capacity instead of multiplying every publication by the number of nodes.
//!
//! - The hub says when a channel may have gained its first or lost its last subscriber
//!   ([`Interest::changed`], never waiting); one task ([`Interest::run`]) asks the hub what is
//!   true now and sends `SUBSCRIBE`/`UNSUBSCRIBE` in batches of up to 1,000 channels.
//! - A channel left by its last subscriber is unsubscribed after [`LINGER`], not at once, so a
//!   client that reconnects or resubscribes soon costs Redis nothing: churn is bounded by one
//!   command pair per channel per `LINGER`, and counted (`tether_broker_subscription_commands`).
//! - A subscribe reads history only after Redis confirmed the `SUBSCRIBE`
//!   ([`Interest::ready`]): a publication can then be missed by neither.
//! - A new link subscribes everything the hub has, then (after a loss) repairs what was missed
//!   (`redis_fanout`).

use super::redis_endpoint::{publications_channel, RESPONSE_TIMEOUT};
use super::redis_fanout::Fanout;
use super::redis_presence::events_channel;
use super::{BrokerError, LocalSubscribers};
use crate::config::ChannelRule;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::PubSubSink;
use redis::cluster_async::ClusterConnection;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a channel without local subscribers stays subscribed in Redis.
pub const LINGER: Duration = Duration::from_secs(1);
/// How soon a subscription that failed is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// How long the repair after a new link waits for every channel's subscription: past this,
/// it goes ahead (the channels still failing are told, and repaired once subscribed), rather
/// than hold every channel's fan-out for one unreachable shard.
const GIVE_UP_WAITING: Duration = Duration::from_secs(5);
/// Channels per `SUBSCRIBE` or `UNSUBSCRIBE`.
const BATCH: usize = 1_000;

/// What subscriptions are made on: a pub/sub link, or a cluster connection (`SSUBSCRIBE`, one
/// channel per command: channels of different slots may not share one).
#[derive(Clone)]
pub enum Link {
    PubSub(PubSubSink),
    Cluster(ClusterConnection),
}

/// `SSUBSCRIBE`s one cluster step keeps in flight.
const CLUSTER_IN_FLIGHT: usize = 64;

#[derive(Default)]
struct State {
    /// The current link; `None` while it is down.
    sink: Option<Link>,
    /// Cluster: sent, not yet confirmed by a push. A confirmation of a channel not in here is
    /// the cluster client subscribing again by itself (after a reconnect or a slot move).
    requested: HashSet<Arc<str>>,
    /// Cluster: unsubscribes sent, not yet confirmed; any other `sunsubscribe` is the cluster
    /// taking a subscription away (its slot moved).
    unsubscribing: HashSet<Arc<str>>,
    /// Subscriptions taken away: once made again, the channel is repaired.
    taken: HashSet<Arc<str>>,
    /// From a new link (or a cluster's lost node) until its repair is asked for.
    starting_over: bool,
    /// When subscribing everything again first failed in part (a shard still unreachable).
    failing_since: Option<Instant>,
    /// Counts links: a batch confirmed on an earlier link does not count on this one.
    link: u64,
    /// A new link: subscribe everything the hub has, then repair if it follows a loss.
    fresh: Option<bool>,
    /// When to try again what failed (a cluster shard not reachable yet).
    retry: Option<Instant>,
    /// Channels whose local subscribers may have changed since the task last looked.
    dirty: HashSet<Arc<str>>,
    /// Subscribed in Redis on the current link.
    subscribed: HashSet<Arc<str>>,
    /// Subscribed, without local subscribers since then.
    leaving: HashMap<Arc<str>, Instant>,
}

impl State {
    /// Everything subscribed is forgotten (a new link, or none): `fresh` says what the next
    /// step does (subscribe all, then repair if `Some(true)`).
    fn start_over(&mut self, fresh: Option<bool>) {
        self.link += 1;
        self.fresh = fresh;
        self.starting_over = fresh.is_some();
        self.subscribed.clear();
        self.leaving.clear();
        self.requested.clear();
        self.unsubscribing.clear();
        self.taken.clear();
        self.retry = None;
        self.failing_since = None;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

pub struct Interest {
    state: Mutex<State>,
    /// Something for the task to look at.
    wake: Notify,
    /// A batch was confirmed (or the link changed): [`Interest::ready`] looks again.
    confirmed: Notify,
    rules: Vec<ChannelRule>,
    channels: Gauge,
    commands: Family<CommandLabels, Counter>,
}

impl Interest {
    pub fn new(rules: Vec<ChannelRule>, metrics: &crate::metrics::Metrics) -> Arc<Interest> {
        let interest = Arc::new(Interest {
            state: Mutex::default(),
            wake: Notify::new(),
            confirmed: Notify::new(),
            rules,
            channels: Gauge::default(),
            commands: Family::default(),
        });
        metrics.register(
            "tether_broker_channels_subscribed",
            "Channels this node is subscribed to in Redis (those with local subscribers, and for 1 s after the last leaves)",
            interest.channels.clone(),
        );
        metrics.register(
            "tether_broker_subscription_commands",
            "SUBSCRIBE and UNSUBSCRIBE commands sent to Redis (up to 1,000 channels each)",
            interest.commands.clone(),
        );
        interest
    }

    /// `channel` may have gained its first or lost its last local subscriber. Called by the
    /// hub under its lock: only records it.
    pub fn changed(&self, channel: &Arc<str>) {
        crate::sync::lock(&self.state).dirty.insert(channel.clone());
        self.wake.notify_one();
    }

    /// A new link is up (`repair`: it follows a loss).
    pub fn linked(&self, sink: Link, repair: bool) {
        let mut s = crate::sync::lock(&self.state);
        s.sink = Some(sink);
        s.start_over(Some(repair));
        drop(s);
        self.channels.set(0);
        self.wake.notify_one();
    }

    /// Subscribe everything again on the current link and then repair: a cluster connection
    /// lost a node (its client's own resubscription cannot be relied on to reach a replica
    /// promoted meanwhile; subscribing again is harmless where it did).
    pub fn resubscribe_all(&self) {
        let mut s = crate::sync::lock(&self.state);
        if s.sink.is_none() {
            return;
        }
        s.start_over(Some(true));
        drop(s);
        self.channels.set(0);
        self.wake.notify_one();
    }

    /// The link is down: nothing is subscribed until the next one.
    pub fn unlinked(&self) {
        let mut s = crate::sync::lock(&self.state);
        s.sink = None;
        // Nothing to time while there is no link (the next one starts over).
        s.start_over(None);
        drop(s);
        self.channels.set(0);
        self.confirmed.notify_waiters();
    }

    /// Wait until Redis has confirmed the subscription to `channel`, if this node has local
    /// subscribers for it and a link (without a link, the next one subscribes it and repairs
    /// what was missed). Called before a subscribe reads history.
    pub async fn ready(
        &self,
        channel: &str,
        hub: &dyn LocalSubscribers,
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + RESPONSE_TIMEOUT;
        loop {
            let confirmed = self.confirmed.notified();
            tokio::pin!(confirmed);
            confirmed.as_mut().enable();
            {
                let s = crate::sync::lock(&self.state);
                // Without a link, or while a link subscribes everything again, the repair
                // that follows covers this subscriber too (from its position): waiting would
                // only hold up that repair's own history reads.
                if s.sink.is_none() || s.starting_over || s.subscribed.contains(channel) {
                    return Ok(());
                }
            }
            if hub.count(channel) == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, confirmed).await.is_err() {
                return Err(BrokerError::Unavailable(format!(
                    "Redis did not confirm the subscription to {channel} within {:?}; retry",
                    RESPONSE_TIMEOUT
                )));
            }
        }
    }

    /// Keep Redis's subscriptions in step with the hub's channels, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        hub: Arc<dyn LocalSubscribers>,
        fanout: Arc<Fanout>,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let next_leave = {
                let s = crate::sync::lock(&self.state);
                // No timers without a link: the next link starts over (and wakes the task).
                let leave = s.leaving.values().min().map(|since| *since + LINGER);
                let leave = leave.filter(|_| s.sink.is_some());
                match (leave, s.retry) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            };
            let linger = async {
                match next_leave {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = linger => {}
            }
            self.step(&*hub, &fanout).await;
        }
    }

    /// One look: what to subscribe and unsubscribe, sent in batches.
    async fn step(&self, hub: &dyn LocalSubscribers, fanout: &Fanout) {
        let (sink, link, fresh, dirty) = {
            let mut s = crate::sync::lock(&self.state);
            let Some(sink) = s.sink.clone() else { return };
            s.retry = None;
            (sink, s.link, s.fresh.take(), std::mem::take(&mut s.dirty))
        };
        // The hub is asked with no lock of ours held (it calls `changed` under its own).
        let candidates: Vec<Arc<str>> = match fresh {
            Some(_) => hub.channels(),
            None => dirty.into_iter().collect(),
        };
        let wanted: Vec<(Arc<str>, bool)> =
            candidates.into_iter().map(|c| (c.clone(), hub.count(&c) > 0)).collect();
        let now = Instant::now();
        let (subscribe, due) = {
            let mut s = crate::sync::lock(&self.state);
            let mut subscribe = Vec::new();
            for (channel, wanted) in wanted {
                match (wanted, s.subscribed.contains(&channel)) {
                    (true, true) => {
                        s.leaving.remove(&channel);
                    }
                    (true, false) => subscribe.push(channel),
                    (false, true) => {
                        s.leaving.entry(channel).or_insert(now);
                    }
                    (false, false) => {
                        // Nothing to make again for a channel nobody wants.
                        s.taken.remove(&channel);
                    }
                }
            }
            // Out of `subscribed` before the last look at the hub: a subscriber that comes
            // back from here on waits in `ready` for a subscription made again, instead of
            // reading history while the unsubscribe is on its way.
            let due: Vec<Arc<str>> = s
                .leaving
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= LINGER)
                .map(|(c, _)| c.clone())
                .collect();
            for c in &due {
                s.leaving.remove(c);
                s.subscribed.remove(c);
            }
            (subscribe, due)
        };
        // Still without subscribers? One that came back within the linger keeps the
        // subscription, which never stopped.
        let (unsubscribe, kept): (Vec<Arc<str>>, Vec<Arc<str>>) =
            due.into_iter().partition(|c| hub.count(c) == 0);
        if !kept.is_empty() {
            let mut s = crate::sync::lock(&self.state);
            if s.link == link {
                s.subscribed.extend(kept);
            }
            drop(s);
            self.confirmed.notify_waiters();
        }
        let mut failed: Vec<Arc<str>> = Vec::new();
        for batch in subscribe.chunks(BATCH) {
            if self.send(&sink, link, batch, true).await {
                // Subscribed again after the cluster took it away: repair what came between.
                let again: Vec<Arc<str>> = {
                    let mut s = crate::sync::lock(&self.state);
                    batch.iter().filter(|c| s.taken.remove(*c)).cloned().collect()
                };
                for channel in again {
                    fanout.resubscribed(&channel);
                }
            } else {
                failed.extend(batch.iter().cloned());
            }
        }
        let sent_all = failed.is_empty();
        for batch in unsubscribe.chunks(BATCH) {
            if !self.send(&sink, link, batch, false).await {
                // Not confirmed: no push will clear these, and the subscription may remain in
                // Redis (what it brings finds no subscriber here).
                let mut s = crate::sync::lock(&self.state);
                for c in batch {
                    s.unsubscribing.remove(c);
                }
            }
        }
        // A channel that gained a subscriber while its unsubscribe was on its way is
        // subscribed again by the next step (the hub's hook marked it).
        if fresh == Some(true) && sent_all {
            let mut s = crate::sync::lock(&self.state);
            s.starting_over = false;
            s.failing_since = None;
            drop(s);
            fanout.relinked();
        }
        // What failed is tried again shortly (a new link starts over by itself): a fresh
        // start whole, so that its repair follows every subscription — for a while.
        if !sent_all {
            let mut s = crate::sync::lock(&self.state);
            if s.link != link {
                return;
            }
            s.dirty.extend(failed.iter().cloned());
            s.retry = Some(Instant::now() + RETRY);
            let waited = now.duration_since(*s.failing_since.get_or_insert(now));
            if fresh == Some(true) && waited >= GIVE_UP_WAITING {
                // Repair now; the channels still failing are repaired once subscribed.
                s.taken.extend(failed);
                s.starting_over = false;
                s.failing_since = None;
                drop(s);
                tracing::warn!("some channels could not be subscribed again in Redis for {GIVE_UP_WAITING:?}; repairing the others now");
                fanout.relinked();
            } else if fresh.is_some() && s.fresh.is_none() {
                s.fresh = fresh;
            }
        }
    }

    async fn send_pubsub(
        &self,
        sink: &PubSubSink,
        batch: &[Arc<str>],
        subscribe: bool,
    ) -> redis::RedisResult<()> {
        let mut names = Vec::with_capacity(batch.len() * 2);
        for channel in batch {
            names.push(publications_channel(channel, false));
            if crate::config::join_leave_on(&self.rules, channel) {
                names.push(events_channel(channel, false));
            }
        }
        let mut sink = sink.clone();
        let command = if subscribe { "subscribe" } else { "unsubscribe" };
        self.commands.get_or_create(&CommandLabels { command }).inc();
        match subscribe {
            true => sink.subscribe(&names).await,
            false => sink.unsubscribe(&names).await,
        }
    }

    async fn send_cluster(
        &self,
        conn: &ClusterConnection,
        batch: &[Arc<str>],
        subscribe: bool,
    ) -> redis::RedisResult<()> {
        {
            let mut s = crate::sync::lock(&self.state);
            match subscribe {
                true => s.requested.extend(batch.iter().cloned()),
                false => s.unsubscribing.extend(batch.iter().cloned()),
            }
        }
        let command = if subscribe { "ssubscribe" } else { "sunsubscribe" };
        let counter = self.commands.get_or_create(&CommandLabels { command }).clone();
        let results: Vec<redis::RedisResult<()>> =
            futures_util::stream::iter(batch.iter().cloned())
                .map(|channel: Arc<str>| {
                    let mut conn = conn.clone();
                    counter.inc();
                    // A channel that announces joins and leaves has their channel too, in the
                    // same slot (its confirmations and moves go by the publications').
                    let events = crate::config::join_leave_on(&self.rules, &channel)
                        .then(|| events_channel(&channel, true));
                    async move {
                        let name = publications_channel(&channel, true);
                        for name in std::iter::once(name).chain(events) {
                            match subscribe {
                                true => conn.ssubscribe(&name).await?,
                                false => conn.sunsubscribe(&name).await?,
                            }
                        }
                        Ok(())
                    }
                })
                .buffer_unordered(CLUSTER_IN_FLIGHT)
                .collect()
                .await;
        results.into_iter().collect()
    }

    /// A cluster's confirmation of `channel`'s subscription: `true` when the cluster client
    /// made it again by itself (after a reconnect or a slot move), so publications may have
    /// been missed meanwhile.
    pub fn confirmed(&self, channel: &str) -> bool {
        let mut s = crate::sync::lock(&self.state);
        !s.requested.remove(channel) && s.subscribed.contains(channel)
    }

    /// A cluster's `sunsubscribe` of `channel`: `true` when the cluster took the subscription
    /// away (its slot moved to another master); it is made again where the slot is now, and
    /// the channel then repaired.
    pub fn taken_away(&self, channel: &str) -> bool {
        let mut s = crate::sync::lock(&self.state);
        if s.unsubscribing.remove(channel) {
            return false;
        }
        let Some(channel) = s.subscribed.take(channel) else { return false };
        s.taken.insert(channel.clone());
        s.dirty.insert(channel);
        drop(s);
        self.wake.notify_one();
        true
    }

    /// Send one batch; false when the link failed (the link task relinks).
    async fn send(&self, sink: &Link, link: u64, batch: &[Arc<str>], subscribe: bool) -> bool {
        let result = match sink {
            Link::PubSub(sink) => self.send_pubsub(sink, batch, subscribe).await,
            Link::Cluster(conn) => self.send_cluster(conn, batch, subscribe).await,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "a Redis subscription command failed");
            return false;
        }
        let mut s = crate::sync::lock(&self.state);
        if s.link != link {
            return false; // another link by now: it subscribes everything itself
        }
        for channel in batch {
            if subscribe {
                s.subscribed.insert(channel.clone());
            } else {
                s.subscribed.remove(channel);
            }
        }
        self.channels.set(s.subscribed.len() as i64);
        drop(s);
        self.confirmed.notify_waiters();
        true
    }
}
