//! `tether serve`: layered configuration (defaults < TOML file < `TETHER_*` env < flags) and the
//! standalone gateway with signal-driven graceful shutdown.

use crate::units;
use anyhow::{Context, Result};
use bytesize::ByteSize;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tether_core::channel::ChannelPattern;
use tether_server::{Gateway, GatewayConfig, ShutdownClose};

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// TOML configuration file (keys as printed by --print-config).
    #[arg(long, env = "TETHER_CONFIG")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Check the configuration (file, environment and flags, as `serve` would take them) and exit: 0 and "configuration OK", or the first problem and 1
    #[arg(long)]
    check_config: bool,
    /// Address to listen on (port 0 picks a free port) [default: 127.0.0.1:8080]
    #[arg(long, env = "TETHER_LISTEN", value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Pending connections queued for accept, for reconnect storms (capped by net.core.somaxconn) [default: 4096]
    #[arg(long, env = "TETHER_LISTEN_BACKLOG")]
    listen_backlog: Option<u32>,
    /// Also serve /healthz, /readyz and /metrics on this address, on a thread of their own, so that health checks never queue behind a reconnect storm [default: none]
    #[arg(long, env = "TETHER_HEALTH_LISTEN", value_name = "ADDR:PORT")]
    health_listen: Option<SocketAddr>,
    /// Broker: `memory` (one node) or a Redis URL shared by several nodes, e.g. redis://127.0.0.1:6379 [default: memory]
    #[arg(long, env = "TETHER_BROKER", value_name = "memory|redis://HOST:PORT")]
    broker: Option<String>,
    /// Server ping cadence, e.g. 25s or 100ms [default: 25s]
    #[arg(long, env = "TETHER_PING_INTERVAL", value_parser = units::duration)]
    ping_interval: Option<Duration>,
    /// Silence tolerated after ping_interval before a peer is dropped [default: 10s]
    #[arg(long, env = "TETHER_PONG_TIMEOUT", value_parser = units::duration)]
    pong_timeout: Option<Duration>,
    /// Largest inbound message; larger ones close with 1009 [default: 64KiB]
    #[arg(long, env = "TETHER_MAX_MESSAGE_SIZE", value_parser = units::size)]
    max_message_size: Option<ByteSize>,
    /// Open WebSocket connections at most; more get HTTP 503 [default: 10000]
    #[arg(long, env = "TETHER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Open connections per client address; more get HTTP 429; 0: no limit [default: 1000]
    #[arg(long, env = "TETHER_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Handshakes per second per client address (bursts of twice that); 0: no limit [default: 50]
    #[arg(long, env = "TETHER_HANDSHAKE_RATE_PER_IP")]
    handshake_rate_per_ip: Option<u32>,
    /// Handshakes per second for the whole server (bursts of one second's worth); more are closed at once with 1013 and a retry hint; 0: no limit [default: 20000]
    #[arg(long, env = "TETHER_MAX_HANDSHAKE_RATE")]
    max_handshake_rate: Option<u32>,
    /// Retry hint sent with that 1013: clients wait 1-2x this [default: 1s]
    #[arg(long, env = "TETHER_STORM_RETRY_HINT", value_parser = units::duration)]
    storm_retry_hint: Option<Duration>,
    /// How long a publication's idempotency_key is remembered (retries within it publish once) [default: 5m]
    #[arg(long, env = "TETHER_IDEMPOTENCY_WINDOW", value_parser = units::duration)]
    idempotency_window: Option<Duration>,
    /// With the Redis broker: how long a dead node's presence entries linger before every node stops showing them [default: 15s]
    #[arg(long, env = "TETHER_PRESENCE_TTL", value_parser = units::duration)]
    presence_ttl: Option<Duration>,
    /// With the Redis broker: how long a channel's epoch and offset outlive its last publication; a channel quiet for longer starts a new epoch and its subscribers are told [default: 7d]
    #[arg(long, env = "TETHER_STREAM_STATE_TTL", value_parser = units::duration)]
    stream_state_ttl: Option<Duration>,
    /// Channels with more local subscribers than this get join/leave changes batched, one message per --join-leave-interval [default: 100]
    #[arg(long, env = "TETHER_JOIN_LEAVE_BATCH_ABOVE")]
    join_leave_batch_above: Option<usize>,
    /// How often a busy channel's batch of join/leave changes goes out [default: 1s]
    #[arg(long, env = "TETHER_JOIN_LEAVE_INTERVAL", value_parser = units::duration)]
    join_leave_interval: Option<Duration>,
    /// Apply the per-address limits to loopback clients too (off: a local proxy is one address)
    #[arg(long)]
    limit_loopback: bool,
    /// IPv6 clients are limited per network of this prefix length (one host often holds a /64) [default: 64]
    #[arg(long, env = "TETHER_IPV6_PREFIX", value_name = "BITS")]
    ipv6_prefix: Option<u8>,
    /// Proxy or load balancer (CIDR, e.g. 10.0.0.0/8) whose Forwarded / X-Forwarded-For header names the client, for the per-address limits and logs (repeatable) [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "TETHER_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    trusted_proxies: Option<Vec<ipnet::IpNet>>,
    /// Connections still in their TLS handshake or HTTP request at most; at the limit the oldest is closed [default: 10000]
    #[arg(long, env = "TETHER_MAX_PENDING_HANDSHAKES")]
    max_pending_handshakes: Option<usize>,
    /// Time a client gets for its TLS handshake and HTTP request head (and an idle keep-alive connection) [default: 5s]
    #[arg(long, env = "TETHER_HANDSHAKE_TIMEOUT", value_parser = units::duration)]
    handshake_timeout: Option<Duration>,
    /// Largest HTTP request head (request line and headers); larger gets 431 [default: 16KiB]
    #[arg(long, env = "TETHER_MAX_HEADER_SIZE", value_parser = units::size)]
    max_header_size: Option<ByteSize>,
    /// Host name accepted in the Host header besides loopback names when listening on loopback (a DNS-rebinding guard), or '*' for any (repeatable) [default: none]
    #[arg(long = "allowed-host", env = "TETHER_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Option<Vec<String>>,
    /// Testing aid: a WebSocket endpoint at /echo that sends every message back through the publication write path (for the Autobahn suite) [default: off]
    #[arg(long, env = "TETHER_CONFORMANCE_ECHO")]
    conformance_echo: bool,
    /// Messages per second one connection may send; more close it with 1008; 0: no limit [default: 1000]
    #[arg(long, env = "TETHER_MAX_INBOUND_RATE")]
    max_inbound_rate: Option<u32>,
    /// Messages queued per connection before it is closed as a slow consumer [default: 1024]
    #[arg(long, env = "TETHER_OUTBOUND_QUEUE")]
    outbound_queue: Option<usize>,
    /// Bytes queued per connection before it is closed as a slow consumer [default: 16MiB]
    #[arg(long, env = "TETHER_OUTBOUND_QUEUE_BYTES", value_parser = units::size)]
    outbound_queue_bytes: Option<ByteSize>,
    /// How long one write may block before the peer is a slow consumer [default: 10s]
    #[arg(long, env = "TETHER_WRITE_TIMEOUT", value_parser = units::duration)]
    write_timeout: Option<Duration>,
    /// Publishers write publications straight to ready subscriber sockets [default: true]
    #[arg(long, env = "TETHER_DIRECT_DELIVERY")]
    direct_delivery: Option<bool>,
    /// When a busy channel's publications go out by sweep (one task going round the subscribers, one write each for everything new): auto, always or never [default: auto]
    #[arg(long, env = "TETHER_FANOUT_SWEEP")]
    fanout_sweep: Option<tether_server::FanoutSweep>,
    /// Channels one connection may subscribe to [default: 128]
    #[arg(long, env = "TETHER_MAX_SUBSCRIPTIONS")]
    max_subscriptions: Option<usize>,
    /// Key the HTTP API requires (Authorization: Bearer KEY or X-API-Key: KEY), at least 16 characters (repeatable) [default: none]
    #[arg(
        long = "api-key",
        env = "TETHER_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    api_keys: Option<Vec<String>>,
    /// JWT secret (HS256): clients authenticate with a token; at least 16 characters [default: none]
    #[arg(long, env = "TETHER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// JWT public key (PEM; RSA for RS256, EC P-256 for ES256), instead of --jwt-secret
    #[arg(long, env = "TETHER_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<std::path::PathBuf>,
    /// JWT audience accepted: tokens must name one in `aud`; without any, a token that names an audience is refused (repeatable) [default: none]
    #[arg(long, env = "TETHER_JWT_AUDIENCE", value_delimiter = ',')]
    jwt_audience: Option<Vec<String>>,
    /// JWT issuer accepted: tokens must carry one as `iss` (repeatable) [default: not checked]
    #[arg(long, env = "TETHER_JWT_ISSUER", value_delimiter = ',')]
    jwt_issuer: Option<Vec<String>>,
    /// Clock skew tolerated for a token's exp and nbf, on connect and during the connection (closed with 4002 at exp plus this); whole seconds [default: 5s]
    #[arg(long, env = "TETHER_JWT_LEEWAY", value_parser = units::duration)]
    jwt_leeway: Option<Duration>,
    /// With JWT on: the personal channel every connection whose token has a `sub` is subscribed to by the server, `{sub}` standing for it, e.g. 'user:{sub}' [default: off]
    #[arg(long, env = "TETHER_USER_CHANNEL")]
    user_channel: Option<String>,
    /// With JWT on: channel pattern anyone may subscribe to without a token, e.g. 'public:*' (repeatable)
    #[arg(long = "anonymous-channel", env = "TETHER_ANONYMOUS_CHANNELS", value_delimiter = ',')]
    anonymous_channels: Option<Vec<String>>,
    /// TLS certificate chain (PEM): serve https:// and wss:// (with --tls-key)
    #[arg(long, env = "TETHER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// TLS private key (PEM) for --tls-cert
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Allow listening on a non-loopback address without an API key (anyone may publish)
    #[arg(long)]
    insecure: bool,
    /// Origins allowed to open WebSockets from browsers besides this host and localhost, e.g. 'https://*.example.com' or '*' (repeatable) [default: none]
    #[arg(long = "allowed-origin", env = "TETHER_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// Channel patterns clients may publish to over WebSocket, e.g. 'chat:*' (repeatable) [default: none]
    #[arg(long, env = "TETHER_CLIENT_PUBLISH", value_delimiter = ',')]
    client_publish: Option<Vec<String>>,
    /// Sample allocations from the start, for heap profiles at /debug/pprof/heap (otherwise POST /debug/pprof/heap/activate when needed)
    #[arg(long)]
    heap_profiling: bool,
    /// Do not negotiate permessage-deflate (compression is on by default for clients that offer it)
    #[arg(long)]
    no_compression: bool,
    /// Publications shorter than this go out uncompressed [default: 64B]
    #[arg(long, env = "TETHER_COMPRESSION_MIN_SIZE", value_parser = units::size)]
    compression_min_size: Option<ByteSize>,
    /// Channel patterns whose publications are compressed (repeatable) [default: *]
    #[arg(
        long = "compression-channel",
        env = "TETHER_COMPRESSION_CHANNELS",
        value_delimiter = ','
    )]
    compression_channels: Option<Vec<String>>,
    /// History for recovery, as PATTERN=SIZE/TTL, e.g. 'chat:*=1000/10m' (repeatable) [default: none]
    #[arg(long, env = "TETHER_HISTORY", value_delimiter = ',')]
    history: Option<Vec<tether_server::config::HistoryRule>>,
    /// Channel streams held at most (memory broker) [default: 100000]
    #[arg(long, env = "TETHER_MAX_CHANNELS")]
    max_channels: Option<usize>,
    /// Close sent to clients on shutdown: restart (1012 + reconnect hint) or going-away (1001) [default: restart]
    #[arg(long, env = "TETHER_SHUTDOWN_CLOSE", value_parser = parse_shutdown_close)]
    shutdown_close: Option<ShutdownClose>,
    /// How long shutdown waits for clients to close [default: 10s]
    #[arg(long, env = "TETHER_DRAIN_TIMEOUT", value_parser = units::duration)]
    drain_timeout: Option<Duration>,
}

fn parse_shutdown_close(s: &str) -> Result<ShutdownClose, String> {
    match s {
        "restart" => Ok(ShutdownClose::Restart),
        "going-away" => Ok(ShutdownClose::GoingAway),
        _ => Err(format!("`{s}`: expected `restart` or `going-away`")),
    }
}

/// Defaults, then the file, then environment and flags (clap has already merged those two,
/// flags winning).
pub fn effective_config(args: &ServeArgs) -> Result<GatewayConfig> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "cannot read config file {}; check the path given to --config",
                    path.display()
                )
            })?;
            toml::from_str::<GatewayConfig>(&text).with_context(|| {
                format!(
                    "config file {} is not valid; `tether serve --print-config` shows every key",
                    path.display()
                )
            })?
        }
        None => GatewayConfig::default(),
    };
    macro_rules! overlay {
        ($($field:ident),*) => { $( if let Some(v) = args.$field.clone() { cfg.$field = v; } )* };
    }
    overlay!(
        listen,
        listen_backlog,
        broker,
        ping_interval,
        pong_timeout,
        max_message_size,
        max_connections,
        outbound_queue,
        outbound_queue_bytes,
        write_timeout,
        direct_delivery,
        fanout_sweep,
        max_subscriptions,
        shutdown_close,
        drain_timeout,
        history,
        max_channels,
        api_keys,
        allowed_origins,
        max_connections_per_ip,
        handshake_rate_per_ip,
        max_handshake_rate,
        storm_retry_hint,
        idempotency_window,
        presence_ttl,
        stream_state_ttl,
        join_leave_batch_above,
        join_leave_interval,
        max_inbound_rate,
        ipv6_prefix,
        trusted_proxies,
        max_pending_handshakes,
        handshake_timeout,
        max_header_size,
        allowed_hosts
    );
    if args.jwt_secret.is_some() {
        cfg.jwt_secret = args.jwt_secret.clone();
    }
    if args.jwt_public_key.is_some() {
        cfg.jwt_public_key = args.jwt_public_key.clone();
    }
    if let Some(audience) = &args.jwt_audience {
        cfg.jwt_audience = audience.clone();
    }
    if let Some(issuer) = &args.jwt_issuer {
        cfg.jwt_issuer = issuer.clone();
    }
    if args.user_channel.is_some() {
        cfg.user_channel = args.user_channel.clone();
    }
    if let Some(leeway) = args.jwt_leeway {
        cfg.jwt_leeway = leeway;
    }
    if let Some(patterns) = &args.anonymous_channels {
        cfg.anonymous_channels = patterns.iter().map(ChannelPattern::new).collect();
    }
    if args.tls_cert.is_some() {
        cfg.tls_cert = args.tls_cert.clone();
        cfg.tls_key = args.tls_key.clone();
    }
    if args.health_listen.is_some() {
        cfg.health_listen = args.health_listen;
    }
    cfg.insecure |= args.insecure;
    cfg.limit_loopback |= args.limit_loopback;
    cfg.conformance_echo |= args.conformance_echo;
    cfg.compression &= !args.no_compression;
    if let Some(size) = args.compression_min_size {
        cfg.compression_min_size = size;
    }
    if let Some(patterns) = &args.compression_channels {
        cfg.compression_channels = patterns.iter().map(ChannelPattern::new).collect();
    }
    if let Some(patterns) = &args.client_publish {
        cfg.client_publish = patterns.iter().map(ChannelPattern::new).collect();
    }
    // The flat per-pattern settings and their flags, as `[[channel]]` blocks after the written ones.
    cfg.fold_channel_settings();
    cfg.validate()?;
    Ok(cfg)
}

/// A listening socket with our backlog (tokio's `bind` fixes it at 1024).
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As `TcpListener::bind` does: a restarted server can take its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Install the SIGTERM/SIGINT handlers now (before the address is announced, so that a signal
/// sent right after start-up is never lost to the default action) and return the future that
/// resolves on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

pub async fn run(args: ServeArgs) -> Result<ExitCode> {
    let cfg = effective_config(&args)?;
    if args.print_config {
        print!("{}", toml::to_string_pretty(&cfg).context("cannot render the configuration")?);
        return Ok(ExitCode::SUCCESS);
    }
    if args.check_config {
        if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
            tether_server::tls::acceptor(cert, key).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        match &args.config {
            Some(file) => println!("configuration OK ({})", file.display()),
            None => println!("configuration OK (defaults, environment and flags)"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !cfg.listen.ip().is_loopback() && cfg.api_keys.is_empty() && !cfg.insecure {
        anyhow::bail!(
            "refusing to serve {} without an API key: anyone who can reach it could publish. \
             Set one with --api-key KEY (or TETHER_API_KEYS), listen on 127.0.0.1, \
             or pass --insecure to accept an open API",
            cfg.listen
        );
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        // Checked before anything listens: a wrong file is a start-up error, not a silent one.
        tether_server::tls::acceptor(cert, key).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let listener = bind(cfg.listen, cfg.listen_backlog).with_context(|| {
        format!(
            "cannot listen on {}; is another server using it? Choose another with --listen",
            cfg.listen
        )
    })?;
    let addr = listener.local_addr().context("cannot read the bound address")?;
    let health = match cfg.health_listen {
        Some(at) => Some(std::net::TcpListener::bind(at).with_context(|| {
            format!("cannot listen on {at} for --health-listen; choose another address")
        })?),
        None => None,
    };
    let gateway = Gateway::connect(cfg.clone()).await?;
    if args.heap_profiling && cfg.api_keys.is_empty() {
        anyhow::bail!(
            "--heap-profiling needs an API key: the profile is served only to requests that \
             carry one. Add --api-key KEY (or TETHER_API_KEYS)"
        );
    }
    if args.heap_profiling {
        let activated = tokio::task::spawn_blocking(|| {
            tether_server::metrics::heap_profiler()
                .ok_or_else(|| "this build has no heap profiler".to_owned())
                .and_then(|p| p.set_active(true))
        })
        .await
        .context("heap profiling")?;
        activated.map_err(|e| anyhow::anyhow!("cannot start heap profiling: {e}"))?;
        tracing::info!("heap profiling active: GET /debug/pprof/heap");
    }
    if let Some(health) = health {
        let at = health.local_addr().context("cannot read the health address")?;
        gateway.serve_health(health).context("cannot start the health endpoint")?;
        println!("tether health endpoints on http://{at} (/healthz, /readyz, /metrics)");
    }
    let signal = shutdown_signal()?;
    // A stable line on stdout that scripts and tests wait for.
    let (http, ws) = if cfg.tls_cert.is_some() { ("https", "wss") } else { ("http", "ws") };
    println!("tether listening on {http}://{addr} (WebSocket at {ws}://{addr}/ws)");
    tracing::info!(
        %addr,
        broker = gateway.broker_name(),
        ping_interval = ?cfg.ping_interval,
        pong_timeout = ?cfg.pong_timeout,
        "serving"
    );
    let report = gateway.serve(listener, signal).await.context("server failed")?;
    if report.unfinished > 0 {
        tracing::warn!(
            unfinished = report.unfinished,
            "drain timeout expired; remaining connections dropped"
        );
    }
    tracing::info!(closed = report.connections, "shutdown complete");
    Ok(ExitCode::SUCCESS)
}
