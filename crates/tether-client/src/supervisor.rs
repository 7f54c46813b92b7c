//! The supervisor: the single task that owns the connection. It connects, runs a session until
//! it ends, asks the reconnect policy what to do, tells the application, waits, and repeats.
//! While disconnected it keeps serving the application's requests (sends go to the bounded
//! offline queue, subscriptions are remembered and re-sent after the next open).

use crate::config::{ClientConfig, Mode};
use crate::error::ClientError;
use crate::event::{CloseInfo, Event};
use crate::inflating_stream::InflatingStream;
use crate::stats::ClientStats;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tether_core::close_code::{CloseCode, Initiator};
use tether_core::codec;
use tether_core::defaults::SUBPROTOCOL_JSON;
use tether_core::heartbeat::{Action, Heartbeat};
use tether_core::protocol::{ClientCommand, ServerMessage, StreamPosition};
use tether_core::reconnect::{Decision, Ended, Reconnector};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WireCode, Data, OpCode,
};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<InflatingStream<MaybeTlsStream<TcpStream>>>;
type Done<T> = oneshot::Sender<Result<T, ClientError>>;

pub(crate) enum Request {
    Subscribe { channel: String, done: Done<()> },
    Unsubscribe { channel: String, done: Done<()> },
    Publish { channel: String, data: Box<RawValue>, done: Done<()> },
    SendText { text: String, done: Done<()> },
    SendBinary { data: Bytes, done: Done<()> },
    Close { done: Done<()> },
}

/// How one session (or connect attempt) ended.
struct SessionEnd {
    code: CloseCode,
    reason: String,
    initiator: Initiator,
    was_clean: bool,
    by_user: bool,
    advice_reconnect: Option<bool>,
    advice_retry_after: Option<Duration>,
    /// A connect failure that retrying cannot fix.
    fatal: Option<String>,
    /// The application's close request, answered once the close is done.
    close_done: Option<Done<()>>,
}

impl SessionEnd {
    fn network(reason: impl Into<String>) -> Self {
        SessionEnd {
            code: CloseCode::ABNORMAL,
            reason: reason.into(),
            initiator: Initiator::Network,
            was_clean: false,
            by_user: false,
            advice_reconnect: None,
            advice_retry_after: None,
            fatal: None,
            close_done: None,
        }
    }

    fn fatal(reason: String) -> Self {
        SessionEnd { fatal: Some(reason.clone()), ..SessionEnd::network(reason) }
    }
}

pub(crate) struct Supervisor {
    config: ClientConfig,
    requests: mpsc::Receiver<Request>,
    events: mpsc::Sender<Event>,
    stats: Arc<ClientStats>,
    /// Channels the application wants, each with the last stream position seen on it;
    /// re-subscribed after every open, asking the server to replay what came after it.
    channels: BTreeMap<String, Option<StreamPosition>>,
    /// Messages waiting for a connection, bounded by `config.offline_queue`.
    offline: VecDeque<Message>,
    next_id: u64,
    /// Command ids of subscribes in flight → (channel, is a resubscribe). Cleared per session.
    pending_subscribes: HashMap<u64, (String, bool)>,
    /// The server's `disconnect` advice in this session, if any: (reconnect, retry_after).
    advice: (Option<bool>, Option<Duration>),
    /// On a connection that agreed to permessage-deflate, with `compress_sends` set: the window
    /// (bits) the client's compressed messages must stay within.
    send_window: Option<u8>,
}

impl Supervisor {
    pub(crate) fn new(
        config: ClientConfig,
        requests: mpsc::Receiver<Request>,
        events: mpsc::Sender<Event>,
        stats: Arc<ClientStats>,
    ) -> Self {
        Supervisor {
            config,
            requests,
            events,
            stats,
            channels: BTreeMap::new(),
            offline: VecDeque::new(),
            next_id: 1,
            pending_subscribes: HashMap::new(),
            advice: (None, None),
            send_window: None,
        }
    }

    async fn emit(&self, event: Event) {
        // The application may have dropped its event stream; the client keeps working.
        let _ = self.events.send(event).await;
    }

    pub(crate) async fn run(mut self) {
        self.stats.supervisors.fetch_add(1, Ordering::Relaxed);
        let mut reconnector = Reconnector::new(self.config.reconnect);
        let mut attempt = 0u32;
        let mut opened_before = false;
        loop {
            self.emit(Event::Connecting { attempt }).await;
            self.stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
            let end = match self.connect().await {
                Ok(mut ws) => {
                    reconnector.on_open(Instant::now().into_std());
                    self.stats.opened.fetch_add(1, Ordering::Relaxed);
                    self.emit(Event::Open { reconnected: opened_before }).await;
                    let resubscribe = opened_before;
                    opened_before = true;
                    self.session(&mut ws, resubscribe).await
                }
                Err(end) => end,
            };
            // Advice received before the end counts whatever way the session ended.
            let advice = std::mem::take(&mut self.advice);
            let ended = Ended {
                code: Some(end.code),
                initiator: end.initiator,
                requested_by_user: end.by_user,
                advice_reconnect: end.advice_reconnect.or(advice.0),
                advice_retry_after: end.advice_retry_after.or(advice.1),
                fatal: end.fatal,
            };
            let mut decision =
                reconnector.on_close(Instant::now().into_std(), &ended, rand::random::<f64>());
            let refresh = end.code == CloseCode::TOKEN_EXPIRED
                || (self.config.token_refresh_on_reconnect && self.config.token_refresh.is_some());
            if refresh && matches!(decision, Decision::Retry { .. }) {
                if let Err(why) = self.refresh_token().await {
                    decision = Decision::Stop(tether_core::reconnect::StopReason::Refused(why));
                }
            }
            let (will_reconnect, retry_in, next_attempt) = match &decision {
                Decision::Retry { attempt, delay } => (true, Some(*delay), *attempt),
                Decision::Stop(_) => (false, None, 0),
            };
            tracing::debug!(code = end.code.0, reason = %end.reason, will_reconnect, "connection ended");
            // Answer `close()` first: an application awaiting it may not be reading events.
            if let Some(done) = end.close_done {
                let _ = done.send(Ok(()));
            }
            self.emit(Event::Closed(CloseInfo {
                code: end.code.0,
                reason: end.reason,
                was_clean: end.was_clean,
                initiator: end.initiator,
                will_reconnect,
                retry_in,
                attempt: next_attempt,
            }))
            .await;
            match decision {
                Decision::Stop(reason) => {
                    self.emit(Event::Stopped { reason }).await;
                    break;
                }
                Decision::Retry { delay, attempt: n } => {
                    attempt = n;
                    if !self.wait_offline(delay).await {
                        self.emit(Event::Stopped {
                            reason: tether_core::reconnect::StopReason::RequestedByUser,
                        })
                        .await;
                        break;
                    }
                }
            }
        }
        self.stats.supervisors.fetch_sub(1, Ordering::Relaxed);
        // Fail whatever is still waiting.
        self.requests.close();
        while let Ok(req) = self.requests.try_recv() {
            reject(req, ClientError::Stopped);
        }
    }

    async fn connect(&mut self) -> Result<Ws, SessionEnd> {
        let mut request = self
            .config
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| SessionEnd::fatal(format!("bad URL {}: {e}", self.config.url)))?;
        if self.config.mode == Mode::Json {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(SUBPROTOCOL_JSON));
        }
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size));
        let offered = self.config.compression;
        if offered {
            request.headers_mut().insert(
                "sec-websocket-extensions",
                HeaderValue::from_static(tether_core::permessage_deflate::CLIENT_OFFER),
            );
        }
        let tls = match self.config.url.starts_with("wss://") {
            true => Some(tls_config(&self.config.tls_roots).map_err(SessionEnd::fatal)?),
            false => None,
        };
        let max_message = self.config.max_message_size;
        let local = self.config.local_address;
        // TCP and TLS here rather than in tokio-tungstenite, so that the permessage-deflate
        // stream sits above TLS and below the WebSocket layer (see `inflating_stream`).
        let attempt = async {
            let tcp = connect_tcp(local, request.uri()).await.map_err(WsError::Io)?;
            let stream = match tls {
                None => MaybeTlsStream::Plain(tcp),
                Some(config) => {
                    let host = request.uri().host().unwrap_or_default();
                    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                    let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| {
                        WsError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
                    })?;
                    let connector = tokio_rustls::TlsConnector::from(config);
                    MaybeTlsStream::Rustls(connector.connect(name, tcp).await.map_err(WsError::Io)?)
                }
            };
            let stream = InflatingStream::new(stream, offered, max_message);
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config)).await
        };
        let (ws, response) = match tokio::time::timeout(self.config.connect_timeout, attempt).await
        {
            Err(_) => {
                return Err(SessionEnd::network(format!(
                    "connect timed out after {:?}",
                    self.config.connect_timeout
                )))
            }
            Ok(Err(WsError::Http(resp))) => {
                let body = resp
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                let status = resp.status();
                let reason = format!("handshake refused: HTTP {} {}", status, body.trim());
                // 4xx (but 408 and 429) will be refused again; 5xx and those two are transient.
                if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
                    return Err(SessionEnd::fatal(reason));
                }
                let retry_after = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                return Err(SessionEnd {
                    advice_retry_after: retry_after,
                    ..SessionEnd::network(reason)
                });
            }
            Ok(Err(e)) if untrusted_certificate(&e) => {
                // Retrying cannot help until the configuration changes.
                return Err(SessionEnd::fatal(format!(
                    "TLS: the server's certificate is not trusted ({e}); if it comes from a \
                     private CA, trust it with ClientConfig::with_ca_file (tether connect --ca-cert)"
                )));
            }
            Ok(Err(e)) => return Err(SessionEnd::network(format!("connect failed: {e}"))),
            Ok(Ok(pair)) => pair,
        };
        if self.config.mode == Mode::Json
            && response.headers().get("sec-websocket-protocol").map(|v| v.as_bytes())
                != Some(SUBPROTOCOL_JSON.as_bytes())
        {
            return Err(SessionEnd::fatal(
                "the server did not accept subprotocol tether.v1.json; use raw mode for plain WebSocket servers".into(),
            ));
        }
        // An extension we did not offer, or deflate on terms we did not ask for: RFC 7692 §5
        // says fail the connection (it would be unreadable).
        let agreed = response
            .headers()
            .get("sec-websocket-extensions")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let deflate = match (offered, agreed.as_deref()) {
            (false, Some(other)) => {
                Err(format!("the server answered an extension that was not offered: {other}"))
            }
            (_, agreed) => tether_core::permessage_deflate::client_accepts(agreed),
        };
        self.send_window = match (deflate, &agreed, self.config.compress_sends) {
            (Err(why), ..) => return Err(SessionEnd::fatal(why)),
            (Ok(true), Some(agreed), Some(_)) => {
                Some(tether_core::permessage_deflate::client_window_bits(agreed))
            }
            _ => None,
        };
        *self.stats.extensions.lock().unwrap_or_else(|p| p.into_inner()) =
            agreed.unwrap_or_default();
        Ok(ws)
    }

    /// The server said the token expired, or every reconnect asks for a fresh one
    /// (`token_refresh_on_reconnect`): get a fresh one for the next connection.
    async fn refresh_token(&mut self) -> Result<(), String> {
        let Some(refresh) = self.config.token_refresh.clone() else {
            return Err("the token expired (4002) and no token_refresh is configured".into());
        };
        match tokio::time::timeout(self.config.connect_timeout, (refresh.0)()).await {
            Ok(Ok(token)) => {
                self.config.token = Some(token);
                Ok(())
            }
            Ok(Err(why)) => Err(format!("token refresh failed: {why}")),
            Err(_) => {
                Err(format!("token refresh took longer than {:?}", self.config.connect_timeout))
            }
        }
    }

    /// Between connections: serve requests until `delay` passes. False if the app closed.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                req = self.requests.recv() => match req {
                    None => return false,
                    Some(Request::Close { done }) => {
                        let _ = done.send(Ok(()));
                        return false;
                    }
                    Some(req) => self.handle_offline(req),
                }
            }
        }
    }

    fn queue(&mut self, msg: Message, done: Done<()>) {
        if self.offline.len() >= self.config.offline_queue {
            let _ = done.send(Err(ClientError::QueueFull(self.offline.len())));
        } else {
            self.offline.push_back(msg);
            let _ = done.send(Ok(()));
        }
    }

    fn command_text(&mut self, make: impl FnOnce(u64) -> ClientCommand) -> (u64, Message) {
        let id = self.next_id;
        self.next_id += 1;
        (id, Message::Text(codec::encode_command(&make(id)).into()))
    }

    fn handle_offline(&mut self, req: Request) {
        match req {
            Request::Subscribe { channel, done } => {
                let ok = self.check_json_mode();
                if ok.is_ok() {
                    self.channels.entry(channel).or_insert(None);
                }
                let _ = done.send(ok);
            }
            Request::Unsubscribe { channel, done } => {
                self.channels.remove(&channel);
                let _ = done.send(Ok(()));
            }
            Request::Publish { channel, data, done } => {
                if let Err(e) = self.check_json_mode() {
                    let _ = done.send(Err(e));
                    return;
                }
                let (_, msg) = self.command_text(|id| ClientCommand::Publish { id, channel, data });
                self.queue(msg, done);
            }
            Request::SendText { text, done } => self.queue(Message::Text(text.into()), done),
            Request::SendBinary { data, done } => self.queue(Message::Binary(data), done),
            Request::Close { done } => {
                let _ = done.send(Ok(()));
            }
        }
    }

    fn check_json_mode(&self) -> Result<(), ClientError> {
        match self.config.mode {
            Mode::Json => Ok(()),
            Mode::Raw => Err(ClientError::WrongMode(
                "subscribe/publish need JSON mode; in raw mode use ?channel= in the URL and send_text",
            )),
        }
    }

    /// How long one write may block: a server that does not read for a whole heartbeat
    /// period is as good as dead.
    fn write_timeout(&self) -> Duration {
        self.config.ping_interval + self.config.pong_timeout
    }

    /// A data message as it goes on the wire: compressed, RSV1 set (RFC 7692 §6), when this
    /// connection compresses sends and the message is big enough; else as it is.
    fn outbound(&self, msg: Message) -> Message {
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
    async fn write(&self, ws: &mut Ws, msg: Message) -> Result<(), SessionEnd> {
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
    async fn session(&mut self, ws: &mut Ws, resubscribe: bool) -> SessionEnd {
        self.pending_subscribes.clear();
        // Re-establish what the application asked for, then flush what waited offline. Queued
        // messages leave the queue only once they are written.
        let channels: Vec<(String, Option<StreamPosition>)> =
            self.channels.iter().map(|(c, p)| (c.clone(), p.clone())).collect();
        let mut batch = Vec::with_capacity(channels.len() + self.offline.len() + 1);
        // Authenticate first: the server handles commands in order.
        if let (Mode::Json, Some(token)) = (self.config.mode, self.config.token.clone()) {
            let (_, msg) = self.command_text(|id| ClientCommand::Connect { id, token });
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

    async fn on_text(&mut self, text: &str) {
        if self.config.mode == Mode::Raw {
            self.emit(Event::Message(text.to_owned())).await;
            return;
        }
        match codec::decode_server_message(text) {
            Ok(ServerMessage::Publication { channel, offset, epoch, data }) => {
                if let Some(position) = self.channels.get_mut(&channel) {
                    *position = Some(StreamPosition { epoch: epoch.clone(), offset });
                }
                self.emit(Event::Publication { channel, offset, epoch, data }).await
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
                if let Some((channel, resubscribe)) = self.pending_subscribes.remove(&id) {
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
            Ok(ServerMessage::Disconnect(d)) => {
                self.advice = (Some(d.reconnect), d.retry_after_ms.map(Duration::from_millis));
            }
            Err(_) => self.emit(Event::Message(text.to_owned())).await,
        }
    }

    /// A request while connected. Returns an ending when the session must end.
    async fn handle_online(&mut self, ws: &mut Ws, req: Request) -> Option<SessionEnd> {
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
    async fn fail(&self, ws: &mut Ws, error: WsError) -> SessionEnd {
        let reason = describe(&error);
        let Some((code, said)) = failure_code(&error) else {
            return SessionEnd::network(reason);
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

    async fn close_by_user(&mut self, ws: &mut Ws, done: Option<Done<()>>) -> SessionEnd {
        let frame = CloseFrame { code: WireCode::Normal, reason: "client closing".into() };
        let clean = tokio::time::timeout(self.config.close_timeout, async {
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

fn reject(req: Request, e: ClientError) {
    let done = match req {
        Request::Subscribe { done, .. }
        | Request::Unsubscribe { done, .. }
        | Request::Publish { done, .. }
        | Request::SendText { done, .. }
        | Request::SendBinary { done, .. }
        | Request::Close { done } => done,
    };
    let _ = done.send(Err(e));
}

/// The close code (and the short reason put on the wire) for a read error caused by what the
/// server sent; `None` for transport errors.
fn failure_code(e: &WsError) -> Option<(CloseCode, &'static str)> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => None,
        WsError::Protocol(_) | WsError::AttackAttempt => {
            Some((CloseCode::PROTOCOL_ERROR, "protocol error"))
        }
        WsError::Utf8(_) => Some((CloseCode::INVALID_PAYLOAD, "invalid UTF-8")),
        WsError::Capacity(_) => Some((CloseCode::MESSAGE_TOO_BIG, "message too big")),
        _ => None,
    }
}

fn describe(e: &WsError) -> String {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            "connection reset without a closing handshake".into()
        }
        WsError::Io(io) => format!("transport error: {io}"),
        other => format!("{other}"),
    }
}

/// rustls (ring provider) trusting the public webpki roots plus `extra`.
fn tls_config(
    extra: &[rustls_pki_types::CertificateDer<'static>],
) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("a configured CA certificate is invalid: {e}"))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Whether a connect error is the server's certificate failing verification.
fn untrusted_certificate(e: &WsError) -> bool {
    use tokio_tungstenite::tungstenite::error::TlsError;
    let io = match e {
        WsError::Io(io) => io,
        WsError::Tls(TlsError::Rustls(r)) => {
            return matches!(**r, rustls::Error::InvalidCertificate(_))
        }
        _ => return false,
    };
    io.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// TCP connect to the URI's host (from `local` when given, bound before connecting), with
/// Nagle off as `connect_async` does.
async fn connect_tcp(
    local: Option<std::net::IpAddr>,
    uri: &tokio_tungstenite::tungstenite::http::Uri,
) -> std::io::Result<TcpStream> {
    use std::io::{Error, ErrorKind};
    let host = uri.host().ok_or_else(|| Error::new(ErrorKind::InvalidInput, "no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("wss") { 443 } else { 80 });
    let stream = match local {
        None => TcpStream::connect((host, port)).await?,
        Some(local) => {
            let target = tokio::net::lookup_host((host, port))
                .await?
                .find(|a| a.is_ipv4() == local.is_ipv4())
                .ok_or_else(|| {
                    Error::new(ErrorKind::AddrNotAvailable, "no address of the local family")
                })?;
            let socket = if local.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.bind((local, 0).into())?;
            socket.connect(target).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}
