//! Client configuration. Defaults come from `tether_core::defaults`.

use std::time::Duration;
use tether_core::defaults as d;
use tether_core::reconnect::ReconnectPolicy;

/// Which protocol the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `tether.v1.json`: commands, replies, publications with offsets, disconnect advice.
    Json,
    /// Plain WebSocket, no subprotocol: text and binary messages in and out as they are
    /// (works with any server).
    Raw,
}

/// How the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    /// A session over plain HTTP (JSON mode): `POST /stream` streams the server's messages,
    /// one per line; commands go as `POST /stream/send`. For networks that let no WebSocket
    /// through.
    HttpStream,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebSocket => "websocket",
            Transport::HttpStream => "http_stream",
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `ws://` URL of the endpoint.
    pub url: String,
    pub mode: Mode,
    /// The client sends a protocol Ping every interval...
    pub ping_interval: Duration,
    /// ...and declares the server dead after `ping_interval + pong_timeout` without any frame.
    pub pong_timeout: Duration,
    pub reconnect: ReconnectPolicy,
    /// Sends buffered while disconnected; one more is [`crate::ClientError::QueueFull`].
    pub offline_queue: usize,
    /// Events buffered for the application before the client stops reading the socket.
    pub event_buffer: usize,
    /// Limit for TCP connect plus WebSocket handshake.
    pub connect_timeout: Duration,
    /// How long our closing handshake may take.
    pub close_timeout: Duration,
    /// Largest inbound message accepted.
    pub max_message_size: usize,
    /// Certificate authorities trusted for `wss://` besides the public ones (webpki roots):
    /// a private CA, or a self-signed test setup. See [`ClientConfig::with_ca_file`].
    pub tls_roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// Offer permessage-deflate (on by default): the server may then send compressed messages,
    /// which the client inflates. What the client sends stays plain unless `compress_sends`.
    pub compression: bool,
    /// Once the server agreed to permessage-deflate, compress each message the client sends of
    /// at least this many bytes, on its own (no context kept between messages, as the offer
    /// promises). `None` (the default): send everything plain, which RFC 7692 allows message by
    /// message. Costs client CPU, saves upstream bytes on large text messages.
    pub compress_sends: Option<usize>,
    /// Local address to connect from (a multi-homed host, or load tests spreading connections
    /// over 127.0.0.x to get past one address's ephemeral ports). `None`: the system picks.
    pub local_address: Option<std::net::IpAddr>,
    /// JWT sent with the `connect` command at the start of every connection (JSON mode).
    pub token: Option<String>,
    /// Fetches a fresh token when the server closes with 4002 (token expired); the client then
    /// reconnects with it. Without one, 4002 stops the client.
    pub token_refresh: Option<TokenRefresh>,
    /// Call `token_refresh` before every reconnect, not only after a 4002: for short-lived
    /// tokens from an identity provider or a command (`tether connect --token-command`), so that
    /// each new connection starts with a fresh one. A refresh that fails stops the client with
    /// its reason. Off by default.
    pub token_refresh_on_reconnect: bool,
    /// The transports to try, in order (JSON mode; raw mode is WebSocket only). Default:
    /// WebSocket alone; [`ClientConfig::with_fallback`] adds HTTP-streaming.
    pub transports: Vec<Transport>,
    /// Attempts of a transport that fail before opening, after which the next is tried (after
    /// the last, the first again). A handshake the way refuses (an HTTP error to the upgrade,
    /// as from a proxy that strips or forbids it) moves on at once.
    pub fallback_after: u32,
}

/// A token being fetched: a fresh token, or why there is none.
pub type TokenFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send>>;

/// An async function returning a fresh token (see [`ClientConfig::token_refresh`]).
#[derive(Clone)]
pub struct TokenRefresh(pub std::sync::Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl std::fmt::Debug for TokenRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenRefresh(..)")
    }
}

impl ClientConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            mode: Mode::Json,
            ping_interval: d::CLIENT_PING_INTERVAL,
            pong_timeout: d::CLIENT_PONG_TIMEOUT,
            reconnect: ReconnectPolicy::default(),
            offline_queue: d::CLIENT_OFFLINE_QUEUE,
            event_buffer: 1024,
            connect_timeout: Duration::from_secs(10),
            close_timeout: d::CLOSE_TIMEOUT,
            max_message_size: 16 << 20,
            tls_roots: Vec::new(),
            local_address: None,
            compression: true,
            compress_sends: None,
            token: None,
            token_refresh: None,
            token_refresh_on_reconnect: false,
            transports: vec![Transport::WebSocket],
            fallback_after: 2,
        }
    }

    /// Fall back to HTTP-streaming when WebSocket cannot get through (see
    /// [`ClientConfig::transports`]).
    pub fn with_fallback(mut self) -> Self {
        self.transports = vec![Transport::WebSocket, Transport::HttpStream];
        self
    }

    /// Use these transports, in this order.
    pub fn transports(mut self, transports: Vec<Transport>) -> Self {
        self.transports = transports;
        self
    }

    /// Authenticate every connection with this JWT (JSON mode).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Call `refresh` for a fresh token when the server says the token expired (4002).
    pub fn token_refresh<F, Fut>(mut self, refresh: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token_refresh = Some(TokenRefresh(std::sync::Arc::new(move || Box::pin(refresh()))));
        self
    }

    /// Fetch a fresh token with `token_refresh` before every reconnect too (see
    /// [`ClientConfig::token_refresh_on_reconnect`]).
    pub fn token_refresh_on_reconnect(mut self, on: bool) -> Self {
        self.token_refresh_on_reconnect = on;
        self
    }

    /// Also trust the CA certificates in this PEM file for `wss://`.
    pub fn with_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        let path = path.as_ref();
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|c| c.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read CA certificates from {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        self.tls_roots.extend(certs);
        Ok(self)
    }

    /// Offer permessage-deflate or not (see [`ClientConfig::compression`]).
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Compress the messages the client sends, from `min_size` bytes on, whenever the server
    /// agreed to permessage-deflate (see [`ClientConfig::compress_sends`]).
    pub fn compress_sends(mut self, min_size: usize) -> Self {
        self.compress_sends = Some(min_size);
        self
    }

    /// Connect from this local address (see [`ClientConfig::local_address`]).
    pub fn local_address(mut self, ip: std::net::IpAddr) -> Self {
        self.local_address = Some(ip);
        self
    }

    pub fn raw(mut self) -> Self {
        self.mode = Mode::Raw;
        self
    }

    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.ping_interval = interval;
        self.pong_timeout = timeout;
        self
    }

    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Connect once and never reconnect (`max_attempts` 0): the first close, or a failed
    /// connect, ends with [`crate::Event::Stopped`] (`StopReason::MaxAttempts(0)`). For one-shot
    /// tools and test drivers, where each connection means something of its own.
    pub fn no_reconnect(mut self) -> Self {
        self.reconnect.max_attempts = Some(0);
        self
    }
}
