//! The single-node broker: streams (offsets, history, idempotency keys) and presence in this
//! process.

use super::*;
use crate::config::ChannelRule;
use crate::presence::{LocalPresence, Member};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;
use tether_core::protocol::PresenceChange;
use tether_core::stream::{Recovery, Stream};

/// A join or leave, followed by the user's `user_join` / `user_leave` when it was the user's
/// first or last subscription to the channel.
fn changes(
    change: PresenceChange,
    member: &Member,
    user_edge: bool,
) -> Vec<crate::presence::Announcement> {
    let info: Arc<str> = member.to_json().into();
    let mut out = vec![(change, info.clone())];
    if user_edge && member.user.is_some() {
        let user_change = match change {
            PresenceChange::Join => PresenceChange::UserJoin,
            _ => PresenceChange::UserLeave,
        };
        out.push((user_change, info));
    }
    out
}

/// A channel in the memory broker: an entry of its own, so that a shard's lock is held only to
/// find it (or make it).
struct Channel {
    /// The channel's delivery turn: held by a publisher from the offset's assignment to the end
    /// of its delivery, so that this channel's publications reach the hub one at a time, in
    /// offset order. Only later publishers to the same channel wait on it (as they must, for
    /// that order); history reads, idempotency checks and housekeeping never take it.
    turn: Mutex<()>,
    /// The stream, locked briefly (append, read, check a key), never across a delivery.
    state: Mutex<Entry>,
}

struct Entry {
    epoch: Arc<str>,
    stream: Stream<Arc<RawValue>>,
    keys: RecentKeys,
    /// Dropped by housekeeping: a publisher that still holds the `Channel` looks it up again.
    gone: bool,
}

/// Idempotency keys used in one channel, with the offset each one published; bounded in count
/// and forgotten after their window.
#[derive(Default)]
struct RecentKeys {
    /// Key → (offset, remembered until).
    offsets: HashMap<Box<str>, (u64, Instant)>,
    /// Keys in the order they were remembered, to forget the oldest first.
    order: std::collections::VecDeque<(Instant, Box<str>)>,
}

impl RecentKeys {
    fn offset_of(&mut self, key: &str, now: Instant) -> Option<u64> {
        self.forget_expired(now);
        self.offsets.get(key).filter(|(_, until)| *until > now).map(|(offset, _)| *offset)
    }

    /// Forget the keys whose window has passed (the oldest first: one window for all keys keeps
    /// `order` sorted by expiry). Once none is left, their memory is given back too.
    fn forget_expired(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(until, _)| *until <= now) {
            let (_, old) = self.order.pop_front().expect("checked");
            self.offsets.remove(&old);
        }
        if self.order.is_empty() && self.offsets.capacity() > 0 {
            *self = RecentKeys::default();
        }
    }

    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn remember(&mut self, key: &str, offset: u64, until: Instant) {
        if self.order.len() >= MAX_IDEMPOTENCY_KEYS {
            let (_, old) = self.order.pop_front().expect("full");
            self.offsets.remove(&old);
        }
        self.offsets.insert(key.into(), (offset, until));
        self.order.push_back((until, key.into()));
    }
}

type Shard = Mutex<HashMap<Arc<str>, Arc<Channel>>>;

/// Single-node broker: streams in memory; publishing is local fan-out.
///
/// A channel's stream is made by its first publication, never by a subscribe (as in the Redis
/// scripts): subscribers alone cannot use up `max_channels`. Before it exists a channel answers
/// epoch `""` and offset 0. A stream lives while it has history, idempotency keys within their
/// window, or local subscribers; an idle one is dropped by [`Broker::maintain`] (its next
/// incarnation gets a new epoch, so a client holding the old one is told `recovered: false`
/// instead of being handed a false continuation).
///
/// Locks: a shard's (64 of them) only to find or make a channel's entry, and to drop idle ones;
/// then the channel's stream lock, briefly; a publisher delivers holding its channel's delivery
/// turn only (see [`Channel`]). The only lock held across socket writes is that turn (and, in
/// the hub, the subscriber's own mailbox lock).
pub struct MemoryBroker {
    hub: Arc<dyn LocalSubscribers>,
    rules: Vec<ChannelRule>,
    shards: Box<[Shard]>,
    hasher: RandomState,
    /// Streams held, and the most allowed.
    streams: AtomicUsize,
    max_streams: usize,
    /// Idempotency keys held, as counted by the last housekeeping.
    keys: AtomicUsize,
    presence: LocalPresence,
}

impl MemoryBroker {
    pub fn new(
        hub: Arc<dyn LocalSubscribers>,
        rules: Vec<ChannelRule>,
        max_streams: usize,
    ) -> Self {
        MemoryBroker {
            hub,
            rules,
            shards: (0..64).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            streams: AtomicUsize::new(0),
            max_streams,
            keys: AtomicUsize::new(0),
            presence: LocalPresence::default(),
        }
    }

    fn shard(&self, channel: &str) -> &Shard {
        &self.shards[self.hasher.hash_one(channel) as usize % self.shards.len()]
    }

    /// The channel's entry, made when needed (and allowed). The shard is locked for this only.
    fn channel(&self, channel: &str) -> Result<Arc<Channel>, BrokerError> {
        let mut shard = crate::sync::lock(self.shard(channel));
        if let Some(entry) = shard.get(channel) {
            return Ok(entry.clone());
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
            keys: RecentKeys::default(),
            gone: false,
        };
        let entry = Arc::new(Channel { turn: Mutex::new(()), state: Mutex::new(entry) });
        shard.insert(Arc::from(channel), entry.clone());
        Ok(entry)
    }

    /// See [`Broker::publish`]. The offset is assigned and the key remembered under the
    /// stream's lock, briefly; the delivery holds the channel's turn only, taken before the
    /// offset so that turns follow offsets. A retried key is answered without waiting for it.
    fn publish_now(
        &self,
        channel: &str,
        data: &RawValue,
        once: Option<Once<'_>>,
    ) -> Result<PublishReceipt, BrokerError> {
        let duplicate = |entry: &mut Entry, once: Option<Once<'_>>, now| {
            let offset = entry.keys.offset_of(once?.key, now)?;
            let epoch = entry.epoch.clone();
            Some(PublishReceipt { epoch, offset, delivered: 0, duplicate: true })
        };
        loop {
            let ch = self.channel(channel)?;
            if once.is_some() {
                let mut entry = crate::sync::lock(&ch.state);
                if entry.gone {
                    continue;
                }
                if let Some(receipt) = duplicate(&mut entry, once, Instant::now()) {
                    return Ok(receipt);
                }
            }
            let _turn = crate::sync::lock(&ch.turn);
            let (epoch, offset) = {
                let mut entry = crate::sync::lock(&ch.state);
                if entry.gone {
                    // Dropped as idle since it was looked up: publish into its successor.
                    continue;
                }
                let now = Instant::now();
                // (Again: the same key may have been published while this one waited its turn.)
                if let Some(receipt) = duplicate(&mut entry, once, now) {
                    return Ok(receipt);
                }
                let offset = entry.stream.append(Arc::from(data.to_owned()), now);
                if let Some(once) = once {
                    entry.keys.remember(once.key, offset, now + once.window);
                }
                (entry.epoch.clone(), offset)
            };
            let delivered = self.hub.deliver(channel, &epoch, offset, data);
            return Ok(PublishReceipt { epoch, offset, delivered, duplicate: false });
        }
    }

    /// See [`Broker::history`]. Read only: a channel without a stream has had no publication
    /// (or none since its stream was dropped as idle), and reading creates nothing. Never waits
    /// for a delivery: what it reads may include a publication still being delivered, which
    /// the subscriber (in the hub already) then also receives live and skips as a duplicate.
    fn read_history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        max_bytes: u64,
    ) -> History {
        let ch = crate::sync::lock(self.shard(channel)).get(channel).cloned();
        let mut state = ch.as_ref().map(|ch| crate::sync::lock(&ch.state));
        let mut entry = state.as_deref_mut().filter(|entry| !entry.gone);
        let position = match &entry {
            Some(entry) => entry.stream.position(),
            None => StreamPosition { epoch: String::new(), offset: 0 },
        };
        let Some(since) = since else { return History::current(position) };
        if let Some(why) = NotRecovered::check(since, &position) {
            return History::not_recovered(position, why);
        }
        // No stream, and the client saw none either: nothing was published since.
        let Some(entry) = entry.as_mut() else { return History::recovered(position, Vec::new()) };
        let Recovery::Recovered(publications) = entry.stream.recover(since, Instant::now()) else {
            return History::not_recovered(position, NotRecovered::HistoryGone);
        };
        // (The publications are shared with the history: reading them copies no data.)
        let bytes = publications.iter().map(|(_, data)| data.get().len() as u64).sum::<u64>();
        if bytes > max_bytes {
            return History::not_recovered(position, NotRecovered::OverBudget { bytes });
        }
        History::recovered(position, publications)
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
        once: Option<Once<'a>>,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>> {
        let result = self.publish_now(channel, data, once);
        Box::pin(std::future::ready(result))
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.read_history(channel, since, max_bytes))))
    }

    fn maintain(&self) {
        let now = Instant::now();
        let mut keys = 0;
        for shard in self.shards.iter() {
            let mut shard = crate::sync::lock(shard);
            let before = shard.len();
            shard.retain(|channel, ch| {
                // The stream's lock, not its turn: housekeeping never waits for a delivery.
                let mut entry = crate::sync::lock(&ch.state);
                entry.keys.forget_expired(now);
                keys += entry.keys.len();
                // (`is_idle` expires history first, so it goes on every pass.)
                let keep = !entry.stream.is_idle(now)
                    || entry.keys.len() > 0
                    || self.hub.count(channel) > 0;
                entry.gone = !keep;
                keep
            });
            self.streams.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
        self.keys.store(keys, Ordering::Relaxed);
    }

    fn held(&self) -> Held {
        Held {
            streams: Some(self.stream_count()),
            idempotency_keys: Some(self.keys.load(Ordering::Relaxed)),
        }
    }

    fn presence_join(&self, channel: &str, member: Arc<Member>) {
        let change = self.presence.join(channel, member.clone());
        if change.changed && crate::config::join_leave_on(&self.rules, channel) {
            self.hub.announce(channel, changes(PresenceChange::Join, &member, change.user_edge));
        }
    }

    fn presence_leave(&self, channel: &str, client: &str) {
        let Some((member, change)) = self.presence.leave(channel, client) else { return };
        if crate::config::join_leave_on(&self.rules, channel) {
            self.hub.announce(channel, changes(PresenceChange::Leave, &member, change.user_edge));
        }
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<Member>>, BrokerError>> {
        Box::pin(std::future::ready(Ok(self.presence.members(channel))))
    }

    fn presence_entries(&self) -> usize {
        self.presence.entries()
    }

    fn order(&self, order: UserOrder) -> BoxFuture<'_, Result<Reach, BrokerError>> {
        let reached = self.hub.order(order);
        Box::pin(std::future::ready(Ok(Reach::Connections(reached))))
    }

    fn survey(
        &self,
        question: crate::control::Question,
    ) -> BoxFuture<'_, Result<crate::control::Answers, BrokerError>> {
        let answers = vec![self.hub.answer(&question)];
        Box::pin(std::future::ready(Ok(crate::control::Answers { answers, missing: 0 })))
    }

    fn history_remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        let ch = crate::sync::lock(self.shard(channel)).get(channel).cloned();
        if let Some(ch) = ch {
            crate::sync::lock(&ch.state).stream.clear_history();
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryRule;
    use tether_core::channel::ChannelPattern;

    fn broker(max: usize) -> MemoryBroker {
        let rules = vec![HistoryRule {
            pattern: ChannelPattern::new("chat:*"),
            size: 3,
            ttl: Duration::from_secs(60),
        }
        .into()];
        MemoryBroker::new(Arc::new(crate::hub::Hub::new(Arc::default())), rules, max)
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
        let r1 = now(b.publish("chat:a", &raw("1"), None)).unwrap();
        let r2 = now(b.publish("chat:a", &raw("2"), None)).unwrap();
        assert_eq!((r1.offset, r2.offset, r1.epoch == r2.epoch), (1, 2, true));
        let since = StreamPosition { epoch: r1.epoch.to_string(), offset: 1 };
        let h = now(b.history("chat:a", Some(&since), u64::MAX)).unwrap();
        assert_eq!(h.recovered, Some(true));
        assert_eq!(h.position.offset, 2);
        assert_eq!(
            h.publications.iter().map(|(o, d)| (*o, d.get())).collect::<Vec<_>>(),
            [(2, "2")]
        );
        // No history policy for `news`: only an up-to-date client recovers.
        now(b.publish("news", &raw("1"), None)).unwrap();
        let h = now(b.history("news", None, u64::MAX)).unwrap();
        assert_eq!((h.recovered, h.position.offset), (None, 1));
    }

    #[test]
    fn an_idempotency_key_publishes_once_within_its_window() {
        let b = broker(10);
        let once = |key| Some(Once { key, window: Duration::from_secs(60) });
        let first = now(b.publish("chat:a", &raw("1"), once("k1"))).unwrap();
        let again = now(b.publish("chat:a", &raw("1"), once("k1"))).unwrap();
        assert_eq!((first.offset, first.duplicate), (1, false));
        assert_eq!((again.offset, again.duplicate, &again.epoch), (1, true, &first.epoch));
        // Another key, or the same key in another channel, publishes.
        assert_eq!(now(b.publish("chat:a", &raw("2"), once("k2"))).unwrap().offset, 2);
        assert!(!now(b.publish("chat:b", &raw("1"), once("k1"))).unwrap().duplicate);
        // Only one publication per key reached the history.
        let since = StreamPosition { epoch: first.epoch.to_string(), offset: 0 };
        assert_eq!(now(b.history("chat:a", Some(&since), u64::MAX)).unwrap().publications.len(), 2);
        // A zero window remembers nothing.
        let none = Some(Once { key: "k3", window: Duration::ZERO });
        now(b.publish("chat:a", &raw("3"), none)).unwrap();
        assert!(!now(b.publish("chat:a", &raw("3"), none)).unwrap().duplicate);
    }

    #[test]
    fn idempotency_keys_are_bounded_per_channel() {
        let mut keys = RecentKeys::default();
        let (now, later) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        for n in 0..MAX_IDEMPOTENCY_KEYS as u64 + 5 {
            keys.remember(&n.to_string(), n, later);
        }
        assert_eq!(keys.offsets.len(), MAX_IDEMPOTENCY_KEYS);
        assert_eq!(keys.offset_of("0", now), None, "the oldest were forgotten first");
        assert_eq!(keys.offset_of("5", now), Some(5));
        assert_eq!(keys.offset_of("5", later), None, "and all after their window");
        assert!(keys.order.is_empty());
    }

    /// Idempotency keys held in all the broker's streams.
    fn keys_held(b: &MemoryBroker) -> usize {
        b.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap();
                shard.values().map(|c| c.state.lock().unwrap().keys.offsets.len()).sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn subscribing_creates_no_stream() {
        let b = broker(1);
        let h = now(b.history("chat:a", None, u64::MAX)).unwrap();
        assert_eq!((h.position.epoch.as_str(), h.position.offset, h.recovered), ("", 0, None));
        // A client that saw the channel before anything was published, and nothing since.
        let never = StreamPosition { epoch: String::new(), offset: 0 };
        assert_eq!(now(b.history("chat:a", Some(&never), u64::MAX)).unwrap().recovered, Some(true));
        // A position in a stream that is gone cannot be continued.
        let gone = StreamPosition { epoch: "0badc0ffee00".into(), offset: 3 };
        assert_eq!(now(b.history("chat:b", Some(&gone), u64::MAX)).unwrap().recovered, Some(false));
        assert_eq!(b.stream_count(), 0, "reading history made no stream");
        assert!(
            now(b.publish("chat:c", &raw("1"), None)).is_ok(),
            "the one stream allowed is free"
        );
    }

    #[test]
    fn housekeeping_forgets_expired_idempotency_keys() {
        let b = broker(10);
        // Expired as soon as remembered; nothing is published on the channel afterwards.
        now(b.publish("chat:a", &raw("1"), Some(Once { key: "k1", window: Duration::ZERO })))
            .unwrap();
        // (Another channel: a keyed publish on `chat:a` would forget `k1` by itself.)
        let live = Some(Once { key: "k2", window: Duration::from_secs(60) });
        now(b.publish("chat:b", &raw("2"), live)).unwrap();
        assert_eq!(keys_held(&b), 2);
        b.maintain();
        assert_eq!(keys_held(&b), 1, "the expired key is forgotten without another publish");
    }

    #[test]
    fn a_stream_holding_live_idempotency_keys_is_kept() {
        let b = broker(10);
        let once = Some(Once { key: "k", window: Duration::from_secs(60) });
        let first = now(b.publish("news", &raw("1"), once)).unwrap();
        b.maintain(); // no history and no subscribers, but its key is live
        let again = now(b.publish("news", &raw("1"), once)).unwrap();
        assert!(again.duplicate, "a retry within the window must not publish again");
        assert_eq!((again.offset, &again.epoch), (first.offset, &first.epoch));
    }

    #[test]
    fn idle_streams_are_dropped_and_come_back_with_a_new_epoch() {
        let b = broker(10);
        let first = now(b.publish("news", &raw("1"), None)).unwrap().epoch;
        assert_eq!(b.stream_count(), 1);
        b.maintain();
        assert_eq!(b.stream_count(), 0, "no history, no subscribers: dropped");
        let second = now(b.publish("news", &raw("1"), None)).unwrap().epoch;
        assert_ne!(first, second);
        now(b.publish("chat:x", &raw("1"), None)).unwrap();
        b.maintain();
        assert_eq!(b.stream_count(), 1, "a stream with history stays");
    }

    #[test]
    fn a_replay_longer_than_max_replay_is_not_attempted() {
        let rules = vec![HistoryRule {
            pattern: ChannelPattern::new("*"),
            size: 20_000,
            ttl: Duration::from_secs(60),
        }
        .into()];
        let b = MemoryBroker::new(Arc::new(crate::hub::Hub::new(Arc::default())), rules, 10);
        let epoch = now(b.publish("c", &raw("0"), None)).unwrap().epoch.to_string();
        for _ in 0..MAX_REPLAY {
            now(b.publish("c", &raw("1"), None)).unwrap();
        }
        let far = StreamPosition { epoch: epoch.clone(), offset: 0 };
        let h = now(b.history("c", Some(&far), u64::MAX)).unwrap();
        assert_eq!(
            (h.recovered, h.publications.len()),
            (Some(false), 0),
            "{} behind",
            MAX_REPLAY + 1
        );
        let near = StreamPosition { epoch, offset: 1 };
        assert_eq!(
            now(b.history("c", Some(&near), u64::MAX)).unwrap().publications.len() as u64,
            MAX_REPLAY
        );
    }

    #[test]
    fn a_recovery_says_why_it_was_not_made_and_a_replay_over_its_budget_is_not_read() {
        let b = broker(10);
        let epoch = now(b.publish("chat:a", &raw("1111"), None)).unwrap().epoch.to_string();
        for _ in 0..2 {
            now(b.publish("chat:a", &raw("2222"), None)).unwrap();
        }
        let at = |epoch: &str, offset| StreamPosition { epoch: epoch.into(), offset };
        let why = |since: StreamPosition, max| {
            let h = now(b.history("chat:a", Some(&since), max)).unwrap();
            (h.recovered, h.publications.len(), h.not_recovered)
        };
        // Three publications of 4 bytes after offset 0.
        assert_eq!(why(at(&epoch, 0), 12), (Some(true), 3, None));
        let over = Some(NotRecovered::OverBudget { bytes: 12 });
        assert_eq!(why(at(&epoch, 0), 11), (Some(false), 0, over));
        assert_eq!(
            why(at("0badc0ffee00", 1), 99),
            (Some(false), 0, Some(NotRecovered::OtherEpoch))
        );
        assert_eq!(why(at(&epoch, 9), 99), (Some(false), 0, Some(NotRecovered::OtherEpoch)));
        // History keeps 3: a fourth publication pushes offset 1 out.
        now(b.publish("chat:a", &raw("3333"), None)).unwrap();
        assert_eq!(why(at(&epoch, 0), 99), (Some(false), 0, Some(NotRecovered::HistoryGone)));
    }

    /// This node's subscribers as the tests see them: every delivery, in the order made, and
    /// a delivery that can be made to stall (a slow fan-out) until the test lets it go.
    #[derive(Default)]
    struct Recorder {
        delivered: Mutex<Vec<(String, u64)>>,
        stall: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    }

    impl LocalSubscribers for Recorder {
        fn deliver(&self, channel: &str, _: &Arc<str>, offset: u64, _: &RawValue) -> u64 {
            self.delivered.lock().unwrap().push((channel.to_owned(), offset));
            let stall = self.stall.lock().unwrap().take();
            if let Some((entered, release)) = stall {
                entered.send(()).unwrap();
                release.recv().unwrap();
            }
            1
        }

        fn count(&self, _: &str) -> usize {
            0
        }

        fn channels(&self) -> Vec<Arc<str>> {
            Vec::new()
        }

        fn watch_interest(&self, _: crate::publication::ChannelHook) {}

        fn positions(&self, _: Option<&[Arc<str>]>) -> Vec<(Arc<str>, Vec<StreamPosition>)> {
            Vec::new()
        }

        fn lost(&self, _: &str, _: Option<&StreamPosition>) -> usize {
            0
        }

        fn announce(&self, _: &str, _: Vec<crate::presence::Announcement>) {}

        fn order(&self, _: crate::control::UserOrder) -> usize {
            0
        }

        fn answer(&self, _: &crate::control::Question) -> serde_json::Value {
            serde_json::Value::Null
        }

        fn hand(&self, _: &str, _: bytes::Bytes) -> crate::control::Handed {
            crate::control::Handed::Unknown
        }
    }

    impl Recorder {
        fn offsets(&self, channel: &str) -> Vec<u64> {
            let delivered = self.delivered.lock().unwrap();
            delivered.iter().filter(|(c, _)| c == channel).map(|(_, o)| *o).collect()
        }
    }

    use std::sync::mpsc;

    fn recording_broker() -> (Arc<MemoryBroker>, Arc<Recorder>) {
        let subscribers = Arc::new(Recorder::default());
        let rules = vec![HistoryRule {
            pattern: ChannelPattern::new("*"),
            size: 100,
            ttl: Duration::from_secs(60),
        }
        .into()];
        (Arc::new(MemoryBroker::new(subscribers.clone(), rules, 100)), subscribers)
    }

    #[test]
    fn a_stalled_delivery_holds_up_only_later_publications_to_its_channel() {
        // Issue 18: no socket I/O under a shared lock. While one publication's fan-out is
        // stuck, the broker's shard must stay free: other channels publish, history is read,
        // a retried key is answered, housekeeping runs. Only the next publication to the same
        // channel waits, for its turn, so that delivery stays in offset order.
        let (b, subscribers) = recording_broker();
        let once = Some(Once { key: "k1", window: Duration::from_secs(60) });
        let first = now(b.publish("a", &raw("1"), once)).unwrap();
        let (entered, stalled) = mpsc::channel();
        let (release, released) = mpsc::channel();
        *subscribers.stall.lock().unwrap() = Some((entered, released));
        let publisher = {
            let b = b.clone();
            std::thread::spawn(move || now(b.publish("a", &raw("2"), None)).unwrap().offset)
        };
        stalled.recv_timeout(Duration::from_secs(10)).expect("the delivery stalled");
        let later = {
            let b = b.clone();
            std::thread::spawn(move || now(b.publish("a", &raw("3"), None)).unwrap().offset)
        };
        let shard = b.shard("a");
        let other = (0..).map(|n| format!("n{n}")).find(|c| std::ptr::eq(b.shard(c), shard));
        let other = other.unwrap();
        let (done, finished) = mpsc::channel();
        let meanwhile = {
            let (b, epoch) = (b.clone(), first.epoch.to_string());
            std::thread::spawn(move || {
                assert_eq!(now(b.publish(&other, &raw("1"), None)).unwrap().offset, 1);
                assert_eq!(now(b.publish(&other, &raw("2"), None)).unwrap().offset, 2);
                let since = StreamPosition { epoch, offset: 0 };
                let h = now(b.history("a", Some(&since), u64::MAX)).unwrap();
                assert_eq!(h.recovered, Some(true));
                assert!(h.position.offset >= 2, "offset 2 is assigned and in history");
                let again = now(b.publish("a", &raw("1"), once)).unwrap();
                assert!(again.duplicate && again.offset == 1);
                b.maintain();
                let _ = done.send(());
            })
        };
        let in_time = finished.recv_timeout(Duration::from_secs(2)).is_ok();
        release.send(()).unwrap();
        assert_eq!(publisher.join().unwrap(), 2);
        assert_eq!(later.join().unwrap(), 3);
        meanwhile.join().unwrap();
        assert!(in_time, "the broker's shard was held during a delivery");
        assert_eq!(subscribers.offsets("a"), [1, 2, 3], "delivered in offset order");
    }

    #[test]
    fn concurrent_publishers_deliver_each_channel_in_offset_order() {
        let (b, subscribers) = recording_broker();
        let publishers: Vec<_> = (0..4)
            .map(|i| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for n in 0..500 {
                        let channel = if (i + n) % 2 == 0 { "a" } else { "b" };
                        assert_eq!(now(b.publish(channel, &raw("1"), None)).unwrap().delivered, 1);
                    }
                })
            })
            .collect();
        for p in publishers {
            p.join().unwrap();
        }
        assert_eq!(subscribers.offsets("a"), (1..=1000).collect::<Vec<_>>());
        assert_eq!(subscribers.offsets("b"), (1..=1000).collect::<Vec<_>>());
    }

    #[test]
    fn the_number_of_streams_is_bounded() {
        let b = broker(2);
        now(b.publish("chat:a", &raw("1"), None)).unwrap();
        now(b.publish("chat:b", &raw("1"), None)).unwrap();
        assert!(matches!(now(b.publish("chat:c", &raw("1"), None)), Err(BrokerError::Limit(_))));
        assert!(now(b.publish("chat:a", &raw("2"), None)).is_ok(), "existing streams keep working");
    }
}
