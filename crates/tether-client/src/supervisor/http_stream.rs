//! The HTTP-streaming transport, for networks that let no WebSocket through: `POST /stream`
//! opens a session whose response streams the server's messages, one JSON message per line;
//! the client's commands go as `POST /stream/send?session=ID` on a second connection, one
//! request at a time, so that they arrive in order (any node may take them). hyper does the
//! HTTP/1.1, over the same TCP and TLS the WebSocket uses.
//!
//! Commands are sent by a task of their own (`Commands`), so that a `POST` waiting for its
//! answer never stops the stream being read: a server that stops answering is found by the
//! heartbeat, as on a WebSocket, not by a blocked request.
//!
//! To the session loop it looks like a WebSocket ([`super::link::Link`]): lines come out as
//! text messages; the server's `{"type":"ping"}` comes out as a ping, which the loop answers
//! by flushing (the answer, a `ping` command, is queued here); the client's own heartbeat ping
//! goes as a `ping` command whose reply comes out as a pong; the server's `disconnect` advice is
//! followed, when the response ends, by a close with its code.

use super::dial::{connect_tcp, describe, refused, tls_config};
use super::*;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::http::{Method, Request as HttpRequest, StatusCode, Uri};

/// Ids of this transport's own pings count down from here (the supervisor's count up from 1).
const OWN_IDS: u64 = u64::MAX >> 11; // within JSON's exact integers

/// How many times a batch of commands is tried when the network or a busy node refuses it.
const SEND_TRIES: u32 = 4;

type Sender = http1::SendRequest<Full<Bytes>>;

/// Command batches handed to the sending task and not yet sent (then `flush` waits).
const COMMANDS_WAITING: usize = 64;

/// What the sending task reports when a batch did not go through.
enum SendFailed {
    /// The node answered 404: the session is gone.
    Unknown,
    /// Anything else, after the retries.
    Failed(String),
}

/// Where the session's endpoints are, and how to reach them.
struct Target {
    uri: Uri,
    /// `http://host:port/prefix`, from `ws://host:port/prefix/ws`.
    base: String,
    query: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    local: Option<std::net::IpAddr>,
}

pub(super) struct HttpStream {
    body: hyper::body::Incoming,
    /// Bytes of a line not yet complete.
    partial: Vec<u8>,
    ready: VecDeque<Message>,
    pub session: String,
    max_message: usize,
    /// The streaming connection's task (aborted when the session is dropped).
    stream_conn: tokio::task::JoinHandle<()>,
    /// Commands queued since the last flush.
    outbox: Vec<String>,
    /// The sending task: batches to send, what failed, and the task (aborted on drop).
    commands: mpsc::Sender<String>,
    failed: mpsc::Receiver<SendFailed>,
    sending: tokio::task::JoinHandle<()>,
    next_own: u64,
    /// Our heartbeat ping in flight: its reply is the pong.
    ping: Option<u64>,
    advice: Option<(CloseCode, String)>,
    ended: bool,
    /// A node said the session is unknown: its stream should end now, saying why; this long
    /// is waited for that (`close_timeout`) before the session is given up as lost.
    orphaned: Option<Instant>,
    close_timeout: Duration,
}

impl Drop for HttpStream {
    fn drop(&mut self) {
        self.stream_conn.abort();
        self.sending.abort();
    }
}

/// A transport failure, in the WebSocket's terms (the session loop reads `WsError`s).
fn failure(why: impl Into<String>) -> WsError {
    WsError::Io(std::io::Error::other(why.into()))
}

impl Target {
    fn new(config: &ClientConfig) -> Result<Self, String> {
        let uri: Uri = config.url.parse().map_err(|e| format!("bad URL {}: {e}", config.url))?;
        let scheme = match uri.scheme_str() {
            Some("ws") | Some("http") => "http",
            Some("wss") | Some("https") => "https",
            other => return Err(format!("bad URL {}: scheme {other:?}", config.url)),
        };
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let path = uri.path();
        let prefix = &path[..path.rfind('/').unwrap_or(0)];
        let base = format!("{scheme}://{authority}{prefix}");
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let tls = match scheme {
            "https" => Some(tls_config(&config.tls_roots)?),
            _ => None,
        };
        let uri = format!("{}://{authority}/", if tls.is_some() { "wss" } else { "ws" })
            .parse()
            .map_err(|e| format!("bad URL {}: {e}", config.url))?;
        Ok(Target { uri, base, query, tls, local: config.local_address })
    }

    /// A new HTTP/1.1 connection to the server, its driver spawned.
    async fn connect(&self) -> Result<(Sender, tokio::task::JoinHandle<()>), WsError> {
        let tcp = connect_tcp(self.local, &self.uri).await.map_err(WsError::Io)?;
        let io = match &self.tls {
            None => MaybeTlsStream::Plain(tcp),
            Some(config) => {
                let host = self.uri.host().unwrap_or_default();
                let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
                let name = rustls_pki_types::ServerName::try_from(host).map_err(failure_of)?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                MaybeTlsStream::Rustls(connector.connect(name, tcp).await.map_err(WsError::Io)?)
            }
        };
        let (sender, conn) = http1::handshake(TokioIo::new(io)).await.map_err(failure_of)?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP-streaming connection ended");
            }
        });
        Ok((sender, driver))
    }

    fn request(&self, path: &str, body: String) -> HttpRequest<Full<Bytes>> {
        let host = self.uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
        HttpRequest::builder()
            .method(Method::POST)
            .uri(format!("{}{path}", self.base))
            .header("host", host)
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", "no-cache")
            .body(Full::new(Bytes::from(body)))
            .expect("a valid request")
    }
}

fn failure_of(e: impl std::fmt::Display) -> WsError {
    failure(e.to_string())
}

impl HttpStream {
    /// Open a session: `POST /stream`, then its first line, which names it.
    pub(super) async fn open(config: &ClientConfig) -> Result<HttpStream, SessionEnd> {
        let target = Target::new(config).map_err(SessionEnd::fatal)?;
        let attempt = async {
            let (mut sender, stream_conn) =
                target.connect().await.map_err(|e| SessionEnd::network(describe(&e)))?;
            let req = target.request(&format!("/stream{}", target.query), String::new());
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| SessionEnd::network(format!("HTTP stream failed: {e}")))?;
            let status = resp.status();
            if status != StatusCode::OK {
                let headers = resp.headers().clone();
                let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                let body = body.map(|b| String::from_utf8_lossy(&b).into_owned());
                let reason =
                    format!("HTTP stream refused: HTTP {status} {}", body.unwrap_or_default());
                return Err(refused(status, &headers, reason));
            }
            let (commands, batches) = mpsc::channel(COMMANDS_WAITING);
            let (report, failed) = mpsc::channel(1);
            let mut stream = HttpStream {
                body: resp.into_body(),
                partial: Vec::new(),
                ready: VecDeque::new(),
                session: String::new(),
                max_message: config.max_message_size,
                stream_conn,
                outbox: Vec::new(),
                commands,
                failed,
                sending: tokio::spawn(async {}),
                next_own: OWN_IDS,
                ping: None,
                advice: None,
                ended: false,
                orphaned: None,
                close_timeout: config.close_timeout,
            };
            let first = match stream.next().await {
                Some(Ok(Message::Text(line))) => line,
                Some(Err(e)) => return Err(SessionEnd::network(describe(&e))),
                _ => return Err(SessionEnd::network("the HTTP stream ended before its session")),
            };
            match codec::decode_server_message(first.as_str()) {
                Ok(ServerMessage::Session { session, max_batch_bytes, .. }) => {
                    let sending = Commands {
                        target,
                        path: format!("/stream/send?session={session}"),
                        sender: None,
                        timeout: config.connect_timeout,
                        max_batch: max_batch_bytes as usize,
                    };
                    stream.sending = tokio::spawn(sending.run(batches, report));
                    stream.session = session;
                }
                _ => {
                    return Err(SessionEnd::fatal(format!(
                        "not a Tether HTTP stream: its first line is {first}"
                    )))
                }
            }
            Ok(stream)
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(outcome) => outcome,
            Err(_) => Err(SessionEnd::network(format!(
                "HTTP stream: no session within {:?}",
                config.connect_timeout
            ))),
        }
    }

    /// Queue a message for the next [`HttpStream::flush`].
    pub(super) fn feed(&mut self, msg: Message) -> Result<(), WsError> {
        match msg {
            Message::Text(text) => self.outbox.push(text.as_str().to_owned()),
            Message::Ping(_) => {
                let id = self.own_id();
                self.ping = Some(id);
                self.outbox.push(codec::encode_command(&ClientCommand::Ping { id }));
            }
            Message::Binary(_) | Message::Frame(_) => {
                return Err(failure("binary messages need a WebSocket (HTTP-streaming is JSON)"))
            }
            Message::Pong(_) | Message::Close(_) => {}
        }
        Ok(())
    }

    fn own_id(&mut self) -> u64 {
        self.next_own -= 1;
        self.next_own
    }

    /// Hand what was queued to the sending task (one `POST /stream/send` per batch, in order).
    pub(super) async fn flush(&mut self) -> Result<(), WsError> {
        if self.outbox.is_empty() || self.orphaned.is_some() {
            self.outbox.clear();
            return Ok(());
        }
        let batch = std::mem::take(&mut self.outbox).join("\n");
        // Full only when the server has stopped taking commands: the heartbeat then ends the
        // session (this send waits at most as long as a WebSocket write may).
        self.commands.send(batch).await.map_err(|_| failure("the command sender stopped"))
    }

    /// The next message from the server, as a WebSocket would give it.
    pub(super) async fn next(&mut self) -> Option<Result<Message, WsError>> {
        loop {
            if let Some(msg) = self.ready.pop_front() {
                return Some(Ok(msg));
            }
            if self.ended {
                return None;
            }
            let frame = match self.orphaned {
                None => tokio::select! {
                    frame = self.body.frame() => frame,
                    failed = self.failed.recv() => {
                        match failed {
                            Some(SendFailed::Unknown) => {
                                // The session ended (its node may be shutting down): its stream
                                // says why, a 1012 with a hint rather than a bare loss. Wait for
                                // that, bounded.
                                self.orphaned = Some(Instant::now() + self.close_timeout);
                            }
                            Some(SendFailed::Failed(why)) => {
                                self.ended = true;
                                return Some(Err(failure(why)));
                            }
                            None => {
                                self.ended = true;
                                return Some(Err(failure("the command sender stopped")));
                            }
                        }
                        continue;
                    }
                },
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, self.body.frame()).await {
                        Ok(frame) => frame,
                        Err(_) => {
                            self.ended = true;
                            return Some(Err(failure(
                            "the server no longer knows this session (its node restarted, or it ended)",
                        )));
                        }
                    }
                }
            };
            match frame {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else { continue };
                    if let Err(e) = self.take(&data) {
                        self.ended = true;
                        return Some(Err(e));
                    }
                }
                Some(Err(e)) if self.advice.is_none() => {
                    self.ended = true;
                    return Some(Err(failure(format!("the HTTP stream broke: {e}"))));
                }
                _ => {
                    self.ended = true;
                    if self.advice.is_none() && self.orphaned.is_some() {
                        let why = "the server no longer knows this session (its node restarted, or it ended)";
                        return Some(Err(failure(why)));
                    }
                    // The server said why before it ended the stream: a close with its code.
                    if let Some((code, reason)) = self.advice.take() {
                        let frame =
                            CloseFrame { code: WireCode::from(code.0), reason: reason.into() };
                        self.ready.push_back(Message::Close(Some(frame)));
                    }
                }
            }
        }
    }

    /// Split what arrived into lines.
    fn take(&mut self, data: &[u8]) -> Result<(), WsError> {
        let mut rest = data;
        while let Some(cut) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..cut]);
            rest = &rest[cut + 1..];
            let line = std::mem::take(&mut self.partial);
            let line = String::from_utf8(line).map_err(|_| failure("a line that is not UTF-8"))?;
            if !line.is_empty() {
                self.line(line);
            }
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > self.max_message {
            return Err(WsError::Capacity(
                tokio_tungstenite::tungstenite::error::CapacityError::MessageTooLong {
                    size: self.partial.len(),
                    max_size: self.max_message,
                },
            ));
        }
        Ok(())
    }

    fn line(&mut self, line: String) {
        if line.starts_with(r#"{"type":"ping""#) {
            // The server's heartbeat: any command answers it (sent when the loop flushes).
            let id = self.own_id();
            self.outbox.push(codec::encode_command(&ClientCommand::Ping { id }));
            self.ready.push_back(Message::Ping(Bytes::new()));
            return;
        }
        if line.starts_with(r#"{"type":"reply""#) || line.starts_with(r#"{"type":"disconnect""#) {
            match codec::decode_server_message(&line) {
                Ok(ServerMessage::Reply { id, .. }) if id >= self.next_own && id < OWN_IDS => {
                    if self.ping == Some(id) {
                        self.ping = None;
                        self.ready.push_back(Message::Pong(Bytes::new()));
                    }
                    return;
                }
                Ok(ServerMessage::Disconnect(d)) => self.advice = Some((d.code, d.reason)),
                _ => {}
            }
        }
        self.ready.push_back(Message::Text(line.into()));
    }
}

/// The sending side of a session: one `POST /stream/send` at a time, on a connection of its
/// own (kept alive, opened again when lost), every batch waiting gathered into the next.
struct Commands {
    target: Target,
    path: String,
    sender: Option<(Sender, tokio::task::JoinHandle<()>)>,
    timeout: Duration,
    /// The server's limit on one request's body (`max_batch_bytes`).
    max_batch: usize,
}

impl Drop for Commands {
    fn drop(&mut self) {
        if let Some((_, conn)) = &self.sender {
            conn.abort();
        }
    }
}

impl Commands {
    async fn run(mut self, mut batches: mpsc::Receiver<String>, report: mpsc::Sender<SendFailed>) {
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(batch) => batch,
                None => match batches.recv().await {
                    Some(batch) => batch,
                    None => return,
                },
            };
            // Gather what waits, within the server's limit (a batch over it alone is sent
            // alone, and refused as a WebSocket message over it would be).
            let mut body = first;
            while let Ok(more) = batches.try_recv() {
                if body.len() + 1 + more.len() > self.max_batch {
                    next = Some(more);
                    break;
                }
                body.push('\n');
                body.push_str(&more);
            }
            if let Err(failed) = self.send(body).await {
                let _ = report.send(failed).await;
                return;
            }
        }
    }

    async fn send(&mut self, body: String) -> Result<(), SendFailed> {
        let mut tries = 0;
        loop {
            tries += 1;
            let outcome = tokio::time::timeout(self.timeout, self.post(body.clone()))
                .await
                .unwrap_or_else(|_| Err(failure("a command batch got no answer in time")));
            match outcome {
                Ok((StatusCode::ACCEPTED, _)) => return Ok(()),
                Ok((StatusCode::NOT_FOUND, _)) => return Err(SendFailed::Unknown),
                Ok((status, _)) if tries < SEND_TRIES && matches!(status.as_u16(), 429 | 503) => {}
                Ok((status, text)) => {
                    return Err(SendFailed::Failed(format!(
                        "commands refused: HTTP {status} {text}"
                    )))
                }
                Err(e) if tries < SEND_TRIES => {
                    tracing::debug!(error = %e, "a command batch failed; trying again");
                    self.sender = None;
                }
                Err(e) => {
                    return Err(SendFailed::Failed(format!(
                        "commands could not be sent: {}",
                        describe(&e)
                    )))
                }
            }
            tokio::time::sleep(Duration::from_millis(50 << tries)).await;
        }
    }

    async fn post(&mut self, body: String) -> Result<(StatusCode, String), WsError> {
        if self.sender.as_ref().is_none_or(|(s, _)| s.is_closed()) {
            self.sender = Some(self.target.connect().await?);
        }
        let (sender, _) = self.sender.as_mut().expect("connected above");
        sender.ready().await.map_err(failure_of)?;
        let resp =
            sender.send_request(self.target.request(&self.path, body)).await.map_err(failure_of)?;
        let status = resp.status();
        let text = resp.into_body().collect().await.map_err(failure_of)?.to_bytes();
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }
}
