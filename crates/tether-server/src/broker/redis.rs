//! The Redis backplane: several gateway nodes share one Redis for offsets, history and fan-out.
//!
//! - **Publish** runs one Lua script: assign the next offset (per-channel hash), append to the
//!   history (a Redis Stream bounded by size and age) and PUBLISH to the channel's pub/sub
//!   channel — atomically, so offsets, history and fan-out order always agree.
//! - **Fan-out**: every node holds one pub/sub connection, subscribed to `tether:p:CH` (and
//!   `tether:e:CH` for join/leave) only for the channels it has subscribers for (see
//!   `redis_interest`), so it receives only what it will deliver; its reader
//!   queues what arrives (bounded) for one fan-out task, which hands it to the hub in the order
//!   Redis delivered it (offset order per channel; see `redis_fanout`). That task is what
//!   orders deliveries; it holds no lock while it delivers (publishing only runs the script,
//!   and its receipt counts the local subscribers the publication is headed to).
//! - **History** for a recovering subscribe is read by a second script (epoch, top, entries).
//! - **Failure**: commands go through a `ConnectionManager` that reconnects by itself (with
//!   Sentinel, it is replaced when the master moves: `redis_endpoint`); while
//!   Redis is unreachable, publishes fail with `Unavailable` (HTTP 503) and `/readyz` says
//!   not-ready. Publications sent while this node's pub/sub link was down never reached its
//!   subscribers: when the link comes back the node repairs every channel from history, and
//!   tells (1012) only the subscribers whose missed publications history cannot give back. A
//!   Redis that lost its data (the scripts compare its run id with the one each stream was
//!   made under) gives the channel a new epoch, and clients are told `recovered: false` —
//!   never a silent gap.

use super::redis_endpoint::Conn;
use super::redis_endpoint::{channel_of, publications_channel, Commands, Endpoint};
use super::redis_fanout::{Fanout, Incoming};

mod link;
mod streams;
use super::redis_interest::{Interest, Link};
use super::Reach;
use super::{
    history_policy, new_epoch, Broker, BrokerError, History, LocalSubscribers, Once, PublishReceipt,
};
use crate::config::ChannelRule;
use crate::control::{Answers, Question, UserOrder};
use crate::metrics::Metrics;
use crate::presence::Member;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use serde_json::value::RawValue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tether_core::protocol::StreamPosition;
use tokio_util::sync::CancellationToken;

fn state_key(channel: &str) -> String {
    format!("tether:s:{{{channel}}}")
}

fn history_key(channel: &str) -> String {
    format!("tether:h:{{{channel}}}")
}

/// Where a publication's idempotency key is remembered (empty key: none given).
fn idempotency_key(channel: &str, key: &str) -> String {
    format!("tether:i:{{{channel}}}:{key}")
}

/// `OFFSET EPOCH DATA` → its parts.
fn parse_message(payload: &str) -> Option<(u64, &str, &str)> {
    let (offset, rest) = payload.split_once(' ')?;
    let (epoch, data) = rest.split_once(' ')?;
    Some((offset.parse().ok()?, epoch, data))
}

/// This node as the Redis broker knows it: its id (the prefix of its client ids), how long its
/// presence entries outlive it if it dies (`presence_ttl`), and how long a channel's stream
/// state outlives its last publication (`stream_state_ttl`).
pub struct NodeOptions {
    pub node: String,
    pub presence_ttl: Duration,
    pub stream_state_ttl: Duration,
}

struct BrokerMetrics {
    publish_seconds: Histogram,
    reconnects: Counter,
    link_pings: Counter,
    up: Gauge,
}

pub struct RedisBroker {
    hub: Arc<dyn LocalSubscribers>,
    rules: Vec<ChannelRule>,
    url: String,
    /// Where Redis is (an address, or the master Sentinels name).
    endpoint: Endpoint,
    commands: Arc<Commands>,
    publish: redis::Script,
    history: redis::Script,
    /// True while the pub/sub link is up (commands reconnect on their own).
    linked: Arc<AtomicBool>,
    /// Why the broker is not ready, when it is not.
    last_error: Arc<Mutex<Option<String>>>,
    metrics: Arc<BrokerMetrics>,
    presence: Arc<super::redis_presence::RedisPresence>,
    /// Orders and questions for every node (see `redis_control`).
    control: super::redis_control::Control,
    /// Publications from the link, waiting for the fan-out task (see `redis_fanout`).
    fanout: Arc<Fanout>,
    /// Which channels the link is subscribed to (see `redis_interest`).
    interest: Arc<Interest>,
    /// Cluster: where the cluster connection's pushes go (kept for a connection made afresh).
    on_push: Option<super::redis_endpoint::OnPush>,
    /// How long a channel's stream state (epoch, offset) outlives its last publication when
    /// its history does not last longer (`stream_state_ttl`).
    state_ttl: Duration,
    /// Cluster: recent verdicts on states made by another Redis process (`redis_lineage`).
    verdicts: super::redis_lineage::Verdicts,
}

impl RedisBroker {
    /// Connect to Redis (it must be reachable now), start the pub/sub link, and return the
    /// broker.
    pub async fn connect(
        url: &str,
        hub: Arc<dyn LocalSubscribers>,
        rules: Vec<ChannelRule>,
        metrics: &Metrics,
        presence: NodeOptions,
        stop: CancellationToken,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let unreachable = |e: redis::RedisError| {
            BrokerError::Unavailable(format!(
                "cannot reach Redis at {url}: {e}; start it, or fix --broker"
            ))
        };
        let endpoint = Endpoint::parse(url)?;
        let sharded = endpoint.sharded();
        // A cluster's pushes (publications, confirmations) reach the broker once it exists.
        let pushed: Arc<std::sync::OnceLock<std::sync::Weak<RedisBroker>>> = Arc::default();
        let mut on_push_for_rebuilds = None;
        let (client, commands) = match &endpoint {
            Endpoint::Cluster(nodes) => {
                let to = pushed.clone();
                let on_push: super::redis_endpoint::OnPush = Arc::new(move |push| {
                    if let Some(broker) = to.get().and_then(std::sync::Weak::upgrade) {
                        broker.on_push(push);
                    }
                });
                on_push_for_rebuilds = Some(on_push.clone());
                (None, Commands::cluster(nodes, on_push).await.map_err(unreachable)?)
            }
            _ => {
                let client = endpoint.client().await.map_err(unreachable)?;
                let commands = Commands::connect(&client).await.map_err(unreachable)?;
                (Some(client), commands)
            }
        };
        let commands = Arc::new(commands);
        let broker_metrics = Arc::new(BrokerMetrics {
            publish_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            reconnects: Counter::default(),
            link_pings: Counter::default(),
            up: Gauge::default(),
        });
        metrics.register(
            "tether_broker_publish_seconds",
            "Time for a publish to be accepted by the broker (Redis round trip)",
            broker_metrics.publish_seconds.clone(),
        );
        metrics.register(
            "tether_broker_reconnects",
            "Times the broker's pub/sub link to Redis came back after a loss",
            broker_metrics.reconnects.clone(),
        );
        metrics.register(
            "tether_broker_up",
            "1 while the broker's pub/sub link is up",
            broker_metrics.up.clone(),
        );
        let control = super::redis_control::Control::new(presence.node.clone());
        metrics.register(
            "tether_cluster_questions_waiting",
            "Cluster-wide questions (the API's channels and info) this node waits on answers for (at most 64)",
            control.waiting_gauge.clone(),
        );
        metrics.register(
            "tether_broker_link_pings",
            "Keepalive pings answered on the pub/sub link",
            broker_metrics.link_pings.clone(),
        );
        let broker = Arc::new(RedisBroker {
            hub,
            rules: rules.clone(),
            url: url.to_owned(),
            commands,
            endpoint,
            publish: redis::Script::new(&super::redis_scripts::with_helpers(
                super::redis_scripts::PUBLISH,
            )),
            history: redis::Script::new(&super::redis_scripts::with_helpers(
                super::redis_scripts::HISTORY,
            )),
            linked: Arc::new(AtomicBool::new(false)),
            last_error: Arc::new(Mutex::new(None)),
            metrics: broker_metrics,
            control,
            on_push: on_push_for_rebuilds,
            state_ttl: presence.stream_state_ttl,
            verdicts: Default::default(),
            fanout: Fanout::new(metrics),
            interest: Interest::new(rules.clone(), metrics),
            presence: Arc::new(super::redis_presence::RedisPresence::new(
                presence.node,
                presence.presence_ttl,
                rules,
                sharded,
            )),
        });
        // The scripts read Redis's run id with INFO: a user that may not is refused now, not
        // on every publish.
        let info: redis::RedisResult<redis::Value> =
            redis::cmd("INFO").arg("server").query_async(&mut broker.commands.get()).await;
        if let Err(e) = info {
            return Err(BrokerError::Unavailable(format!(
                "Redis at {url} refused INFO ({e}): Tether's Redis user must be allowed INFO, which tells a restarted Redis from the one before"
            )));
        }
        // Linked before returning: a node must not serve a recovering subscribe before its
        // live feed can be in place (see `Interest::ready`).
        let first = match &client {
            Some(client) => {
                let first = Self::open_link(client, &broker.control).await.map_err(unreachable)?;
                let (sink, messages) = first.split();
                broker.interest.linked(Link::PubSub(sink.clone()), false);
                Some((sink, messages))
            }
            None => {
                let _ = pushed.set(Arc::downgrade(&broker));
                let Conn::Cluster(conn) = broker.commands.get() else { unreachable!() };
                broker.subscribe_control(&conn).await.map_err(unreachable)?;
                broker.interest.linked(Link::Cluster(conn), false);
                broker.set_linked(true, None);
                None
            }
        };
        let interest = broker.interest.clone();
        broker.hub.watch_interest(Arc::new(move |channel| interest.changed(channel)));
        tokio::spawn(broker.presence.clone().run(broker.commands.clone(), stop.clone()));
        let fan_out = broker.fanout.clone().run(broker.clone(), broker.hub.clone(), stop.clone());
        tokio::spawn(fan_out);
        let interest = broker.interest.clone();
        tokio::spawn(interest.run(broker.hub.clone(), broker.fanout.clone(), stop.clone()));
        match first {
            Some(first) => tokio::spawn(broker.clone().run_link(first, stop)),
            None => tokio::spawn(broker.clone().watch_cluster(stop)),
        };
        Ok(broker)
    }

    fn set_linked(&self, up: bool, error: Option<String>) {
        self.linked.store(up, Ordering::Release);
        self.metrics.up.set(up as i64);
        *crate::sync::lock(&self.last_error) = error;
    }

    fn deliver(&self, msg: redis::Msg) {
        self.on_message(msg.get_channel_name(), msg.get_payload_bytes());
    }

    /// A message on pub/sub channel `name`: a publication, a join/leave change, or control.
    fn on_message(&self, name: &str, payload: &[u8]) {
        if let Some(channel) = super::redis_presence::events_of(name, self.endpoint.sharded()) {
            return self.announce(channel, payload);
        }
        if self.control.on_message(name, payload, &self.hub, &self.commands.get()) {
            return;
        }
        let Some(channel) = channel_of(name, self.endpoint.sharded()) else { return };
        let Ok(payload) = std::str::from_utf8(payload) else { return };
        let Some((offset, epoch, data)) = parse_message(payload) else {
            tracing::warn!(channel, "malformed message on the Redis backplane; dropped");
            return;
        };
        let Ok(data) = RawValue::from_string(data.to_owned()) else { return };
        let (channel, epoch) = (Arc::from(channel), Arc::from(epoch));
        self.fanout.push(Incoming { channel, epoch, offset, data });
    }

    /// A join/leave change from some node (`TYPE INFO-JSON`), for this node's subscribers.
    fn announce(&self, channel: &str, payload: &[u8]) {
        use tether_core::protocol::PresenceChange;
        let Some((kind, info)) = std::str::from_utf8(payload).ok().and_then(|p| p.split_once(' '))
        else {
            return tracing::warn!(
                channel,
                "malformed presence change on the Redis backplane; dropped"
            );
        };
        let change = match kind {
            "join" => PresenceChange::Join,
            "leave" => PresenceChange::Leave,
            "user_join" => PresenceChange::UserJoin,
            "user_leave" => PresenceChange::UserLeave,
            _ => return,
        };
        self.hub.announce(channel, vec![(change, Arc::from(info))]);
    }

    fn unavailable(e: redis::RedisError) -> BrokerError {
        BrokerError::Unavailable(format!("Redis: {e}"))
    }
}

impl Broker for RedisBroker {
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        data: &'a RawValue,
        once: Option<Once<'a>>,
    ) -> BoxFuture<'a, Result<PublishReceipt, BrokerError>> {
        Box::pin(async move {
            let policy = history_policy(&self.rules, channel);
            let (key, window) = once.map(|o| (o.key, o.window)).unwrap_or(("", Duration::ZERO));
            let (size, ttl) = policy.map(|p| (p.size, p.ttl)).unwrap_or((0, Duration::ZERO));
            let started = Instant::now();
            let (epoch, offset, duplicate) =
                self.run_publish(channel, data, (size, ttl), (key, window)).await?;
            self.metrics.publish_seconds.observe(started.elapsed().as_secs_f64());
            // Local delivery happens when the publication comes back over pub/sub; report the
            // local subscribers it is headed to.
            Ok(PublishReceipt {
                epoch: Arc::from(epoch.as_str()),
                offset,
                delivered: if duplicate == 1 { 0 } else { self.hub.count(channel) as u64 },
                duplicate: duplicate == 1,
            })
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a StreamPosition>,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<History, BrokerError>> {
        Box::pin(async move {
            // A subscribe reads history only once its live feed is in place.
            self.interest.ready(channel, &*self.hub).await?;
            let from = since.map(|s| s.offset.saturating_add(1)).unwrap_or(0);
            let (epoch, top, entries, over) = self.run_history(channel, from, max_bytes).await?;
            let position = StreamPosition { epoch, offset: top };
            let Some(since) = since else { return Ok(History::current(position)) };
            if let Some(why) = super::NotRecovered::check(since, &position) {
                return Ok(History::not_recovered(position, why));
            }
            if over > 0 {
                let why = super::NotRecovered::OverBudget { bytes: over };
                return Ok(History::not_recovered(position, why));
            }
            let publications = streams::entries(entries);
            let contiguous = publications
                .iter()
                .enumerate()
                .all(|(i, (o, _))| Some(*o) == since.offset.checked_add(1 + i as u64));
            if !contiguous || publications.len() as u64 != top - since.offset {
                return Ok(History::not_recovered(position, super::NotRecovered::HistoryGone));
            }
            Ok(History::recovered(position, publications))
        })
    }

    fn readiness(&self) -> Result<(), String> {
        if self.linked.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(crate::sync::lock(&self.last_error)
                .clone()
                .unwrap_or_else(|| "Redis is unreachable".into()))
        }
    }

    fn presence_join(&self, channel: &str, member: Arc<Member>) {
        self.presence.join(channel, member);
    }

    fn presence_leave(&self, channel: &str, client: &str) {
        self.presence.leave(channel, client);
    }

    fn presence<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<Arc<Member>>, BrokerError>> {
        Box::pin(async move {
            let mut commands = self.commands.get();
            self.presence.members(&mut commands, channel).await.map_err(Self::unavailable)
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut commands = self.commands.get();
            if let Err(e) = self.presence.close(&mut commands).await {
                tracing::warn!(error = %e, "could not remove this node's presence from Redis; it expires within presence_ttl");
            }
        })
    }

    fn presence_entries(&self) -> usize {
        self.presence.entries()
    }

    fn order(&self, order: UserOrder) -> BoxFuture<'_, Result<Reach, BrokerError>> {
        Box::pin(async move {
            let mut commands = self.commands.get();
            self.control.order(&mut commands, &order).await.map_err(Self::unavailable)
        })
    }

    fn hand<'a>(
        &'a self,
        node: &'a str,
        session: &'a str,
        batch: bytes::Bytes,
    ) -> BoxFuture<'a, Result<crate::control::Handed, BrokerError>> {
        Box::pin(async move {
            let mut commands = self.commands.get();
            self.control.hand(&mut commands, node, session, &batch).await.map_err(Self::unavailable)
        })
    }

    fn survey(&self, question: Question) -> BoxFuture<'_, Result<Answers, BrokerError>> {
        Box::pin(async move { self.control.ask(&mut self.commands.get(), question).await })
    }

    fn history_remove<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut del = redis::cmd("DEL");
            del.arg(history_key(channel));
            let _: u64 =
                del.query_async(&mut self.commands.get()).await.map_err(Self::unavailable)?;
            Ok(())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backplane_messages_parse() {
        assert_eq!(parse_message(r#"12 ab12 {"a": "b c"}"#), Some((12, "ab12", r#"{"a": "b c"}"#)));
        assert_eq!(parse_message("x ab {}"), None);
        assert_eq!(parse_message("12"), None);
        assert_eq!(state_key("chat:a"), "tether:s:{chat:a}");
    }
}
