//! What a connection says: inbound messages, the command protocol (connect, subscribe with
//! recovery, publish, ping), access rules and token expiry, and replies.

use super::*;

impl Connection {
    pub(super) fn access(&self, channel: &str, publish: bool) -> Access {
        let s = &self.shared;
        let grant = self.grant.as_deref();
        crate::auth::access(s.auth.as_ref(), &s.config.anonymous_channels, grant, channel, publish)
    }

    /// The `connect` command: verify the token and keep what it allows. A token that cannot
    /// work closes the connection with advice not to retry (4502); an expired one with advice
    /// to fetch a fresh one and reconnect (4002).
    pub(super) async fn connect_command(
        &mut self,
        ws: &mut Ws,
        id: u64,
        token: &str,
    ) -> Option<Ending> {
        let Some(verifier) = self.shared.auth.as_ref() else {
            // No JWT configured: nothing to check, the connection may do what anyone may.
            let reply = ServerMessage::ok(id, ReplyResult::default());
            return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
        };
        match verifier.verify(token) {
            Ok(grant) => {
                tracing::debug!(conn = self.id, sub = ?grant.sub, "authenticated");
                self.grant = Some(Arc::new(grant));
                let reply = ServerMessage::ok(id, ReplyResult::default());
                self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await
            }
            Err(crate::auth::TokenError::Expired) => Some(self.token_expired(ws).await),
            Err(crate::auth::TokenError::Invalid(why)) => {
                let reason = format!("token not accepted: {why}");
                Some(self.close(ws, CloseCode::TOKEN_INVALID, &reason, None, false).await)
            }
        }
    }

    /// `at`, or when the token expires if that comes first: the connection wakes then, active
    /// or parked (whose mailbox deadline this becomes), rather than at its next heartbeat.
    pub(super) fn or_token_expiry(&self, now: Instant, at: Instant) -> Instant {
        self.grant.as_ref().map_or(at, |g| at.min(now + g.remaining()))
    }

    pub(super) async fn token_expired(&mut self, ws: &mut Ws) -> Ending {
        let reason = "token expired: fetch a fresh token and reconnect";
        self.close(ws, CloseCode::TOKEN_EXPIRED, reason, None, false).await
    }

    /// One more inbound message within `max_inbound_rate`?
    pub(super) fn inbound_allowed(&mut self, now_ms: u64) -> bool {
        let rate = self.shared.config.max_inbound_rate as f32;
        rate == 0.0 || self.inbound.take(now_ms, rate, rate)
    }

    pub(super) async fn rate_limited(&mut self, ws: &mut Ws) -> Ending {
        self.shared.metrics.inbound_rate_limited.inc();
        let reason = format!(
            "rate limit: more than {} messages per second",
            self.shared.config.max_inbound_rate
        );
        self.close(ws, CloseCode::POLICY_VIOLATION, &reason, None, true).await
    }

    /// A text or binary message from the peer. Returns an ending when the connection must close.
    pub(super) async fn on_message(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
        let m = &self.shared.metrics;
        m.messages_in.inc();
        m.bytes_in.inc_by(msg.len() as u64);
        let reply = match (self.mode, msg) {
            (Mode::Raw, Message::Text(text)) if text.as_str() == self.shared.config.raw_ping => {
                if ws.get_mut().hold_if_idle() {
                    // The pong's frame is built once: straight to the socket, as publications.
                    let (frame, len) = (&self.shared.raw_pong_frame, self.shared.raw_pong.len());
                    let timeout = self.shared.config.write_timeout;
                    let outcome = within(timeout, write_frame(ws, frame)).await;
                    if let Err(e) = self.written(outcome, 1, len as u64) {
                        return Some(self.write_failed(e));
                    }
                    ws.get_mut().release();
                    return None;
                }
                Message::Text(self.shared.raw_pong.clone()) // shared bytes, no copy per reply
            }
            (Mode::Echo, msg) => return self.echo(ws, msg).await,
            (Mode::Raw, _) => {
                // Raw mode is receive-only: other inbound messages are counted and dropped.
                m.raw_messages_ignored.inc();
                return None;
            }
            (Mode::Json, Message::Text(text)) => {
                let depth = self.shared.config.max_json_depth;
                if codec::json_depth(text.as_str(), depth).is_err() {
                    m.json_too_deep.inc();
                }
                let reply = match codec::decode_command_limited(text.as_str(), depth) {
                    Ok(ClientCommand::Subscribe { id, channel, recover }) => {
                        return self.subscribe_command(ws, id, channel, recover).await;
                    }
                    Ok(ClientCommand::Connect { id, token }) => {
                        return self.connect_command(ws, id, &token).await;
                    }
                    Ok(command) => self.on_command(command).await,
                    Err(e) => e.into_reply(),
                };
                self.count_error(&reply);
                Message::Text(codec::encode(&reply).into())
            }
            (Mode::Json, _) => {
                let reply = ServerMessage::err(
                    None,
                    ErrorBody::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames carry no meaning in tether.v1.json; send JSON text",
                    ),
                );
                self.count_error(&reply);
                Message::Text(codec::encode(&reply).into())
            }
        };
        self.enqueue(ws, reply).await
    }

    /// The conformance echo: the message goes back the way a publication goes to a subscriber
    /// — framed once (compressed when the connection agreed to permessage-deflate and the
    /// message is large enough), written straight to the socket when the connection is ready
    /// for a direct write, else queued for the task's batch writer, which gathers frames into
    /// vectored writes and sends large messages as fragments (docs/interop.md).
    pub(super) async fn echo(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
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
                let reason = "slow consumer: outbound queue full";
                Some(self.close(ws, CloseCode::SLOW_CONSUMER, reason, None, false).await)
            }
        }
    }

    /// Queue a reply. Replies share the outbound queue with publications, so the order the peer
    /// sees is the order things happened.
    pub(super) async fn enqueue(&mut self, ws: &mut Ws, reply: Message) -> Option<Ending> {
        if ws.get_mut().hold_if_idle() {
            // Nothing is waiting to go out before it: write it now (a ping-pong round trip
            // then costs one pass of the loop, not two).
            return self.write_one(ws, reply).await.err().map(|e| self.write_failed(e));
        }
        match self.queue.push(Outbound::Reply(reply)) {
            Ok(()) => None,
            Err(_) => {
                self.shared.metrics.slow_consumers.inc();
                Some(
                    self.close(
                        ws,
                        CloseCode::SLOW_CONSUMER,
                        "slow consumer: outbound queue full",
                        None,
                        false,
                    )
                    .await,
                )
            }
        }
    }

    pub(super) fn count_error(&self, reply: &ServerMessage) {
        let code = match reply {
            ServerMessage::Reply { error: Some(e), .. } | ServerMessage::Error { error: e } => {
                e.code
            }
            _ => return,
        };
        self.shared
            .metrics
            .command_errors
            .get_or_create(&crate::metrics::ReasonLabels { reason: code.as_str() })
            .inc();
    }

    pub(super) async fn on_command(&mut self, command: ClientCommand) -> ServerMessage {
        let id = command.id();
        let result = match command {
            // (`connect` is answered by `connect_command`, which can end the connection.)
            ClientCommand::Ping { .. } | ClientCommand::Connect { .. } => {
                Ok(ReplyResult::default())
            }
            ClientCommand::Subscribe { channel, .. } => self.subscribe(&channel),
            ClientCommand::Unsubscribe { channel, .. } => {
                if self.queue.with_subscriptions(|s| s.remove(&channel)) {
                    self.shared.hub.unsubscribe(&channel, self.id);
                    Ok(ReplyResult::default())
                } else {
                    Err(ErrorBody::new(
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to `{channel}`"),
                    ))
                }
            }
            ClientCommand::Publish { channel, data, .. } => self.publish(&channel, &data).await,
        };
        match result {
            Ok(result) => ServerMessage::ok(id, result),
            Err(error) => ServerMessage::err(Some(id), error),
        }
    }

    pub(super) fn subscribe(&mut self, channel: &str) -> Result<ReplyResult, ErrorBody> {
        let cfg = &self.shared.config;
        channel::validate(channel, cfg.max_channel_name_len)
            .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
        let (subscribed, held) = self.queue.with_subscriptions(|s| (s.contains(channel), s.len()));
        if subscribed {
            return Err(ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to `{channel}`"),
            ));
        }
        if held >= cfg.max_subscriptions {
            return Err(ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection already holds {} subscriptions (max_subscriptions)",
                    cfg.max_subscriptions
                ),
            ));
        }
        let sub = Subscriber::new(self.queue.clone(), self.mode);
        // Publishers queue from here on until the reply that follows is written: they must
        // not meet the subscription before its watermark exists (a recovery sets it later).
        self.queue.hold();
        // The watermark exists before the hub knows the subscription: a sweep passes over a
        // connection without one, and would not come back for what it passed over.
        self.queue.with_subscriptions(|s| s.insert(Arc::from(channel)));
        if let Some(name) = self.shared.hub.subscribe(channel, self.id, sub) {
            self.queue.with_subscriptions(|s| s.adopt(name));
        }
        Ok(ReplyResult::default())
    }

    /// `subscribe`, with recovery: check access, register in the hub first (live publications
    /// start queueing), then answer with the position and the replay (see `replay`).
    pub(super) async fn subscribe_command(
        &mut self,
        ws: &mut Ws,
        id: u64,
        channel: String,
        recover: Option<tether_core::protocol::StreamPosition>,
    ) -> Option<Ending> {
        match self.access(&channel, false) {
            Access::Allowed => {}
            Access::Forbidden => {
                let reply = ServerMessage::err(
                    Some(id),
                    ErrorBody::new(
                        ErrorCode::Forbidden,
                        format!(
                            "this connection's token does not allow subscribing to `{channel}`"
                        ),
                    ),
                );
                self.count_error(&reply);
                return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
            }
            Access::TokenRequired => {
                let reason = format!("a token is required for `{channel}`: send `connect` first");
                return Some(self.close(ws, CloseCode::TOKEN_REQUIRED, &reason, None, false).await);
            }
            Access::TokenExpired => return Some(self.token_expired(ws).await),
        }
        if let Err(error) = self.subscribe(&channel) {
            let reply = ServerMessage::err(Some(id), error);
            self.count_error(&reply);
            return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
        }
        self.answer_subscribe(ws, id, &channel, recover.as_ref()).await
    }

    pub(super) async fn publish(
        &self,
        channel: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<ReplyResult, ErrorBody> {
        let cfg = &self.shared.config;
        channel::validate(channel, cfg.max_channel_name_len)
            .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
        if channel.starts_with(tether_core::channel::RESERVED_PREFIX)
            || !channel::any_matches(&cfg.client_publish, channel)
        {
            return Err(ErrorBody::new(
                ErrorCode::PublishForbidden,
                format!("clients may not publish to `{channel}`; see the `client_publish` setting"),
            ));
        }
        if self.access(channel, true) != Access::Allowed {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("this connection's token does not allow publishing to `{channel}`"),
            ));
        }
        let receipt = self
            .shared
            .broker
            .publish(channel, data, None)
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
        self.shared.metrics.publications.inc();
        Ok(ReplyResult {
            offset: Some(receipt.offset),
            delivered: Some(receipt.delivered),
            epoch: Some(receipt.epoch.to_string()),
            ..ReplyResult::default()
        })
    }
}
