//! The broker: where publications get their stream position and how they reach every node.
//!
//! A gateway publishes through its [`Broker`]: the broker assigns the offset (and keeps history
//! when the channel's policy asks for it) and gets the publication to every node, which hands it
//! to its [`LocalSubscribers`] (the hub, never named here) in offset order per channel. [`Broker::history`] answers a recovering
//! subscribe. [`MemoryBroker`] is the single-node implementation; a Redis backplane implements
//! the same trait for several nodes.
//!
//! **No socket I/O under a shared lock** (issue 18). Delivering to local subscribers writes to
//! their sockets, so a broker calls [`LocalSubscribers::deliver`] holding no lock that anything
//! but the same channel's delivery needs. The only lock held across socket writes is the
//! channel's own delivery turn (memory broker: taken before the offset is assigned and kept to
//! the end of the delivery, so that the channel's publications are delivered in offset order;
//! only later publishers to that channel wait on it) and, inside the hub, each subscriber's
//! mailbox lock. Shard and stream locks are held for lookups, appends and reads only: other
//! channels, history reads, idempotency checks and housekeeping never wait for a delivery.
//! The Redis broker delivers from its one pub/sub task, in the order Redis sends, holding no
//! lock at all.

mod memory;
pub mod redis;
mod redis_control;
mod redis_endpoint;
mod redis_fanout;
mod redis_interest;
mod redis_lineage;
mod redis_presence;
mod redis_scripts;

pub use memory::MemoryBroker;

use crate::control::{Answers, Question, UserOrder};
use crate::presence::Member;
use futures_util::future::BoxFuture;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tether_core::protocol::StreamPosition;

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
    /// The idempotency key was already used in this channel within the window: nothing was
    /// published again, and `epoch`/`offset` are those of the first publication.
    pub duplicate: bool,
}

/// An idempotency key for a publication and how long it is remembered: a publisher that is not
/// sure its publication went through (a proxy error, a timeout) retries with the same key, and
/// the channel gets it once.
#[derive(Clone, Copy, Debug)]
pub struct Once<'a> {
    pub key: &'a str,
    pub window: Duration,
}

/// Keys remembered per channel at most (memory broker); the oldest are forgotten first.
pub const MAX_IDEMPOTENCY_KEYS: usize = 10_000;

/// What a (recovering) subscribe learns from the broker.
#[derive(Debug)]
pub struct History {
    /// The channel's epoch and top offset when history was read.
    pub position: StreamPosition,
    /// `None` without a recovery request; otherwise whether everything after it is in `publications`.
    pub recovered: Option<bool>,
    /// The missed publications, oldest first, when recovered.
    pub publications: Vec<(u64, Arc<RawValue>)>,
    /// With `recovered: Some(false)`: why.
    pub not_recovered: Option<NotRecovered>,
}

impl History {
    /// The answer without a recovery request.
    fn current(position: StreamPosition) -> Self {
        History { position, recovered: None, publications: Vec::new(), not_recovered: None }
    }

    /// The answer for a recovery that can be made: `publications` follow the position asked for.
    fn recovered(position: StreamPosition, publications: Vec<(u64, Arc<RawValue>)>) -> Self {
        History { position, recovered: Some(true), publications, not_recovered: None }
    }

    /// The answer for a recovery that cannot be made.
    fn not_recovered(position: StreamPosition, why: NotRecovered) -> Self {
        History {
            position,
            recovered: Some(false),
            publications: Vec::new(),
            not_recovered: Some(why),
        }
    }
}

/// Why a recovery was not made (the client refetches its state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotRecovered {
    /// The position is in another epoch than the stream's (the stream was lost and started
    /// again), or ahead of it.
    OtherEpoch,
    /// History no longer holds every publication after the position.
    HistoryGone,
    /// More than [`MAX_REPLAY`] publications behind.
    TooFarBehind,
    /// The missed publications weigh more than the replay may (`max_bytes` of
    /// [`Broker::history`]): at least this many bytes.
    OverBudget { bytes: u64 },
}

impl NotRecovered {
    /// Why the position cannot be continued, before any history is read: `None` when it can
    /// (same epoch, not ahead, at most [`MAX_REPLAY`] behind).
    pub fn check(since: &StreamPosition, position: &StreamPosition) -> Option<Self> {
        if since.epoch != position.epoch || since.offset > position.offset {
            Some(NotRecovered::OtherEpoch)
        } else if position.offset - since.offset > MAX_REPLAY {
            Some(NotRecovered::TooFarBehind)
        } else {
            None
        }
    }
}

/// Where a broker hands publications to this node's subscribers: the hub, seen through only
/// what a broker needs (implemented in `node.rs`), so that brokers never name the hub and a
/// new one (Redis Cluster, say) plugs in beside them.
pub trait LocalSubscribers: Send + Sync + 'static {
    /// Hand a publication, at its place in its channel's stream, to this node's subscribers;
    /// returns how many took it. Writes to sockets: callers hold no shared lock, and call it
    /// one publication of a channel at a time, in offset order (see the module docs).
    fn deliver(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: &RawValue) -> u64;
    /// This node's subscribers of `channel`.
    fn count(&self, channel: &str) -> usize;
    /// Every channel with subscribers on this node.
    fn channels(&self) -> Vec<Arc<str>>;
    /// Call `hook` whenever a channel may have gained its first or lost its last subscriber
    /// on this node (under the hub's lock: it must only record it). Set once.
    fn watch_interest(&self, hook: crate::publication::ChannelHook);
    /// Channels with subscribers on this node (`only`: those of them), each with the lowest
    /// position per epoch among its subscribers: where a backplane that may have missed
    /// publications replays from.
    fn positions(&self, only: Option<&[Arc<str>]>) -> Vec<(Arc<str>, Vec<StreamPosition>)>;
    /// Publications of `channel` up to `position` (`None`: an unknown point) were missed here
    /// and cannot be replayed: tell its subscribers behind it (they end, and recover told
    /// `recovered: false`). Returns how many were told.
    fn lost(&self, channel: &str, position: Option<&StreamPosition>) -> usize;
    /// Tell this node's subscribers of `channel` about membership changes (`join_leave`).
    fn announce(&self, channel: &str, changes: Vec<crate::presence::Announcement>);
    /// Hand an API order to this node's connections of its user (see `control`); returns how
    /// many took it.
    fn order(&self, order: UserOrder) -> usize;
    /// This node's answer to a cluster-wide question (see `control::Question`).
    fn answer(&self, question: &Question) -> serde_json::Value;
    /// Hand a batch of commands to streaming session `session` of this node (see
    /// `hub::Sessions`).
    fn hand(&self, session: &str, batch: bytes::Bytes) -> crate::control::Handed;
}

pub trait Broker: Send + Sync + 'static {
    /// Assign the next offset in `channel`, keep history per policy, and deliver everywhere.
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
        once: Option<Once<'a>>,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>>;

    /// The channel's current position and, with `since`, the publications after it. Called
    /// after the subscriber is registered in the hub, so nothing falls between replay and live.
    /// A replay whose publications' data would exceed `max_bytes` is not read whole: it is
    /// answered `NotRecovered::OverBudget`.
    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>>;

    /// A subscription to a presence channel began on this node. Never waits: a backplane
    /// broker records it here and mirrors it in the background.
    fn presence_join(&self, channel: &str, member: Arc<Member>);

    /// A subscription to a presence channel ended on this node (unsubscribed or closed).
    fn presence_leave(&self, channel: &str, client: &str);

    /// Everyone subscribed to `channel`, on every node.
    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<Member>>, BrokerError>>;

    /// Presence entries this node holds (its own subscriptions).
    fn presence_entries(&self) -> usize;

    /// Hand `order` to its user's connections on every node (this one included). Answers with
    /// the connections this node handed it to, or, for a backplane, the nodes it reached.
    fn order(&self, order: UserOrder) -> BoxFuture<'_, Result<Reach, BrokerError>>;

    /// Hand a batch of commands to streaming session `session` held by node `node` (another
    /// node: a session's own node hands them itself). Without a backplane there is no other
    /// node: `Unknown`.
    fn hand<'a>(
        &'a self,
        _node: &'a str,
        _session: &'a str,
        _batch: bytes::Bytes,
    ) -> BoxFuture<'a, Result<crate::control::Handed, BrokerError>> {
        Box::pin(std::future::ready(Ok(crate::control::Handed::Unknown)))
    }

    /// Ask every node (this one included) `question`; their answers.
    fn survey(&self, question: Question) -> BoxFuture<'_, Result<Answers, BrokerError>>;

    /// Forget `channel`'s history (its position stays: recovering from before now fails, and
    /// offsets go on).
    fn history_remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// A clean shutdown, after the connections have closed: what this node left in a shared
    /// backplane (its presence) goes now.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// Periodic housekeeping (expire history and idempotency keys, drop idle streams). Called
    /// about once a second.
    fn maintain(&self) {}

    /// Channel streams and idempotency keys this node holds, as of the last [`Broker::maintain`]
    /// (`None`: kept elsewhere, e.g. in Redis, which expires them itself).
    fn held(&self) -> Held {
        Held::default()
    }

    /// Whether publications can be accepted now, or why not (`/readyz` reports this).
    fn readiness(&self) -> Result<(), String> {
        Ok(())
    }

    /// A short name for logs and `/healthz`.
    fn name(&self) -> &'static str;
}

/// How far an order went (see [`Broker::order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The memory broker: this many connections (this node is the only one).
    Connections(usize),
    /// A backplane: this many nodes received it (each hands it to its own connections).
    Nodes(usize),
}

/// What a broker holds in this process (see [`Broker::held`]), for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub streams: Option<usize>,
    pub idempotency_keys: Option<usize>,
}

/// Most publications one recovery replays; a client further behind is told `recovered: false`
/// (and refetches its state) rather than being sent an unbounded replay.
pub const MAX_REPLAY: u64 = 10_000;

pub use crate::config::history_policy;

/// Publications one history page holds at most (the API's `history`, the `history` command).
pub const MAX_HISTORY: u64 = 10_000;
/// The data of one history page, in bytes at most.
pub const MAX_HISTORY_BYTES: u64 = 16 << 20;

/// A page of a channel's history, as the API's `history` and the `history` command answer.
pub struct HistoryPage {
    pub epoch: String,
    /// The channel's top offset.
    pub top: u64,
    /// Oldest first, or newest first when asked `reverse`.
    pub publications: Vec<(u64, Arc<RawValue>)>,
    /// Why the page is not what was asked for: history no longer covers the position.
    pub incomplete: Option<String>,
}

impl HistoryPage {
    /// No publications: only where the channel stands.
    pub fn empty(position: StreamPosition) -> Self {
        HistoryPage {
            epoch: position.epoch,
            top: position.offset,
            publications: Vec::new(),
            incomplete: None,
        }
    }
}

/// A fresh epoch: random, so that a restarted node never reuses one.
pub fn new_epoch() -> String {
    tether_core::stream::epoch_from(rand::random())
}
