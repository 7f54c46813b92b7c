//! Gateway configuration: one struct, every field with its default (from `tether_core::defaults`)
//! and its meaning. Serialized as TOML by `tether serve --print-config`.

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;
use tether_core::channel::ChannelPattern;
use tether_core::defaults as d;

mod channels;
pub use channels::{
    channel_option, history_policy, join_leave_on, presence_on, ChannelRule, HistorySetting,
};

/// History kept for channels matching `pattern` (the first matching rule wins). The flat form
/// of a `[[channel]]` block's `history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub pattern: ChannelPattern,
    /// Publications kept at most per channel.
    pub size: usize,
    /// Publications older than this are dropped.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl std::str::FromStr for HistoryRule {
    type Err = String;

    /// `PATTERN=SIZE/TTL`, e.g. `chat:*=1000/10m`.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("`{s}`: expected PATTERN=SIZE/TTL, e.g. chat:*=1000/10m");
        let (pattern, rest) = s.rsplit_once('=').ok_or_else(usage)?;
        let (size, ttl) = rest.split_once('/').ok_or_else(usage)?;
        Ok(HistoryRule {
            pattern: ChannelPattern::new(pattern),
            size: size.trim().parse().map_err(|_| usage())?,
            ttl: humantime::parse_duration(ttl.trim()).map_err(|_| usage())?,
        })
    }
}

/// Which close the server sends every client on graceful shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownClose {
    /// 1012 "service restart" with a `retry_after_ms` hint: clients come back, spread by jitter.
    Restart,
    /// 1001 "going away": clients reconnect with their usual backoff.
    GoingAway,
}

/// When a channel's publications go out by sweep (see `hub::Sweep`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FanoutSweep {
    /// When publications come faster than one direct fan-out each can take, or when a direct
    /// fan-out would keep its publisher more than about 1 ms (more than ~200 subscribers):
    /// publishing then answers without waiting for the fan-out.
    Auto,
    /// Every publication (each still reaches everyone within about one round).
    Always,
    /// Never: dense channels go through the connections' tasks instead, and a publisher
    /// writes to every subscriber itself before it is answered.
    Never,
}

impl std::str::FromStr for FanoutSweep {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FanoutSweep::Auto),
            "always" => Ok(FanoutSweep::Always),
            "never" => Ok(FanoutSweep::Never),
            _ => Err(format!("`{s}`: expected `auto`, `always` or `never`")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Address `tether serve` binds (ignored when the gateway is mounted into another app).
    pub listen: SocketAddr,
    /// Pending connections the kernel queues for accept (capped by net.core.somaxconn). A
    /// reconnect storm arrives faster than any accept loop; when the queue overflows the kernel
    /// drops handshakes, and clients (and health checks) wait for a SYN retransmit (1 s, then
    /// 3 s).
    pub listen_backlog: u32,
    /// A second address serving only `/healthz`, `/readyz` and `/metrics`, from a thread of its
    /// own, so that health checks do not queue behind a reconnect storm (`tether serve` only).
    pub health_listen: Option<SocketAddr>,
    /// `memory` (one node), or a Redis URL (`redis://127.0.0.1:6379`) shared by several nodes,
    /// or Sentinels and the master they watch (`redis-sentinel://HOST:PORT,HOST:PORT/MASTER`),
    /// or a Redis Cluster's seed nodes (`redis-cluster://HOST:PORT,HOST:PORT`).
    pub broker: String,
    /// Protocol Ping cadence. Keep it under the smallest idle timeout on the path (nginx 60 s).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Silence tolerated beyond `ping_interval` before a peer is dropped as dead.
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Largest inbound message (and frame); larger closes with 1009.
    pub max_message_size: ByteSize,
    /// Initial read buffer per connection; it grows for large messages and is small when idle.
    pub read_buffer_size: ByteSize,
    /// Messages queued for one connection before it is closed as a slow consumer (1013).
    pub outbound_queue: usize,
    /// Bytes queued for one connection (counted per message in KiB, rounded up) before it is
    /// closed as a slow consumer (1013).
    pub outbound_queue_bytes: ByteSize,
    /// How long one write may block before the peer is a slow consumer (1013).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Whether publishers write publications straight to subscribers' sockets when those are
    /// ready (cheapest per delivery; decision 0008). Off: every delivery goes through the
    /// connection's task.
    pub direct_delivery: bool,
    /// When a channel's publications go out by sweep: one task goes round the subscribers and
    /// hands each everything new in one write (needs `direct_delivery`).
    pub fanout_sweep: FanoutSweep,
    /// Open WebSocket connections at most; more handshakes get HTTP 503.
    pub max_connections: usize,
    /// Open WebSocket connections per client address; more get HTTP 429. 0: no limit.
    pub max_connections_per_ip: usize,
    /// WebSocket handshakes per second per client address (bursts of twice that); more get
    /// HTTP 429. 0: no limit.
    pub handshake_rate_per_ip: u32,
    /// WebSocket handshakes per second the whole server accepts (bursts of one second's worth),
    /// so that a reconnect storm cannot starve the connections already open, heartbeats and
    /// health checks. A handshake over the budget is upgraded and closed at once with 1013 and a
    /// `retry_after_ms` hint (`storm_retry_hint`), which clients spread by jitter. 0: no limit.
    pub max_handshake_rate: u32,
    /// Negotiate permessage-deflate (RFC 7692) with clients that offer it: publications are
    /// compressed once for all of them, and their compressed messages inflated.
    pub compression: bool,
    /// Publications shorter than this go out uncompressed (not worth it).
    pub compression_min_size: ByteSize,
    /// Channels whose publications are compressed (`*` patterns). Empty: every channel. The
    /// flat form of a `[[channel]]` block's `compression`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compression_channels: Vec<ChannelPattern>,
    /// How long a publication's idempotency key is remembered: a retry with the same key within
    /// this window is answered with the first publication's receipt and not published again.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// The hint sent with a 1013 for `max_handshake_rate`: clients wait between 1× and 2× this.
    #[serde(with = "humantime_serde")]
    pub storm_retry_hint: Duration,
    /// Apply the per-address limits to loopback addresses too. Off by default: behind a proxy
    /// on the same host every client comes from 127.0.0.1.
    pub limit_loopback: bool,
    /// IPv6 clients are limited per network of this prefix length, not per address: one host
    /// commonly holds a whole /64 and can pick a new address for every connection.
    pub ipv6_prefix: u8,
    /// Reverse proxies and load balancers (CIDRs, e.g. `10.0.0.0/8`) whose `Forwarded` /
    /// `X-Forwarded-For` header names the client: the per-address limits and the logs use
    /// that address. Headers from any other peer are ignored. Empty: none trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TCP connections that have not finished their HTTP request (or TLS handshake) at once.
    /// At the limit the oldest unfinished one is closed, so that a client that sends its
    /// request promptly always gets in, however many half-sent ones an attacker holds open
    /// (`tether serve` only: a host application runs its own HTTP server).
    pub max_pending_handshakes: usize,
    /// How long a client may take over its TLS handshake and its HTTP request head (also how
    /// long an idle keep-alive HTTP connection stays open) (`tether serve` only).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Largest HTTP request head (request line and headers); larger gets HTTP 431
    /// (`tether serve` only).
    pub max_header_size: ByteSize,
    /// Host names accepted in the `Host` header besides the loopback ones, when the server
    /// listens on a loopback address. Without this check a web page on a DNS-rebinding domain
    /// could reach a local server as if it were its own site. `*`: any host.
    pub allowed_hosts: Vec<String>,
    /// A testing aid, off by default: a WebSocket endpoint at `/echo` that sends every message
    /// back, through the same frame writers as publications (conformance suites drive it;
    /// docs/interop.md).
    pub conformance_echo: bool,
    /// Messages per second one connection may send (bursts of one second's worth); more close
    /// it with 1008. 0: no limit.
    pub max_inbound_rate: u32,
    /// Channels one connection may subscribe to.
    pub max_subscriptions: usize,
    /// Longest channel name, in bytes.
    pub max_channel_name_len: usize,
    /// Deepest nesting of arrays and objects in a command or a publish body (the envelope
    /// object counts as 1); deeper → an error reply or HTTP 400.
    pub max_json_depth: usize,
    /// Quiet spells (`idle_probe`, for `tether doctor --idle-probe`) running at once; 0: none.
    pub idle_probes: u32,
    /// The longest quiet spell granted.
    #[serde(with = "humantime_serde")]
    pub idle_probe_max: Duration,
    /// Channels that clients may publish to over the WebSocket (`*` patterns). Empty: none.
    /// The flat form of a `[[channel]]` block's `client_publish`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub client_publish: Vec<ChannelPattern>,
    /// History per channel pattern, for recovery after reconnects. Empty: no history. The flat
    /// form of a `[[channel]]` block's `history`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryRule>,
    /// Channel streams the memory broker holds at most (a stream lives while it has history or
    /// subscribers); publishing to a new channel beyond it gets 503.
    pub max_channels: usize,
    /// Keys accepted by the HTTP API (`Authorization: Bearer KEY` or `X-API-Key: KEY`). Empty:
    /// the API is open, which `tether serve` allows only on a loopback address (or `insecure`).
    /// Never printed by `--print-config`.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    /// JWT (HS256) secret: connections authenticate with a token (the `connect` command, or
    /// `?token=`). Never printed by `--print-config`.
    #[serde(skip_serializing)]
    pub jwt_secret: Option<String>,
    /// JWT public key (PEM, RSA for RS256 or EC P-256 for ES256), instead of `jwt_secret`.
    pub jwt_public_key: Option<std::path::PathBuf>,
    /// JWT audiences accepted: with any set, a token's `aud` must name one of them. Empty: a
    /// token that names an audience is refused (set this to accept an identity provider's).
    pub jwt_audience: Vec<String>,
    /// With JWT on: the personal channel the server subscribes each connection whose token
    /// has a `sub` to, `{sub}` standing for it (e.g. `user:{sub}`). Off when unset.
    pub user_channel: Option<String>,
    /// JWT issuers accepted: with any set, a token's `iss` must be one of them. Empty: not checked.
    pub jwt_issuer: Vec<String>,
    /// Clock skew tolerated for a token's `exp` and `nbf` (whole seconds): on connect, and for the
    /// expiry during the connection, which closes it (4002) at `exp` plus this.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// With JWT on: channels anyone may subscribe to without a token (`*` patterns). The flat
    /// form of a `[[channel]]` block's `anonymous`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anonymous_channels: Vec<ChannelPattern>,
    /// Serve a non-loopback address without API keys (anyone who reaches it may publish).
    pub insecure: bool,
    /// TLS certificate chain (PEM) and private key (PEM): with both, `tether serve` speaks
    /// `https://` and `wss://` only.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
    /// Origins allowed to open WebSockets from a browser: exact (`https://app.example.com`),
    /// a wildcard subdomain (`https://*.example.com`), or `*` for any. Always allowed: the
    /// server's own host (the `Host` header) and localhost. Handshakes without an `Origin`
    /// header (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// Raw mode: the text answered with `raw_pong`.
    pub raw_ping: String,
    pub raw_pong: String,
    /// Close sent to every client on graceful shutdown.
    pub shutdown_close: ShutdownClose,
    /// With `restart`: clients wait between 1× and 2× this before reconnecting.
    #[serde(with = "humantime_serde")]
    pub restart_retry_hint: Duration,
    /// How long graceful shutdown waits for clients to finish closing.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How long a closing handshake may take before the socket is dropped.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// With the Redis broker: how long a node's presence entries outlive it when it dies
    /// without a clean shutdown (its liveness key is set again every third of this).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// With the Redis broker: how long a channel's stream state (epoch and offset) outlives its
    /// last publication (or its history, if that lasts longer). A channel quiet for longer
    /// starts a new epoch at its next publication, and its subscribers are told (1012, then
    /// `recovered: false`).
    #[serde(with = "humantime_serde")]
    pub stream_state_ttl: Duration,
    /// Channels with more local subscribers than this get join/leave changes in batches, one
    /// per `join_leave_interval`, rather than a message per change.
    pub join_leave_batch_above: usize,
    /// How often a busy channel's batch of join/leave changes goes out.
    #[serde(with = "humantime_serde")]
    pub join_leave_interval: Duration,
    /// Options per channel name pattern (`[[channel]]` blocks): history, presence, join/leave,
    /// client publishing, anonymous access, compression. For each option the first matching
    /// block that sets it decides (`config/channels.rs`). Last, so that TOML prints it last.
    pub channel: Vec<ChannelRule>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: d::LISTEN.parse().expect("default listen address parses"),
            listen_backlog: 4096,
            health_listen: None,
            broker: "memory".into(),
            ping_interval: d::PING_INTERVAL,
            pong_timeout: d::PONG_TIMEOUT,
            max_message_size: ByteSize::b(d::MAX_MESSAGE_SIZE as u64),
            read_buffer_size: ByteSize::b(d::READ_BUFFER_SIZE as u64),
            outbound_queue: d::OUTBOUND_QUEUE_MESSAGES,
            outbound_queue_bytes: ByteSize::mib(16),
            write_timeout: d::WRITE_TIMEOUT,
            direct_delivery: true,
            fanout_sweep: FanoutSweep::Auto,
            max_connections: 10_000,
            max_connections_per_ip: 1000,
            handshake_rate_per_ip: 50,
            max_handshake_rate: 20_000,
            storm_retry_hint: Duration::from_secs(1),
            idempotency_window: Duration::from_secs(300),
            compression: true,
            compression_min_size: ByteSize::b(64),
            compression_channels: Vec::new(),
            limit_loopback: false,
            ipv6_prefix: 64,
            trusted_proxies: Vec::new(),
            max_pending_handshakes: 10_000,
            handshake_timeout: Duration::from_secs(5),
            max_header_size: ByteSize::kib(16),
            allowed_hosts: Vec::new(),
            conformance_echo: false,
            max_inbound_rate: 1000,
            max_subscriptions: d::MAX_SUBSCRIPTIONS_PER_CONNECTION,
            max_channel_name_len: d::MAX_CHANNEL_NAME_LEN,
            max_json_depth: d::MAX_JSON_DEPTH,
            idle_probes: 2,
            idle_probe_max: Duration::from_secs(600),
            client_publish: Vec::new(),
            history: Vec::new(),
            max_channels: 100_000,
            api_keys: Vec::new(),
            insecure: false,
            jwt_secret: None,
            jwt_public_key: None,
            user_channel: None,
            jwt_audience: Vec::new(),
            jwt_issuer: Vec::new(),
            jwt_leeway: Duration::from_secs(5),
            anonymous_channels: Vec::new(),
            tls_cert: None,
            tls_key: None,
            allowed_origins: Vec::new(),
            raw_ping: d::RAW_PING.into(),
            raw_pong: d::RAW_PONG.into(),
            shutdown_close: ShutdownClose::Restart,
            restart_retry_hint: d::RESTART_RETRY_HINT,
            drain_timeout: d::DRAIN_TIMEOUT,
            close_timeout: d::CLOSE_TIMEOUT,
            presence_ttl: Duration::from_secs(15),
            stream_state_ttl: Duration::from_secs(7 * 24 * 3600),
            join_leave_batch_above: 100,
            join_leave_interval: Duration::from_secs(1),
            channel: Vec::new(),
        }
    }
}

/// A configuration value outside what the gateway can work with.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: `{field}` {problem}")]
pub struct ConfigError {
    pub field: &'static str,
    pub problem: String,
}

impl GatewayConfig {
    /// Every channel block in force: the written `[[channel]]` blocks, then the flat settings
    /// (`history`, `client_publish`, `anonymous_channels`, `compression_channels`) as blocks.
    pub fn channel_rules(&self) -> Vec<ChannelRule> {
        let mut rules = self.channel.clone();
        rules.extend(channels::fold(
            self.history.clone(),
            self.client_publish.clone(),
            self.anonymous_channels.clone(),
            self.compression_channels.clone(),
        ));
        rules
    }

    /// Move the flat settings into `channel`, where they decide after the written blocks (what
    /// `--print-config` shows). The gateway does this to the configuration it is given, and
    /// from then on reads channel options from `channel` alone.
    pub fn fold_channel_settings(&mut self) {
        self.channel = self.channel_rules();
        self.history.clear();
        self.client_publish.clear();
        self.anonymous_channels.clear();
        self.compression_channels.clear();
    }

    /// Check ranges; every error names the field and the accepted range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field, problem: &str| Err(ConfigError { field, problem: problem.to_owned() });
        let ms = Duration::from_millis;
        if self.ping_interval < ms(10) {
            return err("ping_interval", "must be at least 10ms (100ms is a good test value)");
        }
        if self.pong_timeout < ms(10) {
            return err("pong_timeout", "must be at least 10ms");
        }
        if self.max_message_size.as_u64() < 128 || self.max_message_size.as_u64() > 1 << 30 {
            return err("max_message_size", "must be between 128B and 1GiB");
        }
        if self.read_buffer_size.as_u64() < 256 || self.read_buffer_size.as_u64() > 16 << 20 {
            return err("read_buffer_size", "must be between 256B and 16MiB");
        }
        if self.outbound_queue == 0 || self.outbound_queue > 65_535 {
            return err("outbound_queue", "must be between 1 and 65535 messages");
        }
        let bytes = self.outbound_queue_bytes.as_u64();
        if !(64 << 10..=64 << 20).contains(&bytes) {
            return err("outbound_queue_bytes", "must be between 64KiB and 64MiB");
        }
        // A publication's data can be as large as max_message_size (plus its envelope, and the
        // queue counts in whole KiB); one that does not fit in a subscriber's queue would close
        // every subscriber as a slow consumer.
        if bytes < self.max_message_size.as_u64() + (4 << 10) {
            return err(
                "outbound_queue_bytes",
                "must be at least max_message_size + 4KiB (room for one publication and its \
                 envelope), or a single large publication would close every subscriber as a \
                 slow consumer",
            );
        }
        if self.max_connections == 0 {
            return err("max_connections", "must be at least 1");
        }
        if self.max_channel_name_len == 0 || self.max_channel_name_len > 1024 {
            return err("max_channel_name_len", "must be between 1 and 1024");
        }
        if self.jwt_secret.is_some() && self.jwt_public_key.is_some() {
            return err("jwt_secret/jwt_public_key", "choose one: a shared secret or a public key");
        }
        if let Some(template) = &self.user_channel {
            let example = template.replace("{sub}", "ada");
            if !template.contains("{sub}") {
                return err("user_channel", "must contain `{sub}`, e.g. \"user:{sub}\"");
            }
            if let Err(e) = tether_core::channel::validate(&example, self.max_channel_name_len) {
                return err("user_channel", &format!("gives no valid channel name: {e}"));
            }
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return err("jwt_secret", "must be at least 16 characters");
        }
        if self.jwt_leeway.subsec_nanos() != 0 || self.jwt_leeway > Duration::from_secs(300) {
            return err("jwt_leeway", "must be whole seconds, at most 5m (0s: no leeway)");
        }
        if self.jwt_audience.iter().chain(&self.jwt_issuer).any(|s| s.is_empty()) {
            return err("jwt_audience/jwt_issuer", "must not contain an empty string");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return err(
                "tls_cert/tls_key",
                "must be given together (a PEM certificate chain and its key)",
            );
        }
        if self.max_json_depth < 2 || self.max_json_depth > 512 {
            return err("max_json_depth", "must be between 2 and 512");
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            return err(
                "api_keys",
                "each key must be at least 16 characters (use a random string)",
            );
        }
        for origin in &self.allowed_origins {
            if crate::origin::OriginPattern::parse(origin).is_none() {
                return err(
                    "allowed_origins",
                    "each entry must be `*` or scheme://host[:port], host possibly `*.domain`",
                );
            }
        }
        if self.raw_ping.is_empty() {
            return err("raw_ping", "must not be empty");
        }
        if self.write_timeout.is_zero()
            || self.drain_timeout.is_zero()
            || self.close_timeout.is_zero()
            || self.storm_retry_hint.is_zero()
        {
            return err(
                "write_timeout/drain_timeout/close_timeout/storm_retry_hint",
                "must be greater than zero",
            );
        }
        if self.broker != "memory"
            && !self.broker.starts_with("redis://")
            && !self.broker.starts_with("rediss://")
            && !self.broker.starts_with("redis-sentinel://")
            && !self.broker.starts_with("redis-cluster://")
        {
            return err(
                "broker",
                "must be `memory`, a redis:// URL, redis-sentinel://HOST:PORT,…/MASTER or redis-cluster://HOST:PORT,…",
            );
        }
        if !(32..=128).contains(&self.ipv6_prefix) {
            return err("ipv6_prefix", "must be between 32 and 128 (64 is one IPv6 subnet)");
        }
        if self.idle_probes > 64 {
            return err("idle_probes", "must be at most 64 (each holds a silent connection)");
        }
        if self.idle_probe_max > Duration::from_secs(3600) {
            return err("idle_probe_max", "must be at most 1h");
        }
        if self.max_pending_handshakes == 0 {
            return err("max_pending_handshakes", "must be at least 1");
        }
        if self.handshake_timeout < ms(100) || self.handshake_timeout > Duration::from_secs(300) {
            return err("handshake_timeout", "must be between 100ms and 5m");
        }
        let head = self.max_header_size.as_u64();
        if !(1 << 10..=1 << 20).contains(&head) {
            return err("max_header_size", "must be between 1KiB and 1MiB");
        }
        if self.allowed_hosts.iter().any(|h| h.trim().is_empty() || h.contains(['/', ' '])) {
            return err(
                "allowed_hosts",
                "each entry must be a host name (no scheme, path or spaces), or `*`",
            );
        }
        if self.max_channels == 0 {
            return err("max_channels", "must be at least 1");
        }
        for rule in &self.history {
            if rule.size == 0 || rule.size > 100_000 || rule.ttl < Duration::from_secs(1) {
                return err(
                    "history",
                    "each rule needs 1 <= size <= 100000 and a ttl of at least 1s",
                );
            }
        }
        if self.presence_ttl < ms(300) || self.presence_ttl > Duration::from_secs(3600) {
            return err("presence_ttl", "must be between 300ms and 1h");
        }
        if self.stream_state_ttl < Duration::from_secs(1)
            || self.stream_state_ttl > Duration::from_secs(365 * 24 * 3600)
        {
            return err("stream_state_ttl", "must be between 1s and 365d");
        }
        if self.join_leave_interval < ms(10) || self.join_leave_interval > Duration::from_secs(60) {
            return err("join_leave_interval", "must be between 10ms and 1m");
        }
        if let Err((field, problem)) = channels::check(&self.channel) {
            return Err(ConfigError { field, problem });
        }
        if self.close_timeout > self.drain_timeout {
            return err(
                "close_timeout",
                "must not exceed drain_timeout, or shutdown would cut closing handshakes",
            );
        }
        Ok(())
    }
}
