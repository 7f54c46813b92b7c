//! The hub: which connection is subscribed to which channel on this node, and local fan-out.
//!
//! Channels are spread over shards, each behind a std `Mutex`. A publication is encoded **once**
//! per protocol mode and handed to each subscriber as a cheap clone of the same bytes, tagged
//! with its stream position so that the connection can drop what it already delivered (the seam
//! between a recovery replay and live traffic).
//!
//! **No socket I/O under a shard lock** (issue 18). A shard's lock is held for map operations
//! and a publication's decisions only: the pace, whether a sweep takes it, and the channel's
//! cached roster (`Arc<[Subscriber]>`). [`Hub::publish`] releases it before the fan-out writes
//! to anyone, and takes it again briefly to feed the pace; a sweep copies its entries under it
//! and hands them over outside it (`sweep`). So a subscribe or disconnect never waits for a
//! fan-out, whatever shard it hashes to. The only lock held across a socket write here is the
//! subscriber's own mailbox lock (see `mailbox`), which keeps publishers and that connection's
//! task from interleaving. A fan-out works on the roster of the moment the publication came: a
//! subscriber that leaves meanwhile may still be handed it, and its mailbox skips it (no longer
//! subscribed) or refuses it (closed); one that joins meanwhile finds it in the history it reads
//! after joining (the broker assigned the offset before the roster was taken).
//!
//! Offsets are not assigned here: the broker assigns them, and calls [`Hub::publish`] one
//! publication of a channel at a time, in offset order (its channel's delivery turn); with the
//! fan-out outside the shard lock, nothing here would order two concurrent calls. Delivery never
//! blocks the publisher: a subscriber whose bounded queue is full is flagged as a slow consumer
//! and its connection task closes it (1013, "slow consumer").

pub mod announce;
mod answers;
mod losses;
mod pace;
mod sessions;
mod sweep;
mod users;

use crate::config::FanoutSweep;
pub use crate::mailbox::{Delivery, Outbound, OutboundQueue, PushError};
use crate::metrics::Metrics;
pub use crate::publication::{
    render, text_frame, ChannelHook, Compress, ConnId, Mode, Payload, Published,
};
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

pub use answers::MAX_CHANNELS_LISTED;
use pace::{Pace, SAMPLE};
pub use sessions::{Handed, SessionId, Sessions, INBOX_BATCHES};
use sweep::{Entry, Sweep, SweepRun, LAG_SAMPLE, MAX_SWEEP_BACKLOG};
pub use users::{Ordered, Users};
/// The hub's handle on one subscribed connection.
#[derive(Clone)]
pub struct Subscriber {
    pub queue: Arc<OutboundQueue>,
    pub mode: Mode,
}

impl Subscriber {
    pub fn new(queue: Arc<OutboundQueue>, mode: Mode) -> Self {
        Subscriber { queue, mode }
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
    /// While a sweep runs on this channel: what it has yet to hand over (see [`Sweep`]).
    sweep: Option<Sweep>,
    /// The subscribers as a list, for fan-outs and sweeps to go through without the shard lock;
    /// dropped on every change and rebuilt by the next publication or round that needs it.
    roster: Option<Arc<[Subscriber]>>,
}

impl Channel {
    fn new(name: Arc<str>) -> Self {
        Channel {
            name,
            subscribers: HashMap::new(),
            pace: Pace::default(),
            sweep: None,
            roster: None,
        }
    }

    fn roster(&mut self) -> Arc<[Subscriber]> {
        self.roster.get_or_insert_with(|| self.subscribers.values().cloned().collect()).clone()
    }
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

/// A fan-out as decided under the shard lock, to be made after it is released.
struct FanOut {
    name: Arc<str>,
    /// The channel's subscribers when the publication came.
    roster: Arc<[Subscriber]>,
    started: Instant,
    /// Written directly to every ready subscriber; else only to the first `SAMPLE` (to keep
    /// measuring), queued for the rest.
    all_direct: bool,
}

pub struct Hub {
    /// Shared with the sweeps running on its channels.
    shards: Arc<[Shard]>,
    hasher: RandomState,
    metrics: Arc<Metrics>,
    /// Whether publishers may write to ready sockets themselves (see `mailbox`).
    direct: bool,
    /// When channels go out by sweep (only with `direct`).
    sweep: FanoutSweep,
    /// permessage-deflate for publications: `None` off; else (minimum size, channel patterns).
    /// The smallest publication worth compressing, and the channel blocks that say where.
    compression: Option<(usize, Vec<crate::config::ChannelRule>)>,
    /// Where sweeps run: the gateway's runtime (see [`Hub::run_sweeps_on`]).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    /// Join/leave announcements waiting for their channel's next batch.
    announcements: announce::Announcements,
    /// Which connections here belong to which user, and the API's orders waiting for them.
    pub users: Users,
    /// The streaming sessions here, and the inboxes their commands are handed to.
    pub sessions: Sessions,
    /// Told when a channel gains its first or loses its last subscriber (a backplane
    /// subscribes in Redis only to what it will deliver; see `Hub::watch_interest`).
    interest: std::sync::OnceLock<ChannelHook>,
    /// This node's name (see [`Hub::set_name`]) and when it started, for its answers.
    name: std::sync::OnceLock<String>,
    born: Instant,
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
            sweep: FanoutSweep::Auto,
            compression: None,
            runtime: std::sync::OnceLock::new(),
            announcements: announce::Announcements::default(),
            users: Users::default(),
            sessions: Sessions::default(),
            interest: std::sync::OnceLock::new(),
            name: std::sync::OnceLock::new(),
            born: Instant::now(),
        }
    }

    /// Run sweeps on `runtime` (the gateway's), whichever runtime a publication comes from: a
    /// host application may publish from a short-lived one, and a sweep that dies with it
    /// would leave its channel routed to a sweep nobody drains. Until this is called, sweeps
    /// run on the publisher's runtime. The first call wins.
    pub fn run_sweeps_on(&self, runtime: tokio::runtime::Handle) {
        let _ = self.runtime.set(runtime);
    }

    /// Compress publications of at least `min_size` bytes for subscribers that negotiated
    /// permessage-deflate, on every channel whose blocks do not turn `compression` off.
    pub fn compression(mut self, min_size: usize, rules: Vec<crate::config::ChannelRule>) -> Self {
        self.compression = Some((min_size, rules));
        self
    }

    /// When channels go out by sweep; `Auto` by default.
    pub fn fanout_sweep(mut self, when: FanoutSweep) -> Self {
        self.sweep = when;
        self
    }

    /// Turn direct delivery (publishers writing to ready sockets) on or off; on by default.
    pub fn direct_delivery(mut self, on: bool) -> Self {
        self.direct = on;
        self
    }

    fn shard_index(&self, channel: &str) -> usize {
        self.hasher.hash_one(channel) as usize & (self.shards.len() - 1)
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.shard_index(channel)]
    }

    /// A publication rendered and framed once for `mode`, compressed for permessage-deflate
    /// subscribers when compression applies to it.
    fn render_once(
        &self,
        mode: Mode,
        name: &Arc<str>,
        epoch: &Arc<str>,
        offset: u64,
        data: &RawValue,
    ) -> Arc<Published> {
        let text = render(mode, name, epoch, offset, data);
        let compress = match &self.compression {
            Some((min, rules)) => Compress::for_message(
                crate::config::channel_option(rules, name, |r| r.compression).unwrap_or(true),
                text.len(),
                *min as u64,
            ),
            None => Compress::Never,
        };
        Arc::new(Published::with_compression(text, name.clone(), epoch.clone(), offset, compress))
    }

    /// Append a publication to the channel's running sweep. Returns how many subscribers it
    /// is for (the sweep hands it over).
    fn append_to_sweep(
        &self,
        ch: &mut Channel,
        epoch: &Arc<str>,
        offset: u64,
        data: &RawValue,
    ) -> u64 {
        let subscribers = ch.subscribers.len() as u64;
        let name = ch.name.clone();
        let Some(sweep) = ch.sweep.as_mut() else { return 0 };
        let published = |mode| self.render_once(mode, &name, epoch, offset, data);
        if sweep.entries.len() >= MAX_SWEEP_BACKLOG {
            // The sweep is this far behind: drop its oldest. Subscribers that had not had it see
            // a gap and are closed to recover (see `mailbox::Subscriptions::admit`).
            sweep.entries.pop_front();
            self.metrics.fanout_backlog_dropped.inc();
        }
        sweep.entries.push_back(Entry {
            seq: crate::publication::next_sweep_entry(),
            appended: Instant::now(),
            // Subscribers the running round has passed get it in the next one.
            until: sweep.round + u64::from(sweep.in_round),
            json: published(Mode::Json),
            raw: published(Mode::Raw),
        });
        sweep.more.notify_one();
        subscribers
    }

    /// Add a subscriber. Returns the channel's name as the hub holds it (the same `Arc` its
    /// publications are tagged with, so a connection can recognise them by pointer), or `None`
    /// when it was already subscribed.
    pub fn subscribe(&self, channel: &str, conn: ConnId, sub: Subscriber) -> Option<Arc<str>> {
        let mut shard = crate::sync::lock(self.shard(channel));
        let key = match shard.get_key_value(channel) {
            Some((key, _)) => key.clone(),
            None => Arc::from(channel),
        };
        let ch = shard.entry(key.clone()).or_insert_with(|| Channel::new(key.clone()));
        if ch.subscribers.contains_key(&conn) {
            return None;
        }
        if ch.subscribers.is_empty() {
            if let Some(hook) = self.interest.get() {
                hook(&key);
            }
        }
        ch.subscribers.insert(conn, sub);
        ch.roster = None;
        self.metrics.subscriptions.inc();
        Some(key)
    }

    /// Remove a subscriber; drops the channel when it was the last one.
    pub fn unsubscribe(&self, channel: &str, conn: ConnId) -> bool {
        let mut shard = crate::sync::lock(self.shard(channel));
        let Some(subscribers) = shard.get_mut(channel) else { return false };
        let removed = subscribers.remove(&conn).is_some();
        if removed {
            self.metrics.subscriptions.dec();
            subscribers.roster = None;
        }
        if subscribers.is_empty() {
            if let Some((name, _)) = shard.remove_entry(channel) {
                if let Some(hook) = self.interest.get() {
                    hook(&name);
                }
            }
        }
        removed
    }

    /// Hand a publication to every local subscriber of `channel`; returns how many took it.
    ///
    /// Callers deliver one publication of a channel at a time, in offset order (the broker's
    /// delivery turn, the Redis link's one task, the dashboard's one sampler): the fan-out runs
    /// outside the shard lock, so nothing here orders two concurrent calls on one channel.
    pub fn publish(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: &RawValue) -> u64 {
        let index = self.shard_index(channel);
        // Under the shard lock: only the decisions (pace, sweep) and the roster to fan out to.
        let plan = {
            let mut shard = crate::sync::lock(&self.shards[index]);
            let Some(ch) = shard.get_mut(channel) else { return 0 };
            let started = Instant::now();
            let sparse = ch.pace.publication(started, ch.subscribers.len());
            // Too dense for one direct fan-out per publication, or too long a fan-out for its
            // publisher to wait for (or a sweep already holds earlier ones, which must go
            // first): hand it to a sweep.
            let sweep = match self.sweep {
                _ if !self.direct => false,
                FanoutSweep::Auto => {
                    !sparse || ch.pace.too_long_for_publisher(ch.subscribers.len())
                }
                FanoutSweep::Always => true,
                FanoutSweep::Never => false,
            };
            // Without a runtime to run a new sweep on, the fan-out is queued instead.
            let runtime = match ch.sweep.is_none() && sweep {
                true => self.runtime.get().cloned().or_else(|| Handle::try_current().ok()),
                false => None,
            };
            if let Some(runtime) = runtime {
                let id = crate::publication::sweep_position() + 1;
                ch.sweep = Some(Sweep {
                    id,
                    entries: VecDeque::new(),
                    round: 0,
                    in_round: false,
                    more: Arc::default(),
                });
                let run = SweepRun {
                    shards: self.shards.clone(),
                    index,
                    name: ch.name.clone(),
                    id,
                    metrics: self.metrics.clone(),
                    always: self.sweep == FanoutSweep::Always,
                };
                runtime.spawn(run.run());
                self.metrics.fanout_sweeps.inc();
            }
            if ch.sweep.is_some() {
                return self.append_to_sweep(ch, epoch, offset, data);
            }
            let all_direct = sparse && self.direct && !sweep;
            FanOut { name: ch.name.clone(), roster: ch.roster(), started, all_direct }
        };
        let (delivered, took) = self.fan_out(&plan, epoch, offset, data);
        if let Some((took, written)) = took {
            // Back under the lock for the pace only; the channel may be gone by now.
            let mut shard = crate::sync::lock(&self.shards[index]);
            if let Some(ch) = shard.get_mut(channel) {
                ch.pace.direct_took(took, written);
            }
        }
        delivered
    }

    /// Hand a publication to the roster now, holding no lock of the hub's: written directly to
    /// ready sockets (see [`FanOut`]), queued for the others. Returns how many took it and, for
    /// the channel's pace, how long the direct writes took and how many were made.
    fn fan_out(
        &self,
        plan: &FanOut,
        epoch: &Arc<str>,
        offset: u64,
        data: &RawValue,
    ) -> (u64, Option<(Duration, u64)>) {
        let FanOut { name, roster, started, all_direct } = plan;
        let (started, all_direct) = (*started, *all_direct);
        // Queued fan-outs still send to a few subscribers directly, to keep measuring.
        let sample = if self.direct { SAMPLE } else { 0 };
        let mut sampled = None;
        // Encode once per mode, lazily; every subscriber gets a reference to the same one.
        let mut json: Option<Arc<Published>> = None;
        let mut raw: Option<Arc<Published>> = None;
        let (mut delivered, mut written, mut written_bytes, mut dropped) = (0, 0, 0, 0);
        for (i, sub) in roster.iter().enumerate() {
            if i == sample && !all_direct {
                sampled = Some((started.elapsed(), written));
            }
            let direct = all_direct || i < sample;
            let slot = match sub.mode {
                Mode::Json => &mut json,
                Mode::Raw | Mode::Echo => &mut raw,
            };
            let publication = slot
                .get_or_insert_with(|| self.render_once(sub.mode, name, epoch, offset, data))
                .clone();
            if (i as u64).is_multiple_of(LAG_SAMPLE) {
                self.metrics.delivery_lag.observe(started.elapsed().as_secs_f64());
            }
            match sub.queue.deliver(publication, direct) {
                Ok(Delivery::Queued) => delivered += 1,
                Ok(Delivery::Partial) => {
                    delivered += 1;
                    self.metrics.direct_partial_writes.inc();
                }
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
        let took = match sampled {
            _ if all_direct => Some((started.elapsed(), written)),
            sampled => sampled,
        };
        let m = &self.metrics;
        m.fanout_seconds.observe(started.elapsed().as_secs_f64());
        let compressed = [&json, &raw].into_iter().flatten().filter(|p| p.is_compressed()).count();
        m.publications_compressed.inc_by(compressed as u64);
        m.deliveries.inc_by(delivered);
        m.deliveries_dropped.inc_by(dropped);
        m.direct_deliveries.inc_by(written);
        m.messages_out.inc_by(written);
        m.bytes_out.inc_by(written_bytes);
        (delivered, took)
    }

    /// Call `hook` (under the shard lock) whenever a channel gains its first or loses its last
    /// subscriber. Set once; a second call is ignored.
    pub fn watch_interest(&self, hook: ChannelHook) {
        let _ = self.interest.set(hook);
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        crate::sync::lock(self.shard(channel)).get(channel).map_or(0, |s| s.len())
    }

    /// Whether `channel` has a subscriber on this node.
    pub fn has_subscribers(&self, channel: &str) -> bool {
        crate::sync::lock(self.shard(channel)).contains_key(channel)
    }

    /// Channels with local subscribers that `keep` accepts, with their counts, the most
    /// subscribed first; at most `limit`.
    pub fn channels(&self, keep: impl Fn(&str) -> bool, limit: usize) -> Vec<(Arc<str>, usize)> {
        let mut all = Vec::new();
        for shard in self.shards.iter() {
            let shard = crate::sync::lock(shard);
            all.extend(shard.iter().filter(|(n, _)| keep(n)).map(|(n, c)| (n.clone(), c.len())));
        }
        all.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }

    /// Channels with at least one local subscriber.
    pub fn channel_count(&self) -> usize {
        self.shards.iter().map(|s| crate::sync::lock(s).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::sweep::{SWEEP_CHUNK, SWEEP_LINGER};
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
        (Subscriber::new(queue.clone(), mode), Rx(queue))
    }

    fn data(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn text(o: Outbound) -> String {
        match o {
            Outbound::Publication(p) | Outbound::Admitted { publication: p, .. } => {
                String::from_utf8_lossy(p.payload.as_bytes()).into_owned()
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

    #[test]
    fn a_shard_poisoned_by_a_panic_keeps_serving() {
        // One lock policy (sync.rs): a panic while a shard was locked must not make every later
        // subscribe, publish and unsubscribe (run by `Drop for Connection`, maybe while
        // unwinding) panic too.
        let hub = Arc::new(Hub::new(Arc::default()));
        let (a, _ra) = sub(Mode::Raw, 4);
        hub.subscribe("c", 1, a);
        let poisoner = hub.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.shard("c").lock();
            panic!("a bug while holding the shard");
        })
        .join();
        assert!(hub.shard("c").is_poisoned());
        assert_eq!(hub.publish("c", &Arc::from("e"), 1, &data("1")), 1);
        assert!(hub.unsubscribe("c", 1));
        assert_eq!(hub.channel_count(), 0);
    }

    /// Subscribe as a connection does: in the hub, then in its mailbox (with the hub's name).
    fn join(hub: &Hub, channel: &str, id: ConnId, s: Subscriber) {
        let queue = s.queue.clone();
        let name = hub.subscribe(channel, id, s).expect("a new subscription");
        queue.with_subscriptions(|subs| subs.insert(name));
    }

    /// A hub whose every publication goes out by sweep.
    fn sweeping_hub() -> (Hub, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        (Hub::new(metrics.clone()).fanout_sweep(FanoutSweep::Always), metrics)
    }

    /// The offsets of the publications queued for `rx`, in order.
    fn offsets(rx: &mut Rx) -> Vec<u64> {
        std::iter::from_fn(|| rx.try_recv()).filter_map(|o| position(&o).map(|p| p.2)).collect()
    }

    /// Let the sweeps run until `done` holds (they yield between chunks), at most 5 s.
    async fn until(mut done: impl FnMut() -> bool) {
        // Bounded in passes too: with the clock paused, the timeout alone would never fire.
        let passes = tokio::time::timeout(Duration::from_secs(5), async {
            let mut passes = 0;
            while !done() && passes < 1_000_000 {
                tokio::task::yield_now().await;
                passes += 1;
            }
            passes
        })
        .await;
        assert!(matches!(passes, Ok(p) if p < 1_000_000), "the sweep never got there");
    }

    fn sweeping(hub: &Hub, channel: &str) -> bool {
        hub.shard(channel).lock().unwrap().get(channel).is_some_and(|c| c.sweep.is_some())
    }

    #[tokio::test]
    async fn a_sweep_hands_everyone_every_publication_once_in_order() {
        let (hub, metrics) = sweeping_hub();
        let epoch: Arc<str> = Arc::from("e1");
        // More subscribers than one chunk, both modes.
        let mut rxs = Vec::new();
        for id in 0..(SWEEP_CHUNK as u64 * 3 + 5) {
            let (s, rx) = sub(if id % 2 == 0 { Mode::Raw } else { Mode::Json }, 4096);
            join(&hub, "c", id, s);
            rxs.push(rx);
        }
        let mut late = None;
        for offset in 1..=200 {
            let subscribers = rxs.len() as u64 + u64::from(late.is_some());
            assert_eq!(hub.publish("c", &epoch, offset, &data(&offset.to_string())), subscribers);
            if offset == 100 {
                // Joins mid-stream: it gets what was published after, and nothing before.
                let (s, rx) = sub(Mode::Raw, 4096);
                join(&hub, "c", 999, s);
                late = Some(rx);
            }
            if offset % 30 == 0 {
                // Let the sweep get partway round, so publications join rounds in progress.
                tokio::task::yield_now().await;
            }
        }
        until(|| metrics.deliveries.get() >= rxs.len() as u64 * 200 + 100).await;
        let want: Vec<u64> = (1..=200).collect();
        for rx in &mut rxs {
            assert_eq!(offsets(rx), want);
        }
        assert_eq!(offsets(late.as_mut().unwrap()), (101..=200).collect::<Vec<_>>());
        assert_eq!(metrics.fanout_sweeps.get(), 1, "one sweep served the whole burst");
    }

    #[tokio::test]
    async fn a_full_queue_in_a_sweep_flags_only_that_subscriber() {
        let (hub, metrics) = sweeping_hub();
        let epoch: Arc<str> = Arc::from("e1");
        let (small, _small_rx) = sub(Mode::Raw, 3);
        let small_queue = small.queue.clone();
        join(&hub, "c", 1, small);
        let (big, mut big_rx) = sub(Mode::Raw, 64);
        join(&hub, "c", 2, big);
        for offset in 1..=10 {
            hub.publish("c", &epoch, offset, &data("1"));
        }
        until(|| metrics.deliveries.get() >= 13).await;
        assert!(small_queue.overflowed(), "the small queue overflowed: a slow consumer");
        assert_eq!(offsets(&mut big_rx), (1..=10).collect::<Vec<_>>());
        assert!(metrics.deliveries_dropped.get() >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_sweep_ends_and_a_later_publication_starts_another() {
        let (hub, metrics) = sweeping_hub();
        let epoch: Arc<str> = Arc::from("e1");
        let (s, mut rx) = sub(Mode::Raw, 64);
        join(&hub, "c", 1, s);
        hub.publish("c", &epoch, 1, &data("1"));
        until(|| metrics.deliveries.get() == 1).await;
        assert!(sweeping(&hub, "c"), "it lingers for more");
        tokio::time::sleep(SWEEP_LINGER * 2).await;
        assert!(!sweeping(&hub, "c"), "it ended once idle");
        hub.publish("c", &epoch, 2, &data("2"));
        until(|| metrics.deliveries.get() == 2).await;
        assert_eq!(metrics.fanout_sweeps.get(), 2);
        assert_eq!(offsets(&mut rx), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_sweep_drops_its_oldest_beyond_the_backlog_limit() {
        let (hub, metrics) = sweeping_hub();
        let epoch: Arc<str> = Arc::from("e1");
        let (s, mut rx) = sub(Mode::Raw, 4096);
        join(&hub, "c", 1, s);
        let total = MAX_SWEEP_BACKLOG as u64 + 10;
        // No yield: the sweep has not begun, all of it waits in its backlog.
        for offset in 1..=total {
            hub.publish("c", &epoch, offset, &data("1"));
        }
        assert_eq!(metrics.fanout_backlog_dropped.get(), 10);
        until(|| metrics.deliveries.get() == MAX_SWEEP_BACKLOG as u64).await;
        // The connection meets the gap when it admits offset 11 after nothing (see `admit`).
        assert_eq!(offsets(&mut rx), (11..=total).collect::<Vec<_>>());
    }

    /// A waker that stands for a slow socket write: the first delivery that wakes the
    /// connection's task (a queued one, inside `OutboundQueue::deliver` or `hand_over`) tells
    /// the test it is there and waits, mid-fan-out, until the test lets it go.
    struct Stall {
        entered: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl std::task::Wake for Stall {
        fn wake(self: Arc<Self>) {
            let _ = crate::sync::lock(&self.entered).send(());
            let _ = crate::sync::lock(&self.release).recv();
        }
    }

    /// Make the next delivery to `queue` stall: returns (it stalled, let it go).
    fn stall(
        queue: &OutboundQueue,
    ) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        let (entered, stalled) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel();
        let stall = Stall { entered: Mutex::new(entered), release: Mutex::new(released) };
        let waker = std::task::Waker::from(Arc::new(stall));
        let _ = queue.poll_ready(&mut std::task::Context::from_waker(&waker));
        (stalled, release)
    }

    /// A channel other than `channel` in the same shard.
    fn neighbour(hub: &Hub, channel: &str) -> String {
        let shard = hub.shard_index(channel);
        (0..).map(|n| format!("n{n}")).find(|c| hub.shard_index(c) == shard).unwrap()
    }

    /// While a delivery is stalled (`stall`), subscribe and unsubscribe on `channels` from
    /// another thread; whether that finished within 2 s. Then lets the delivery go.
    fn churn_while_stalled(
        hub: &Arc<Hub>,
        channels: Vec<String>,
        release: std::sync::mpsc::Sender<()>,
    ) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        let churner = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                for (i, channel) in channels.iter().enumerate() {
                    let (s, _rx) = sub(Mode::Raw, 8);
                    let id = 1000 + i as ConnId;
                    assert!(hub.subscribe(channel, id, s).is_some());
                    assert!(hub.unsubscribe(channel, id));
                }
                let _ = done.send(());
            })
        };
        let in_time = finished.recv_timeout(Duration::from_secs(2)).is_ok();
        release.send(()).unwrap();
        churner.join().unwrap();
        in_time
    }

    #[test]
    fn a_stalled_fan_out_holds_no_shard_lock() {
        // Issue 18: no socket I/O under a shared lock. A subscribe or disconnect on a channel
        // of the same shard, or on the channel itself, must not wait for a fan-out's writes.
        let hub = Arc::new(Hub::new(Arc::default()));
        let (s, mut rx) = sub(Mode::Raw, 8);
        let (stalled, release) = stall(&s.queue);
        join(&hub, "c", 1, s);
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || hub.publish("c", &Arc::from("e"), 1, &data("1")))
        };
        stalled.recv_timeout(Duration::from_secs(10)).expect("the fan-out reached the subscriber");
        let in_time = churn_while_stalled(&hub, vec![neighbour(&hub, "c"), "c".into()], release);
        assert_eq!(publisher.join().unwrap(), 1, "the receipt counts the delivery");
        assert!(in_time, "a subscribe in the fan-out's shard waited for its delivery");
        assert_eq!(offsets(&mut rx), vec![1]);
    }

    #[test]
    fn a_stalled_sweep_holds_no_shard_lock() {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        let (hub, _metrics) = sweeping_hub();
        let hub = Arc::new(hub);
        hub.run_sweeps_on(runtime.handle().clone());
        let (s, mut rx) = sub(Mode::Raw, 8);
        let (stalled, release) = stall(&s.queue);
        join(&hub, "c", 1, s);
        assert_eq!(hub.publish("c", &Arc::from("e"), 1, &data("1")), 1);
        stalled.recv_timeout(Duration::from_secs(10)).expect("the sweep reached the subscriber");
        let in_time = churn_while_stalled(&hub, vec![neighbour(&hub, "c"), "c".into()], release);
        assert!(in_time, "a subscribe in the sweep's shard waited for its hand-over");
        runtime.shutdown_timeout(Duration::from_secs(5));
        assert_eq!(offsets(&mut rx), vec![1]);
    }

    #[test]
    fn a_large_channels_publisher_does_not_wait_for_its_fan_out() {
        // Issue 19: publishing answers once the publication is handed over, whatever the
        // audience. A channel too large for its publisher to write to itself goes by sweep even
        // when its publications are sparse: a stalled subscriber holds up the sweep, not the
        // publisher (before: the publisher wrote to all 301 itself, and waited on the stall).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let hub = Arc::new(Hub::new(Arc::default()).fanout_sweep(FanoutSweep::Auto));
        hub.run_sweeps_on(runtime.handle().clone());
        let mut rxs: Vec<_> = (0..300)
            .map(|id| {
                let (s, rx) = sub(Mode::Raw, 8);
                join(&hub, "c", id, s);
                rx
            })
            .collect();
        let (s, stalled_rx) = sub(Mode::Raw, 8);
        let (stalled, release) = stall(&s.queue);
        join(&hub, "c", 300, s);
        rxs.push(stalled_rx);
        let (answered, answer) = std::sync::mpsc::channel();
        let publisher = {
            let hub = hub.clone();
            std::thread::spawn(move || {
                answered.send(hub.publish("c", &Arc::from("e"), 1, &data("1"))).unwrap();
            })
        };
        let receipt = answer.recv_timeout(Duration::from_secs(2));
        stalled.recv_timeout(Duration::from_secs(10)).expect("the fan-out reached the subscriber");
        release.send(()).unwrap();
        publisher.join().unwrap();
        assert_eq!(receipt, Ok(301), "the publisher waited for the fan-out");
        let everyone = runtime.block_on(async {
            let mut got = vec![Vec::new(); rxs.len()];
            until(|| {
                for (rx, got) in rxs.iter_mut().zip(got.iter_mut()) {
                    got.extend(offsets(rx));
                }
                got.iter().all(|g| !g.is_empty())
            })
            .await;
            got
        });
        assert!(everyone.iter().all(|g| g == &[1]), "each subscriber has publication 1 once");
        runtime.shutdown_timeout(Duration::from_secs(5));
    }

    #[test]
    fn concurrent_publishers_reach_every_subscriber_in_offset_order() {
        // The broker assigns offsets and delivers one publication of a channel at a time; the
        // hub's fan-out runs outside its shard lock, so this order is the broker's to keep.
        let hub = Arc::new(Hub::new(Arc::default()));
        let broker = Arc::new(crate::broker::MemoryBroker::new(hub.clone(), Vec::new(), 10));
        let mut rxs = Vec::new();
        for id in 0..8 {
            let (s, rx) = sub(if id % 2 == 0 { Mode::Raw } else { Mode::Json }, 4096);
            join(&hub, "c", id, s);
            rxs.push(rx);
        }
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let broker = broker.clone();
                std::thread::spawn(move || {
                    let one = data("1");
                    for _ in 0..250 {
                        let publish = crate::broker::Broker::publish(&*broker, "c", &one, None);
                        let receipt = futures_util::FutureExt::now_or_never(publish).unwrap();
                        assert_eq!(receipt.unwrap().delivered, 8);
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        for rx in &mut rxs {
            assert_eq!(offsets(rx), (1..=1000).collect::<Vec<_>>());
        }
    }

    #[test]
    fn without_a_runtime_a_dense_channel_is_queued() {
        let (hub, metrics) = sweeping_hub();
        let (s, mut rx) = sub(Mode::Raw, 8);
        join(&hub, "c", 1, s);
        assert_eq!(hub.publish("c", &Arc::from("e"), 1, &data("1")), 1);
        assert_eq!(metrics.fanout_sweeps.get(), 0);
        assert_eq!(offsets(&mut rx), vec![1]);
    }
}
