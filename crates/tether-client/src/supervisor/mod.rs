//! The supervisor: the single task that owns the connection. It connects, runs a session until
//! it ends, asks the reconnect policy what to do, tells the application, waits, and repeats.
//! While disconnected it keeps serving the application's requests (sends go to the bounded
//! offline queue, subscriptions are remembered and re-sent after the next open).

use crate::config::{ClientConfig, Mode, Transport};
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
use tether_core::protocol::{ClientCommand, ReplyResult, ServerMessage, StreamPosition};
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

mod dial;
mod http_stream;

pub use dial::tls_config;
mod link;
mod session;

use link::Link;

type Ws = WebSocketStream<InflatingStream<MaybeTlsStream<TcpStream>>>;
type Done<T> = oneshot::Sender<Result<T, ClientError>>;

pub(crate) enum Request {
    Subscribe {
        channel: String,
        done: Done<()>,
    },
    Unsubscribe {
        channel: String,
        done: Done<()>,
    },
    Publish {
        channel: String,
        data: Box<RawValue>,
        done: Done<()>,
    },
    SendText {
        text: String,
        done: Done<()>,
    },
    SendBinary {
        data: Bytes,
        done: Done<()>,
    },
    Close {
        done: Done<()>,
    },
    /// A query (`presence`, `presence_stats`, `history`): the command, made with its id;
    /// answered with the reply's result.
    Query {
        command: Box<dyn FnOnce(u64) -> ClientCommand + Send>,
        done: Done<ReplyResult>,
    },
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
    /// Channels the server subscribed this client to (its token's, at `connect`; the server
    /// API's), with the last position seen: sent with `connect` after a reconnect, for the
    /// server to recover them. The connect reply says which it made again.
    server_channels: BTreeMap<String, Option<StreamPosition>>,
    /// The id of this session's `connect`, until its reply (is it a reconnect).
    pending_connect: Option<(u64, bool)>,
    /// Messages waiting for a connection, bounded by `config.offline_queue`.
    offline: VecDeque<Message>,
    next_id: u64,
    /// Command ids of subscribes in flight → (channel, is a resubscribe). Cleared per session.
    pending_subscribes: HashMap<u64, (String, bool)>,
    /// Queries in flight → who waits for the answer. Failed (`NotConnected`) when the session
    /// they were sent on ends.
    pending_queries: HashMap<u64, Done<ReplyResult>>,
    /// The id the server gave the current connection (see `ReplyResult::client`).
    client_id: Arc<std::sync::Mutex<Option<String>>>,
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
        client_id: Arc<std::sync::Mutex<Option<String>>>,
    ) -> Self {
        Supervisor {
            config,
            requests,
            events,
            stats,
            channels: BTreeMap::new(),
            server_channels: BTreeMap::new(),
            pending_connect: None,
            offline: VecDeque::new(),
            next_id: 1,
            pending_subscribes: HashMap::new(),
            pending_queries: HashMap::new(),
            client_id,
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
        let transports = match self.config.mode {
            Mode::Json if !self.config.transports.is_empty() => self.config.transports.clone(),
            _ => vec![Transport::WebSocket],
        };
        let (mut current, mut failed_here) = (0usize, 0u32);
        loop {
            let transport = transports[current];
            self.emit(Event::Connecting { attempt }).await;
            self.stats.connect_attempts.fetch_add(1, Ordering::Relaxed);
            let opened = match transport {
                Transport::WebSocket => self.connect().await.map(|ws| Link::Ws(Box::new(ws))),
                Transport::HttpStream => http_stream::HttpStream::open(&self.config)
                    .await
                    .map(|s| Link::Stream(Box::new(s))),
            };
            let was_open = opened.is_ok();
            let mut end = match opened {
                Ok(mut link) => {
                    failed_here = 0;
                    reconnector.on_open(Instant::now().into_std());
                    self.stats.opened.fetch_add(1, Ordering::Relaxed);
                    self.emit(Event::Open { reconnected: opened_before }).await;
                    let resubscribe = opened_before;
                    opened_before = true;
                    self.session(&mut link, resubscribe).await
                }
                Err(end) => end,
            };
            if !was_open && transports.len() > 1 {
                // A proxy that forbids WebSocket answers the upgrade with an HTTP error: that
                // is what the next transport is for, not a reason to stop. Move on at once.
                // (A 4xx other than 408 and 429, which dial.rs makes fatal: a 5xx or a busy
                // node is no reason to move on at once.)
                let refused = transport == Transport::WebSocket
                    && end.fatal.is_some()
                    && end.reason.starts_with("handshake refused");
                failed_here += 1;
                if refused || failed_here >= self.config.fallback_after {
                    if refused {
                        end.fatal = None;
                    }
                    current = (current + 1) % transports.len();
                    failed_here = 0;
                    tracing::info!(from = transport.as_str(), to = transports[current].as_str(), why = %end.reason, "trying another transport");
                }
            }
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
                transport,
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
            Request::Query { done, .. } => {
                let _ = done.send(Err(ClientError::NotConnected));
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
}

fn reject(req: Request, e: ClientError) {
    let done = match req {
        Request::Query { done, .. } => {
            let _ = done.send(Err(e));
            return;
        }
        Request::Subscribe { done, .. }
        | Request::Unsubscribe { done, .. }
        | Request::Publish { done, .. }
        | Request::SendText { done, .. }
        | Request::SendBinary { done, .. }
        | Request::Close { done } => done,
    };
    let _ = done.send(Err(e));
}
