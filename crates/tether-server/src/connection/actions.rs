//! The session's decisions carried out over the WebSocket: replies (in order with
//! publications), raw mode's pong, the conformance echo, registering and dropping
//! subscriptions, the broker calls behind `subscribe` and `publish`.

use super::*;
use tether_core::protocol::{ErrorBody, ErrorCode};

impl Connection {
    /// A text or binary message from the peer. Returns an ending when the connection must close.
    pub(super) async fn on_message(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
        let m = &self.shared.metrics;
        m.messages_in.inc();
        m.bytes_in.inc_by(msg.len() as u64);
        let input = match &msg {
            Message::Text(text) => Inbound::Text(text.as_str()),
            Message::Binary(_) => Inbound::Binary,
            _ => return None,
        };
        let action = self.session.message(rules(&self.shared), &*self.queue, input);
        match action {
            Action::Pong => self.raw_pong(ws).await,
            Action::Echo => Box::pin(self.echo(ws, msg)).await,
            Action::IdleProbe { id, ms } => {
                let reply = if self.session.is_quiet() {
                    let why = "an idle probe is already running on this connection";
                    ServerMessage::err(Some(id), ErrorBody::new(ErrorCode::InvalidCommand, why))
                } else if self.shared.start_idle_probe() {
                    self.session.begin_quiet(std::time::Instant::now(), ms);
                    Session::info(rules(&self.shared), id, Some(ms))
                } else {
                    let n = self.shared.config.idle_probes;
                    let why = format!("all {n} idle probes (idle_probes) are running: try later");
                    ServerMessage::err(Some(id), ErrorBody::new(ErrorCode::Unavailable, why))
                };
                self.reply(ws, reply).await
            }
            action => self.carry_out(ws, action).await,
        }
    }

    /// Carry out the session's decision about a message, over either wire. Subscribe, publish
    /// and close are boxed: this future lives inline in every active connection's, which is as
    /// large as its largest await point; inline, a subscribe's broker call and replay made an
    /// active connection's state 6.9 KB. The per-message paths (replies) stay inline.
    pub(super) async fn carry_out<W: Wire>(&mut self, w: &mut W, action: Action) -> Option<Ending> {
        match action {
            Action::Reply(reply) => self.reply(w, reply).await,
            // Raw mode and the echo exist on WebSockets only (see `on_message`).
            Action::Pong | Action::Echo | Action::Ignore => None,
            Action::Subscribe { id, channel, recover } => {
                Box::pin(self.subscribe(w, id, &channel, recover.as_ref())).await
            }
            Action::Connect { id, subs, previous, dropped } => {
                Box::pin(self.connected(w, id, subs, previous, dropped)).await
            }
            Action::Held { id } => self.reply(w, Session::ok(id)).await,
            Action::IdleProbe { id, .. } => {
                let why = "idle probes measure a WebSocket's path: open one over /ws";
                let error = ErrorBody::new(ErrorCode::InvalidCommand, why);
                self.reply(w, ServerMessage::err(Some(id), error)).await
            }
            Action::Unsubscribe { id, channel } => {
                self.leave(&channel);
                self.reply(w, Session::ok(id)).await
            }
            Action::Publish { id, channel, data } => {
                Box::pin(self.publish(w, id, channel, data)).await
            }
            Action::Presence { id, channel, stats } => {
                Box::pin(self.presence(w, id, channel, stats)).await
            }
            Action::History { id, channel, limit, since, reverse } => {
                let page = self.shared.history_page(&channel, limit, since.as_ref(), reverse);
                let page = Box::pin(page).await;
                let reply = crate::session::history_reply(rules(&self.shared), id, page);
                self.reply(w, reply).await
            }
            Action::Close(close) => Some(Box::pin(w.close(self, close)).await),
        }
    }

    /// A client's publish, answered with its receipt or error.
    async fn publish<W: Wire>(
        &mut self,
        w: &mut W,
        id: u64,
        channel: String,
        data: Box<serde_json::value::RawValue>,
    ) -> Option<Ending> {
        let receipt = self.shared.publish_once(&channel, &data, None).await;
        let reply = crate::session::published(rules(&self.shared), id, receipt);
        self.reply(w, reply).await
    }

    /// `presence` / `presence_stats`, answered with what the broker holds.
    async fn presence<W: Wire>(
        &mut self,
        w: &mut W,
        id: u64,
        channel: String,
        stats: bool,
    ) -> Option<Ending> {
        let members = self.shared.broker.presence(&channel).await;
        let reply = crate::session::presence_reply(rules(&self.shared), id, stats, members);
        self.reply(w, reply).await
    }

    /// Raw mode's pong. Its frame is built once: straight to the socket when nothing is queued
    /// ahead, as publications are.
    async fn raw_pong(&mut self, ws: &mut Ws) -> Option<Ending> {
        if ws.get_mut().hold_if_idle() {
            let (frame, len) = (&self.shared.raw_pong_frame, self.shared.raw_pong.len());
            let timeout = self.shared.config.write_timeout;
            let outcome = within(timeout, write_frame(ws, frame)).await;
            if let Err(e) = self.written(outcome, 1, len as u64) {
                return Some(self.write_failed(e));
            }
            ws.get_mut().release();
            return None;
        }
        // Shared bytes, no copy per reply.
        self.enqueue(ws, Message::Text(self.shared.raw_pong.clone())).await
    }

    /// The conformance echo: the message goes back the way a publication goes to a subscriber
    /// — framed once (compressed when the connection agreed to permessage-deflate and the
    /// message is large enough), written straight to the socket when the connection is ready
    /// for a direct write, else queued for the task's batch writer, which gathers frames into
    /// vectored writes and sends large messages as fragments (docs/interop.md).
    async fn echo(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
        let payload = match msg {
            Message::Text(text) => Payload::Text(text),
            Message::Binary(bytes) => Payload::Binary(bytes),
            _ => return None,
        };
        let cfg = &self.shared.config;
        let min = cfg.compression_min_size.as_u64();
        let compress = Compress::for_message(cfg.compression, payload.len(), min);
        let echo = Arc::new(Published::unsequenced(payload, compress));
        match self.queue.deliver(echo, cfg.direct_delivery) {
            Ok(Delivery::Written(bytes)) => {
                self.shared.metrics.messages_out.inc();
                self.shared.metrics.bytes_out.inc_by(bytes as u64);
                None
            }
            Ok(Delivery::Queued | Delivery::Partial | Delivery::Skipped) => None,
            Err(PushError::Closed) => None,
            Err(PushError::Full) => {
                self.shared.metrics.slow_consumers.inc();
                Some(Box::pin(self.close(ws, Close::slow_consumer())).await)
            }
        }
    }

    /// Send a reply (the first successful one carries the client id).
    pub(super) async fn reply<W: Wire>(
        &mut self,
        w: &mut W,
        mut reply: ServerMessage,
    ) -> Option<Ending> {
        let (shared, id) = (&self.shared, self.id);
        self.session.introduce(&mut reply, || shared.client_id(id));
        self.enqueue(w, Message::Text(codec::encode(&reply).into())).await
    }

    /// Send a reply now, or queue it behind what is queued. Replies share the outbound queue
    /// with publications, so the order the peer sees is the order things happened.
    pub(super) async fn enqueue<W: Wire>(&mut self, w: &mut W, reply: Message) -> Option<Ending> {
        let reply = match w.send_now(self, reply).await {
            Ok(None) => return None,
            Ok(Some(reply)) => reply,
            Err(e) => return Some(self.write_failed(e)),
        };
        match self.queue.push(Outbound::Reply(reply)) {
            Ok(()) => None,
            Err(_) => {
                self.shared.metrics.slow_consumers.inc();
                Some(Box::pin(w.close(self, Close::slow_consumer())).await)
            }
        }
    }

    /// Register a subscription the session allowed. An active connection first holds its
    /// wire (`Wire::hold`): publishers queue from there until the reply that follows is
    /// written, as they must not meet the subscription before its watermark exists (a recovery
    /// sets it later). A parked connection has no direct writers to stop.
    pub(super) fn join(&mut self, channel: &str) {
        let sub = Subscriber::new(self.queue.clone(), self.session.mode());
        // The watermark exists before the hub knows the subscription: a sweep passes over a
        // connection without one, and would not come back for what it passed over.
        self.queue.with_subscriptions(|s| s.insert(Arc::from(channel)));
        if let Some(name) = self.shared.hub.subscribe(channel, self.id, sub) {
            self.queue.with_subscriptions(|s| s.adopt(name));
            if self.shared.presence_on(channel) {
                let member = self.member();
                self.shared.broker.presence_join(channel, member);
            }
        }
    }

    pub(super) fn leave(&mut self, channel: &str) {
        if self.queue.with_subscriptions(|s| s.remove(channel)) {
            self.shared.hub.unsubscribe(channel, self.id);
            self.shared.left(channel, self.id);
        }
    }

    /// This connection as a presence entry.
    fn member(&self) -> Arc<crate::presence::Member> {
        let grant = self.session.grant();
        Arc::new(crate::presence::Member {
            client: self.shared.client_id(self.id).into(),
            user: grant.and_then(|g| g.sub.as_deref()).map(Arc::from),
            info: grant.and_then(|g| g.info.clone()),
        })
    }

    /// `subscribe`, as the session allowed it: register in the hub first (live publications
    /// start queueing), ask the broker where the channel stands and what was missed, and carry
    /// out the session's answer: the reply and the replay (see `replay`), no gap, no duplicate.
    async fn subscribe<W: Wire>(
        &mut self,
        w: &mut W,
        id: u64,
        channel: &str,
        recover: Option<&tether_core::protocol::StreamPosition>,
    ) -> Option<Ending> {
        w.hold();
        self.join(channel);
        let room = self.queue.room_bytes();
        let history = self.shared.broker.history(channel, recover, room).await;
        match self.session.answer(rules(&self.shared), id, channel, recover, history, room) {
            Answer::Refuse(reply) => {
                self.leave(channel);
                self.reply(w, reply).await
            }
            Answer::Close(close) => Some(w.close(self, close).await),
            Answer::Replay { mut reply, epoch, top, replay } => {
                let (shared, conn) = (&self.shared, self.id);
                self.session.introduce(&mut reply, || shared.client_id(conn));
                // Queued live publications at or below the watermark are in the replay.
                self.queue.with_subscriptions(|s| {
                    if let Some(w) = s.get_mut(channel) {
                        (w.epoch, w.offset) = (Some(epoch.clone()), top);
                    }
                });
                let reply = Message::Text(codec::encode(&reply).into());
                let mode = self.session.mode();
                let mut chunks = replay::Chunks::new(mode, channel, &epoch, reply, &replay);
                w.write_chunks(self, &mut chunks).await.err().map(|e| self.write_failed(e))
            }
        }
    }
}
