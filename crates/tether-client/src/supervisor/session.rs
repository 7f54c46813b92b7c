//! One session on an open connection: heartbeats, inbound messages, requests from the
//! application, writes with their deadline, and how it ends.

use super::dial::{describe, failure_code};
use super::*;

/// The client id's lock: a poisoned one (a panic elsewhere while holding it) still holds a
/// usable value.
pub(super) fn crate_lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Supervisor {
    /// How long one write may block: a server that does not read for a whole heartbeat
    /// period is as good as dead.
    pub(super) fn write_timeout(&self) -> Duration {
        self.config.ping_interval + self.config.pong_timeout
    }

    /// A data message as it goes on the wire: compressed, RSV1 set (RFC 7692 §6), when this
    /// connection compresses sends and the message is big enough; else as it is.
    pub(super) fn outbound(&self, msg: Message) -> Message {
        let (Some(window), Some(min_size)) = (self.send_window, self.config.compress_sends) else {
            return msg;
        };
        let (opcode, payload) = match &msg {
            Message::Text(text) => (Data::Text, text.as_bytes()),
            Message::Binary(data) => (Data::Binary, &data[..]),
            _ => return msg,
        };
        if payload.len() < min_size {
            return msg;
        }
        let compressed = tether_core::permessage_deflate::compress_within(payload, window);
        let mut frame = Frame::message(compressed, OpCode::Data(opcode), true);
        frame.header_mut().rsv1 = true;
        Message::Frame(frame)
    }

    /// Write with the liveness deadline; a blocked or failed write ends the session.
    pub(super) async fn write(&self, ws: &mut Link, msg: Message) -> Result<(), SessionEnd> {
        let msg = self.outbound(msg);
        match tokio::time::timeout(self.write_timeout(), ws.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionEnd::network(format!("write failed: {e}"))),
            Err(_) => Err(SessionEnd::network(format!(
                "write blocked for {:?}: the server is not reading",
                self.write_timeout()
            ))),
        }
    }

    /// Run one open connection until it ends.
    pub(super) async fn session(&mut self, ws: &mut Link, resubscribe: bool) -> SessionEnd {
        self.pending_subscribes.clear();
        self.pending_connect = None;
        for (_, done) in self.pending_queries.drain() {
            let _ = done.send(Err(ClientError::NotConnected));
        }
        *crate_lock(&self.client_id) = None;
        // Re-establish what the application asked for, then flush what waited offline. Queued
        // messages leave the queue only once they are written.
        let channels: Vec<(String, Option<StreamPosition>)> =
            self.channels.iter().map(|(c, p)| (c.clone(), p.clone())).collect();
        let mut batch = Vec::with_capacity(channels.len() + self.offline.len() + 1);
        // Authenticate first: the server handles commands in order.
        if let (Mode::Json, Some(token)) = (self.config.mode, self.config.token.clone()) {
            let subs = self
                .server_channels
                .iter()
                .filter_map(|(c, p)| Some((c.clone(), p.clone()?)))
                .collect();
            let (id, msg) = self.command_text(|id| ClientCommand::Connect { id, token, subs });
            self.pending_connect = Some((id, resubscribe));
            batch.push(msg);
        }
        for (channel, recover) in channels {
            let (id, msg) = self.command_text(|id| ClientCommand::Subscribe {
                id,
                channel: channel.clone(),
                recover,
            });
            self.pending_subscribes.insert(id, (channel, resubscribe));
            batch.push(msg);
        }
        // Some command, so that the first reply tells this connection's client id.
        if self.config.mode == Mode::Json && batch.is_empty() {
            let (_, msg) = self.command_text(|id| ClientCommand::Ping { id });
            batch.push(msg);
        }
        batch.extend(self.offline.iter().cloned());
        let flushed = tokio::time::timeout(self.write_timeout(), async {
            for msg in batch {
                ws.feed(self.outbound(msg)).await?;
            }
            ws.flush().await
        })
        .await;
        match flushed {
            Ok(Ok(())) => self.offline.clear(),
            Ok(Err(e)) => return SessionEnd::network(format!("write failed: {e}")),
            Err(_) => return SessionEnd::network("write blocked: the server is not reading"),
        }

        let mut heartbeat = Heartbeat::new(
            self.config.ping_interval,
            self.config.pong_timeout,
            Instant::now().into_std(),
        );
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let wake_at = match heartbeat.poll(Instant::now().into_std()) {
                Action::SendPing => {
                    if let Err(end) = self.write(ws, Message::Ping(Default::default())).await {
                        return end;
                    }
                    continue;
                }
                Action::PeerDead => {
                    self.stats.heartbeat_timeouts.fetch_add(1, Ordering::Relaxed);
                    // Abort: a frozen or unreachable server will not complete a closing handshake.
                    return SessionEnd {
                        code: CloseCode::HEARTBEAT_TIMEOUT,
                        reason: format!(
                            "heartbeat timeout: no frame from the server for {:?}",
                            self.config.ping_interval + self.config.pong_timeout
                        ),
                        initiator: Initiator::Client,
                        ..SessionEnd::network("")
                    };
                }
                Action::Wait(at) => at,
                // Quiet spells are the server's side of `tether doctor --idle-probe` (which does
                // not run this loop); this machine never starts one.
                Action::QuietOver => Instant::now().into_std() + self.config.ping_interval,
            };
            sleep.as_mut().reset(Instant::from_std(wake_at));
            tokio::select! {
                _ = &mut sleep => {}
                req = self.requests.recv() => {
                    let Some(req) = req else {
                        // Every handle was dropped: close politely and stop.
                        return self.close_by_user(ws, None).await;
                    };
                    if let Some(end) = self.handle_online(ws, req).await {
                        return end;
                    }
                }
                inbound = ws.next() => {
                    heartbeat.on_inbound(Instant::now().into_std());
                    match inbound {
                        Some(Ok(Message::Text(text))) => self.on_text(text.as_str()).await,
                        Some(Ok(Message::Binary(data))) => self.emit(Event::Binary(data)).await,
                        Some(Ok(Message::Pong(_))) => { heartbeat.on_pong(Instant::now().into_std()); }
                        Some(Ok(Message::Ping(_))) => {
                            if let Err(e) = ws.flush().await {
                                return SessionEnd::network(format!("write failed: {e}"));
                            }
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = match frame {
                                Some(f) => (CloseCode(u16::from(f.code)), f.reason.to_string()),
                                None => (CloseCode::NO_STATUS, String::new()),
                            };
                            // Drive the stream to its end so our close reply goes out.
                            let clean = tokio::time::timeout(self.config.close_timeout, async {
                                while ws.next().await.is_some() {}
                            }).await.is_ok();
                            return SessionEnd {
                                code,
                                reason,
                                initiator: Initiator::Server,
                                was_clean: clean,
                                ..SessionEnd::network("")
                            };
                        }
                        Some(Ok(Message::Frame(_))) => {}
                        Some(Err(e)) => return self.fail(ws, e).await,
                        None => return SessionEnd::network("connection ended without a close frame"),
                    }
                }
            }
        }
    }

    pub(super) async fn on_text(&mut self, text: &str) {
        if self.config.mode == Mode::Raw {
            self.emit(Event::Message(text.to_owned())).await;
            return;
        }
        match codec::decode_server_message(text) {
            Ok(ServerMessage::Publication { channel, offset, epoch, data }) => {
                // A channel can be both the application's and the server's (a subscribe to the
                // user's own channel): both positions move.
                let now = StreamPosition { epoch: epoch.clone(), offset };
                if let Some(position) = self.channels.get_mut(&channel) {
                    *position = Some(now.clone());
                }
                if let Some(position) = self.server_channels.get_mut(&channel) {
                    *position = Some(now);
                }
                self.emit(Event::Publication { channel, offset, epoch, data }).await
            }
            Ok(ServerMessage::Reply { id, error: Some(error), .. })
                if self.pending_queries.contains_key(&id) =>
            {
                if let Some(done) = self.pending_queries.remove(&id) {
                    let _ = done.send(Err(ClientError::Refused(error)));
                }
            }
            Ok(ServerMessage::Reply { id, error: Some(error), .. }) => {
                // A refused subscribe is forgotten: re-sending it after every reconnect would
                // only be refused again.
                if let Some((channel, _)) = self.pending_subscribes.remove(&id) {
                    self.channels.remove(&channel);
                }
                self.emit(Event::CommandError { id: Some(id), error }).await
            }
            Ok(ServerMessage::Reply { id, result, .. }) => {
                if let Some(client) = result.as_ref().and_then(|r| r.client.clone()) {
                    *crate_lock(&self.client_id) = Some(client);
                }
                if let Some(done) = self.pending_queries.remove(&id) {
                    let _ = done.send(Ok(result.map(|r| *r).unwrap_or_default()));
                } else if self.pending_connect.is_some_and(|(c, _)| c == id) {
                    let (_, resubscribe) = self.pending_connect.take().expect("checked");
                    let made = result.and_then(|r| r.subscriptions).unwrap_or_default();
                    self.server_made(made, resubscribe).await
                } else if let Some((channel, resubscribe)) = self.pending_subscribes.remove(&id) {
                    let result = result.unwrap_or_default();
                    // Recovered: the replay that follows moves the position along. Otherwise
                    // start from the server's current top (the application refetches its state).
                    if result.recovered != Some(true) {
                        if let (Some(epoch), Some(offset), Some(position)) =
                            (result.epoch, result.offset, self.channels.get_mut(&channel))
                        {
                            *position = Some(StreamPosition { epoch, offset });
                        }
                    }
                    let (recovered, reason) = (result.recovered, result.reason);
                    self.emit(Event::Subscribed { channel, resubscribe, recovered, reason }).await
                }
            }
            Ok(ServerMessage::Error { error }) => {
                self.emit(Event::CommandError { id: None, error }).await
            }
            Ok(ServerMessage::Subscribed { channel, epoch, offset }) => {
                let position = Some(StreamPosition { epoch, offset });
                self.server_channels.insert(channel.clone(), position);
                let (resubscribe, recovered, reason) = (false, None, None);
                self.emit(Event::Subscribed { channel, resubscribe, recovered, reason }).await
            }
            Ok(ServerMessage::Unsubscribed { channel }) => {
                self.server_channels.remove(&channel);
                self.channels.remove(&channel);
                self.emit(Event::Unsubscribed { channel }).await
            }
            Ok(ServerMessage::Presence { channel, events }) => {
                for (change, info) in events {
                    self.emit(Event::Presence { channel: channel.clone(), change, info }).await;
                }
            }
            Ok(ServerMessage::Disconnect(d)) => {
                self.advice = (Some(d.reconnect), d.retry_after_ms.map(Duration::from_millis));
            }
            // Streaming sessions' own messages; a WebSocket never carries them.
            Ok(ServerMessage::Session { .. } | ServerMessage::Ping) => {}
            Err(_) => self.emit(Event::Message(text.to_owned())).await,
        }
    }

    /// The server-side subscriptions `connect` made: they replace those held before (a
    /// channel the token no longer gives, or one the API had added, is gone). A recovered one
    /// keeps its position (the replay after the reply moves it on); any other starts from the
    /// server's top.
    async fn server_made(
        &mut self,
        made: BTreeMap<String, tether_core::protocol::ServerSubscription>,
        resubscribe: bool,
    ) {
        let before = std::mem::take(&mut self.server_channels);
        for (channel, sub) in made {
            let position = match (sub.recovered, before.get(&channel)) {
                (Some(true), Some(Some(p))) => p.clone(),
                _ => StreamPosition { epoch: sub.epoch, offset: sub.offset },
            };
            self.server_channels.insert(channel.clone(), Some(position));
            let (recovered, reason) = (sub.recovered, sub.reason);
            self.emit(Event::Subscribed { channel, resubscribe, recovered, reason }).await;
        }
    }

    /// A request while connected. Returns an ending when the session must end.
    pub(super) async fn handle_online(
        &mut self,
        ws: &mut Link,
        req: Request,
    ) -> Option<SessionEnd> {
        let (msg, done) = match req {
            Request::Close { done } => return Some(self.close_by_user(ws, Some(done)).await),
            Request::Subscribe { channel, done } => {
                if let Err(e) = self.check_json_mode() {
                    let _ = done.send(Err(e));
                    return None;
                }
                if self.channels.contains_key(&channel) {
                    let _ = done.send(Ok(()));
                    return None;
                }
                self.channels.insert(channel.clone(), None);
                let (id, msg) = self.command_text(|id| ClientCommand::Subscribe {
                    id,
                    channel: channel.clone(),
                    recover: None,
                });
                self.pending_subscribes.insert(id, (channel, false));
                (msg, done)
            }
            Request::Unsubscribe { channel, done } => {
                if self.channels.remove(&channel).is_none() {
                    let _ = done.send(Ok(()));
                    return None;
                }
                let (_, msg) = self.command_text(|id| ClientCommand::Unsubscribe { id, channel });
                (msg, done)
            }
            Request::Publish { channel, data, done } => {
                if let Err(e) = self.check_json_mode() {
                    let _ = done.send(Err(e));
                    return None;
                }
                let (_, msg) = self.command_text(|id| ClientCommand::Publish { id, channel, data });
                (msg, done)
            }
            Request::SendText { text, done } => (Message::Text(text.into()), done),
            Request::SendBinary { data, done } => (Message::Binary(data), done),
            Request::Query { command, done } => {
                if let Err(e) = self.check_json_mode() {
                    let _ = done.send(Err(e));
                    return None;
                }
                let (id, msg) = self.command_text(command);
                // Answered when the reply comes (or failed when the session ends first).
                self.pending_queries.insert(id, done);
                return self.write(ws, msg).await.err();
            }
        };
        // Answered Ok either way: a frame handed to a connection that then fails is lost with
        // it, like any frame in flight (recovery from history covers publications later).
        let result = self.write(ws, msg).await;
        let _ = done.send(Ok(()));
        result.err()
    }

    /// A read failed. When the server broke the protocol (or sent more than we take), fail the
    /// connection as RFC 6455 §7.1.7 asks: a close frame whose code says why (1002, 1007,
    /// 1009), then wait, bounded, for the server to close TCP (the server closes first, §7.1.1).
    /// A transport error leaves no one to tell.
    pub(super) async fn fail(&self, ws: &mut Link, error: WsError) -> SessionEnd {
        let reason = describe(&error);
        let Some((code, said)) = failure_code(&error) else {
            return SessionEnd::network(reason);
        };
        let Link::Ws(ws) = ws else {
            // A stream has no closing handshake: dropping it ends the session.
            return SessionEnd {
                code,
                reason,
                initiator: Initiator::Client,
                ..SessionEnd::network("")
            };
        };
        let frame = CloseFrame { code: WireCode::from(code.0), reason: said.into() };
        // tungstenite reads nothing more after an error: drain the raw stream to its end.
        let _ = tokio::time::timeout(self.config.close_timeout, async {
            ws.send(Message::Close(Some(frame))).await?;
            let mut scratch = vec![0u8; 4096];
            while ws.get_mut().read(&mut scratch).await? > 0 {}
            Ok::<_, WsError>(())
        })
        .await;
        SessionEnd { code, reason, initiator: Initiator::Client, ..SessionEnd::network("") }
    }

    pub(super) async fn close_by_user(
        &mut self,
        ws: &mut Link,
        done: Option<Done<()>>,
    ) -> SessionEnd {
        let frame = CloseFrame { code: WireCode::Normal, reason: "client closing".into() };
        let clean = tokio::time::timeout(self.config.close_timeout, async {
            // A stream's session ends when its response is dropped: nothing to say first.
            if matches!(ws, Link::Stream(_)) {
                return Ok(());
            }
            ws.send(Message::Close(Some(frame))).await?;
            while let Some(msg) = ws.next().await {
                msg?;
            }
            Ok::<_, WsError>(())
        })
        .await;
        SessionEnd {
            code: CloseCode::NORMAL,
            reason: "client closing".into(),
            initiator: Initiator::Client,
            was_clean: matches!(clean, Ok(Ok(()))),
            by_user: true,
            close_done: done,
            ..SessionEnd::network("")
        }
    }
}
