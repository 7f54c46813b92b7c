//! The Redis broker's links to Redis: the pub/sub link of one Redis (or Sentinel's master),
//! kept up with pings and opened again after a loss, and for a cluster, the pushes of its
//! connection and the watch that makes a connection afresh when the cluster stops answering.
//! Each way, a link that comes back subscribes everything again and then repairs (see
//! `redis_interest`, `redis_fanout`).

use super::*;
use crate::broker::redis_endpoint::{channel_of, Commands, Conn, Endpoint, RESPONSE_TIMEOUT};
use crate::broker::redis_interest::Link;
use redis::cluster_async::ClusterConnection;

/// How often the pub/sub link is pinged to prove it alive.
const LINK_PING_EVERY: Duration = Duration::from_secs(1);
/// A ping unanswered this long means the link is lost. Several response timeouts: one late
/// answer (Redis stalled by a fork for BGSAVE, a page swapped in) is not a lost link, and
/// taking it for one would make the node repair every channel at once.
const LINK_SILENCE: Duration = Duration::from_secs(6);

impl RedisBroker {
    /// Cluster: this node's control channels, each a sharded channel of its own slot.
    pub(super) async fn subscribe_control(
        &self,
        conn: &ClusterConnection,
    ) -> redis::RedisResult<()> {
        let channels = [
            crate::broker::redis_control::ORDERS.to_owned(),
            crate::broker::redis_control::SURVEYS.to_owned(),
            self.control.answers_channel(),
            self.control.sessions_channel(),
        ];
        for channel in channels {
            conn.clone().ssubscribe(channel).await?;
        }
        Ok(())
    }

    /// Cluster: what the cluster connection pushes. Runs on the connection's own task: parses
    /// and queues only.
    pub(super) fn on_push(&self, push: redis::PushInfo) {
        use redis::{PushKind, Value};
        // Borrowed, not copied: a publication's payload is copied once, into the queue.
        fn text(v: &Value) -> Option<&[u8]> {
            match v {
                Value::BulkString(b) => Some(b),
                Value::SimpleString(s) => Some(s.as_bytes()),
                _ => None,
            }
        }
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let [.., name, payload] = &push.data[..] else { return };
                let (Some(name), Some(payload)) = (text(name), text(payload)) else { return };
                self.on_message(&String::from_utf8_lossy(name), payload);
            }
            PushKind::SSubscribe => {
                let Some(name) = push.data.first().and_then(text) else { return };
                let name = String::from_utf8_lossy(name);
                if let Some(channel) = channel_of(&name, true) {
                    if self.interest.confirmed(channel) {
                        // Subscribed again by the cluster client: the feed had a hole.
                        self.metrics.reconnects.inc();
                        self.fanout.resubscribed(&Arc::from(channel));
                    }
                }
            }
            PushKind::SUnsubscribe => {
                let Some(name) = push.data.first().and_then(text) else { return };
                let name = String::from_utf8_lossy(name);
                if let Some(channel) = channel_of(&name, true) {
                    if self.interest.taken_away(channel) {
                        // What the subscription made again brings waits for the repair.
                        self.fanout.pause(&Arc::from(channel));
                        tracing::info!(channel, "the cluster moved a subscribed channel's slot; subscribing again where it is now");
                    }
                }
            }
            PushKind::Disconnection => {
                tracing::warn!(url = %self.url, "a Redis Cluster node's connection was lost; subscribing again where the slots are now, then repairing");
                self.metrics.reconnects.inc();
                self.fanout.hold();
                self.interest.resubscribe_all();
            }
            _ => {}
        }
    }

    /// Cluster: whether every primary answers, for `/readyz` and `tether_broker_up`. The
    /// cluster client reconnects and resubscribes by itself, but learns a new slot map only
    /// when a command meets a moved slot; after a failover it may keep knocking at the dead
    /// master. So once the cluster stops answering, a connection is made afresh (a new slot
    /// map from the seed nodes) until one answers; it then subscribes everything again and
    /// repairs, as a single Redis's relink does.
    pub(super) async fn watch_cluster(self: Arc<Self>, stop: CancellationToken) {
        let mut every = tokio::time::interval(LINK_PING_EVERY);
        let mut lost = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            match Self::ping_all(self.commands.get()).await {
                Ok(()) => {
                    self.metrics.link_pings.inc();
                    self.set_linked(true, None);
                    continue;
                }
                Err(e) => self.set_linked(false, Some(format!("Redis Cluster: {e}"))),
            }
            if !std::mem::replace(&mut lost, true) {
                tracing::warn!(url = %self.url, "the Redis Cluster stopped answering; reconnecting with a fresh slot map");
            }
            let (Endpoint::Cluster(nodes), Some(on_push)) = (&self.endpoint, &self.on_push) else {
                continue;
            };
            let Ok(conn) = Commands::cluster_connection(nodes, on_push.clone()).await else {
                continue;
            };
            if Self::ping_all(Conn::Cluster(conn.clone())).await.is_err()
                || self.subscribe_control(&conn).await.is_err()
            {
                continue;
            }
            self.commands.set(Conn::Cluster(conn.clone()));
            self.fanout.hold();
            self.interest.linked(Link::Cluster(conn), true);
            self.metrics.reconnects.inc();
            self.set_linked(true, None);
            lost = false;
            tracing::warn!(url = %self.url, "the Redis Cluster answers again; resubscribing and repairing what this node missed");
        }
    }

    async fn ping_all(mut conn: Conn) -> redis::RedisResult<()> {
        let command = redis::cmd("PING");
        let ping = command.query_async::<redis::Value>(&mut conn);
        tokio::time::timeout(RESPONSE_TIMEOUT, ping).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((redis::ErrorKind::Io, "a PING timed out")))
        })?;
        Ok(())
    }

    /// `control`: this node's own channels (answers to its questions, its sessions' commands).
    pub(super) async fn open_link(
        client: &redis::Client,
        control: &crate::broker::redis_control::Control,
    ) -> redis::RedisResult<redis::aio::PubSub> {
        let connect = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(crate::broker::redis_control::ORDERS).await?;
            pubsub.subscribe(crate::broker::redis_control::SURVEYS).await?;
            pubsub.subscribe(control.answers_channel()).await?;
            pubsub.subscribe(control.sessions_channel()).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(RESPONSE_TIMEOUT, connect).await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out connecting to Redis")))
        })
    }

    /// Open the pub/sub link again: with Sentinel, to the master as the Sentinels name it now
    /// (and the command connection follows it there).
    async fn relink(
        &self,
    ) -> redis::RedisResult<(redis::aio::PubSubSink, redis::aio::PubSubStream)> {
        let client = self.endpoint.client().await?;
        let link = Self::open_link(&client, &self.control).await?;
        if self.endpoint.moves() {
            self.commands.follow(&client).await?;
        }
        Ok(link.split())
    }

    /// Keep the pub/sub link up: deliver what arrives; on loss, reconnect with backoff.
    pub(super) async fn run_link(
        self: Arc<Self>,
        first: (redis::aio::PubSubSink, redis::aio::PubSubStream),
        stop: CancellationToken,
    ) {
        let mut next = Some(first);
        let mut backoff = Duration::from_millis(100);
        // Set once the link was lost: what came meanwhile must be repaired.
        let mut lost = false;
        loop {
            let link = match next.take() {
                Some(link) => Ok(link),
                None => self.relink().await,
            };
            match link {
                Ok((sink, mut messages)) => {
                    self.set_linked(true, None);
                    backoff = Duration::from_millis(100);
                    if std::mem::take(&mut lost) {
                        self.metrics.reconnects.inc();
                        // The command connection may still hold the dead socket; a PING makes the
                        // manager notice and reconnect now, not on the next client's request.
                        for _ in 0..2 {
                            let ping = redis::cmd("PING");
                            if ping.query_async::<()>(&mut self.commands.get()).await.is_ok() {
                                break;
                            }
                        }
                        tracing::warn!(url = %self.url, "Redis pub/sub link restored; resubscribing and repairing what this node missed");
                        // Subscribes every channel with local subscribers, then repairs.
                        self.fanout.hold();
                        self.interest.linked(Link::PubSub(sink.clone()), true);
                    }
                    // A link can die without the socket noticing (a partition, a NAT timeout):
                    // ping it, and count a ping unanswered for `LINK_SILENCE` as lost.
                    let mut keepalive = tokio::time::interval(LINK_PING_EVERY);
                    keepalive.tick().await;
                    // One ping in flight at a time, kept until answered (a late answer still
                    // counts), with when it was sent.
                    let mut ping = None;
                    loop {
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            msg = messages.next() => match msg {
                                Some(msg) => self.deliver(msg),
                                None => break,
                            },
                            // In subscribed mode Redis answers PING with ["pong", ""]: any
                            // answer will do.
                            answer = async { ping.as_mut().map(|(_, p): &mut (Instant, _)| p).expect("guarded").await }, if ping.is_some() => {
                                ping = None;
                                if let Err(e) = answer {
                                    tracing::warn!(url = %self.url, error = %e, "the Redis pub/sub link failed a ping");
                                    break;
                                }
                                self.metrics.link_pings.inc();
                            }
                            _ = keepalive.tick() => match &ping {
                                None => {
                                    let mut sink = sink.clone();
                                    let answer = async move { sink.ping::<redis::Value>().await };
                                    ping = Some((Instant::now(), Box::pin(answer)));
                                }
                                Some((sent, _)) if sent.elapsed() >= LINK_SILENCE => {
                                    tracing::warn!(url = %self.url, "the Redis pub/sub link answered no ping for {LINK_SILENCE:?}");
                                    break;
                                }
                                Some(_) => {}
                            },
                        }
                    }
                    tracing::warn!(url = %self.url, "lost the Redis pub/sub link; reconnecting");
                    self.interest.unlinked();
                    self.set_linked(false, Some("the Redis pub/sub link is down".into()));
                    lost = true;
                }
                Err(e) => {
                    self.set_linked(
                        false,
                        Some(format!("cannot reach Redis at {}: {e}", self.url)),
                    );
                    lost = true;
                    tracing::debug!(error = %e, "Redis pub/sub reconnect failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
