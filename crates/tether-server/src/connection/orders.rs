//! Subscriptions the server makes for a connection rather than the client: those its token
//! asks for when it authenticates (the user's channel, the `channels` claim; recovered from
//! the positions `connect` gives), and the server API's orders to a user's connections
//! (subscribe, unsubscribe, disconnect; see `control` and `hub::users`), which the connection's
//! own task takes from the hub and carries out, as the one writer of its socket.

use super::*;
use crate::control::Act;
use crate::session::Answer;
use std::collections::BTreeMap;
use tether_core::protocol::{ServerSubscription, StreamPosition};

impl Connection {
    /// The user this connection belongs to (its token's `sub`).
    pub(super) fn user(&self) -> Option<&str> {
        self.session.grant().and_then(|g| g.sub.as_deref())
    }

    /// The token's server-side channels this connection may still take: valid names not held
    /// yet, within `max_subscriptions`.
    fn server_channels(&self) -> Vec<String> {
        let Some(grant) = self.session.grant() else { return Vec::new() };
        let mut out = Vec::new();
        for channel in &grant.server_channels {
            match crate::session::subscribable(&self.shared.config, &*self.queue, channel) {
                Ok(())
                    if out.len() + self.queue.with_subscriptions(|s| s.len())
                        < self.shared.config.max_subscriptions =>
                {
                    out.push(channel.clone())
                }
                Ok(()) => tracing::warn!(
                    conn = self.id,
                    channel,
                    "server-side subscription over max_subscriptions; skipped"
                ),
                Err(e) if e.code == tether_core::protocol::ErrorCode::AlreadySubscribed => {}
                Err(e) => {
                    tracing::warn!(conn = self.id, channel, error = %e.message, "server-side subscription skipped")
                }
            }
        }
        out
    }

    /// The token's server-side channels this connection holds, each where its delivery stands.
    fn held_server_channels(&self) -> BTreeMap<String, ServerSubscription> {
        let Some(grant) = self.session.grant() else { return BTreeMap::new() };
        self.queue.with_subscriptions(|s| {
            let mut held = BTreeMap::new();
            for channel in &grant.server_channels {
                if let Some(w) = s.get_mut(channel) {
                    let epoch = w.epoch.as_deref().unwrap_or_default().to_owned();
                    let sub = ServerSubscription { epoch, offset: w.offset, ..Default::default() };
                    held.insert(channel.clone(), sub);
                }
            }
            held
        })
    }

    /// At the handshake, with a `?token=`: the token's user and server-side subscriptions, live
    /// from the 101 on (recovery needs `connect`'s positions).
    pub(super) fn adopt_grant(&mut self) {
        if let Some(user) = self.user() {
            self.shared.hub.users.add(user, self.id, self.queue.clone());
        }
        for channel in self.server_channels() {
            self.join(&channel);
        }
    }

    /// `connect` succeeded: move to the token's user, make its server-side subscriptions
    /// (recovering from the positions in `subs`), and reply with them, each one's replay
    /// following the reply in the reply's order, with nothing between.
    pub(super) async fn connected<W: Wire>(
        &mut self,
        w: &mut W,
        id: u64,
        subs: BTreeMap<String, StreamPosition>,
        previous: Option<String>,
        dropped: Vec<String>,
    ) -> Option<Ending> {
        // The previous token's, which this one neither makes nor allows: ended, and said so.
        for channel in dropped {
            if let Some(ending) = self.unsubscribed(w, &channel).await {
                return Some(ending);
            }
        }
        if let Some(previous) = previous.filter(|p| Some(p.as_str()) != self.user()) {
            self.shared.hub.users.remove(&previous, self.id);
        }
        if let Some(user) = self.user() {
            self.shared.hub.users.add(user, self.id, self.queue.clone());
        }
        let channels = self.server_channels();
        // Those it holds already (a second `connect`, a `?token=` before): listed where they
        // stand, so that the reply always names every server-side subscription.
        let mut made = self.held_server_channels();
        if channels.is_empty() && made.is_empty() {
            return self.reply(w, Session::ok(id)).await;
        }
        w.hold();
        for channel in &channels {
            self.join(channel);
        }
        // The replays share the connection's outbound budget.
        let room = self.queue.room_bytes() / channels.len().max(1) as u64;
        let mut replays = Vec::new();
        for channel in channels {
            let recover = subs.get(&channel);
            let history = self.shared.broker.history(&channel, recover, room).await;
            match self.session.answer(rules(&self.shared), id, &channel, recover, history, room) {
                Answer::Refuse(reply) => {
                    tracing::warn!(
                        conn = self.id,
                        channel,
                        ?reply,
                        "server-side subscription refused"
                    );
                    self.leave(&channel);
                }
                Answer::Close(close) => return Some(w.close(self, close).await),
                Answer::Replay { reply, epoch, top, replay } => {
                    self.queue.with_subscriptions(|s| {
                        if let Some(w) = s.get_mut(&channel) {
                            (w.epoch, w.offset) = (Some(epoch.clone()), top);
                        }
                    });
                    let ServerMessage::Reply { result: Some(r), .. } = reply else { continue };
                    let made_one = ServerSubscription {
                        epoch: epoch.to_string(),
                        offset: top,
                        recovered: r.recovered,
                        reason: r.reason,
                    };
                    made.insert(channel.clone(), made_one);
                    replays.push((channel, epoch, replay));
                }
            }
        }
        let mut reply = ServerMessage::ok(
            id,
            tether_core::protocol::ReplyResult { subscriptions: Some(made), ..Default::default() },
        );
        let (shared, conn) = (&self.shared, self.id);
        self.session.introduce(&mut reply, || shared.client_id(conn));
        let mode = self.session.mode();
        let reply = vec![Message::Text(codec::encode(&reply).into())];
        let replays = replays.iter().flat_map(|(channel, epoch, replay)| {
            replay::Chunks::new(mode, channel, epoch, None, replay)
        });
        let mut chunks = std::iter::once(reply).chain(replays);
        w.write_chunks(self, &mut chunks).await.err().map(|e| self.write_failed(e))
    }

    /// Carry out the API's orders waiting for this connection, oldest first.
    pub(super) async fn obey<W: Wire>(&mut self, w: &mut W) -> Option<Ending> {
        let user = self.user()?;
        let orders = self.shared.hub.users.take(user, self.id);
        for order in orders {
            let ending = match &order.act {
                Act::Subscribe { channel } => self.subscribed(w, channel).await,
                Act::Unsubscribe { channel } => self.unsubscribed(w, channel).await,
                Act::Disconnect { code, reason } => {
                    let close = Close::new(CloseCode(*code), reason.clone());
                    Some(w.close(self, close).await)
                }
            };
            if ending.is_some() {
                return ending;
            }
        }
        None
    }

    /// The API subscribed this connection to `channel`: join, and tell a JSON client where
    /// the channel stands (its publications follow). Held already: nothing to do.
    async fn subscribed<W: Wire>(&mut self, w: &mut W, channel: &str) -> Option<Ending> {
        if let Err(e) = crate::session::subscribable(&self.shared.config, &*self.queue, channel) {
            tracing::debug!(conn = self.id, channel, error = %e.message, "ordered subscription not made");
            return None;
        }
        if self.session.mode() != Mode::Json {
            // No recovery, no message in raw mode: no watermark to set first, nothing to hold.
            self.join(channel);
            return None;
        }
        w.hold();
        self.join(channel);
        let position = match self.shared.broker.history(channel, None, 0).await {
            Ok(history) => history.position,
            Err(e) => {
                tracing::warn!(channel, error = %e, "ordered subscription failed: broker unavailable");
                return Some(w.close(self, Close::broker_unavailable()).await);
            }
        };
        let epoch: Arc<str> = Arc::from(position.epoch.as_str());
        self.queue.with_subscriptions(|s| {
            if let Some(w) = s.get_mut(channel) {
                (w.epoch, w.offset) = (Some(epoch), position.offset);
            }
        });
        let told = ServerMessage::Subscribed {
            channel: channel.to_owned(),
            epoch: position.epoch,
            offset: position.offset,
        };
        let told = vec![vec![Message::Text(codec::encode(&told).into())]];
        w.write_chunks(self, &mut told.into_iter()).await.err().map(|e| self.write_failed(e))
    }

    /// The API (or a new token) ended this connection's subscription to `channel`.
    async fn unsubscribed<W: Wire>(&mut self, w: &mut W, channel: &str) -> Option<Ending> {
        if !self.queue.with_subscriptions(|s| s.contains(channel)) {
            return None;
        }
        self.leave(channel);
        if self.session.mode() != Mode::Json {
            return None;
        }
        let told = ServerMessage::Unsubscribed { channel: channel.to_owned() };
        self.enqueue(w, Message::Text(codec::encode(&told).into())).await
    }
}
