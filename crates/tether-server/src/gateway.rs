//! The gateway: owner of the hub, broker, metrics and shutdown signal, and the axum routes that
//! expose them. Mount [`Gateway::router`] into any axum app, or run it alone with [`Gateway::serve`].

use crate::broker::redis::NodeOptions;
use crate::broker::{Broker, BrokerError, MemoryBroker, PublishReceipt};
use crate::config::{ConfigError, GatewayConfig};
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::node::Node;
use axum::routing::{get, post};
use axum::Router;
use serde_json::value::RawValue;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The hub, with the delivery and compression settings of `config`.
fn hub_for(config: &GatewayConfig, metrics: &Arc<Metrics>) -> Hub {
    let hub = Hub::new(metrics.clone())
        .direct_delivery(config.direct_delivery)
        .fanout_sweep(config.fanout_sweep)
        .join_leave_batch_above(config.join_leave_batch_above);
    match config.compression {
        true => {
            hub.compression(config.compression_min_size.as_u64() as usize, config.channel.clone())
        }
        false => hub,
    }
}

/// This node's id: random per process, the prefix of its client ids (12 hex digits, no `-`).
fn node_id() -> String {
    format!("{:012x}", rand::random::<u64>() >> 16)
}

/// What a gateway is assembled from besides its configuration.
struct Parts {
    hub: Arc<Hub>,
    broker: Arc<dyn Broker>,
    shutdown: CancellationToken,
    parking: Arc<crate::parking::ParkingLot>,
}

/// A Tether gateway. Cheap to clone; all clones are the same gateway.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) shared: Arc<Node>,
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub use crate::node::PublishError;

/// What graceful shutdown achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Connections open when shutdown began.
    pub connections: usize,
    /// Connections still open when the drain timeout expired (0 when all closed in time).
    pub unfinished: usize,
}

impl Gateway {
    /// A gateway with the in-memory broker (`config.broker` must be `memory`; use
    /// [`Gateway::connect`] for Redis).
    pub fn new(mut config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.fold_channel_settings();
        config.validate()?;
        if config.broker != "memory" {
            return Err(GatewayError::Config(ConfigError {
                field: "broker",
                problem: "is not `memory`: use Gateway::connect, which can reach Redis".into(),
            }));
        }
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(hub_for(&config, &metrics));
        let broker =
            Arc::new(MemoryBroker::new(hub.clone(), config.channel.clone(), config.max_channels));
        let parking = Self::parking_lot(&config);
        let parts = Parts { hub, broker, shutdown: CancellationToken::new(), parking };
        Self::assemble(config, metrics, node_id(), parts)
    }

    /// A gateway with the broker `config.broker` names: `memory`, or a `redis://` URL (Redis
    /// must be reachable now; later outages are survived).
    pub async fn connect(mut config: GatewayConfig) -> Result<Gateway, GatewayError> {
        config.fold_channel_settings();
        config.validate()?;
        if config.broker == "memory" {
            return Self::new(config);
        }
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(hub_for(&config, &metrics));
        let shutdown = CancellationToken::new();
        let parking = Self::parking_lot(&config);
        let node = node_id();
        let broker = crate::broker::redis::RedisBroker::connect(
            &config.broker,
            hub.clone(),
            config.channel.clone(),
            &metrics,
            NodeOptions {
                node: node.clone(),
                presence_ttl: config.presence_ttl,
                stream_state_ttl: config.stream_state_ttl,
            },
            shutdown.clone(),
        )
        .await?;
        Self::assemble(config, metrics, node, Parts { hub, broker, shutdown, parking })
    }

    fn parking_lot(config: &GatewayConfig) -> Arc<crate::parking::ParkingLot> {
        let tick = crate::parking::ParkingLot::tick_for(config.ping_interval, config.pong_timeout);
        Arc::new(crate::parking::ParkingLot::new(tick))
    }

    fn assemble(
        config: GatewayConfig,
        metrics: Arc<Metrics>,
        node: String,
        parts: Parts,
    ) -> Result<Gateway, GatewayError> {
        let Parts { hub, broker, shutdown, parking } = parts;
        hub.set_name(&node);
        let max = config.max_message_size.as_u64() as usize;
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(config.read_buffer_size.as_u64() as usize)
            // Frames of one batch are gathered and written together (one syscall for many
            // publications when a subscriber has fallen behind). Idle connections do not keep
            // the buffer: parking drops it (decision 0007).
            .write_buffer_size(16 * 1024)
            .max_write_buffer_size(max.max(64 * 1024) * 4)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let park_after = (config.ping_interval / 2).min(std::time::Duration::from_secs(1));
        let raw_pong = config.raw_pong.as_str().into();
        let (raw_pong_frame, _) = crate::publication::text_frame(config.raw_pong.as_bytes());
        let auth = crate::auth::Verifier::from_config(&config).map_err(|problem| {
            GatewayError::Config(ConfigError { field: "jwt_public_key", problem })
        })?;
        let origins = config
            .allowed_origins
            .iter()
            .filter_map(|o| crate::origin::OriginPattern::parse(o))
            .collect();
        Ok(Gateway {
            shared: Arc::new(Node {
                raw_pong,
                raw_pong_frame,
                origins,
                connection_slots: Arc::new(Semaphore::new(config.max_connections)),
                auth,
                per_ip: crate::per_ip::PerIp::new(
                    config.max_connections_per_ip,
                    config.handshake_rate_per_ip,
                    config.limit_loopback,
                    config.ipv6_prefix,
                )
                .counting_evictions(metrics.per_ip_evictions.clone()),
                pending: crate::pending::Pending::new(
                    config.max_pending_handshakes,
                    metrics.clone(),
                ),
                handshake_budget: std::sync::Mutex::new(tether_core::rate::TokenBucket::full(
                    config.max_handshake_rate as f32,
                    0,
                )),
                config,
                ws_config,
                hub,
                broker,
                metrics,
                shutdown,
                stopping: std::sync::atomic::AtomicBool::new(false),
                parking,
                // Long enough not to park and unpark between the messages of a busy connection,
                // short enough that an idle one spends almost all its life parked.
                park_after,
                tracker: TaskTracker::new(),
                next_conn_id: AtomicU64::new(1),
                client_prefix: node,
                stats: Arc::default(),
                background_started: Default::default(),
                loopback_only: Default::default(),
                lingering_refusals: Default::default(),
                warned_no_peer: Default::default(),
                idle_probes: Default::default(),
            }),
        })
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.shared.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn broker_name(&self) -> &'static str {
        self.shared.broker.name()
    }

    /// Whether the broker accepts publications now, or why not.
    pub fn broker_readiness(&self) -> Result<(), String> {
        self.shared.broker.readiness()
    }

    /// The gateway's routes: `GET /ws`, `POST /api/{method}` (publish, presence, ...),
    /// `GET /healthz`, `GET /metrics`
    /// (and `GET /echo` with `conformance_echo`).
    /// Merge or nest them into your own axum `Router`.
    pub fn router(&self) -> Router {
        self.start_background();
        let mut router = Router::new();
        if self.shared.config.conformance_echo {
            router = router.route("/echo", get(crate::upgrade::echo_handler));
        }
        router
            .route("/ws", get(crate::upgrade::ws_handler))
            .route("/sse", get(crate::sse::sse_handler))
            .route("/stream", axum::routing::post(crate::stream::open_lines))
            .route("/stream/sse", get(crate::stream::open_events))
            .route("/stream/send", axum::routing::post(crate::stream::send))
            .route("/api/{method}", post(crate::api::call).fallback(crate::api::method_not_allowed))
            .route("/healthz", get(crate::api::healthz))
            .route("/readyz", get(crate::api::readyz))
            .route("/metrics", get(crate::api::metrics))
            .route("/debug/pprof/heap", get(crate::api::heap_profile))
            .route("/debug/pprof/heap/{action}", post(crate::api::heap_profiling))
            .route("/tether.js", get(crate::web::tether_js))
            .route("/tether-fallback.js", get(crate::web::tether_fallback_js))
            .layer(axum::middleware::from_fn_with_state(self.shared.clone(), crate::host::guard))
            .with_state(self.shared.clone())
    }

    /// `GET /healthz`, `/readyz` and `/metrics` alone, for a listener of their own (see
    /// [`Gateway::serve_health`]).
    pub fn health_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(crate::api::healthz))
            .route("/readyz", get(crate::api::readyz))
            .route("/metrics", get(crate::api::metrics))
            .layer(axum::middleware::from_fn_with_state(self.shared.clone(), crate::host::guard))
            .with_state(self.shared.clone())
    }

    /// Serve [`Gateway::health_router`] on `listener` from a thread and runtime of its own.
    ///
    /// Health checks on the main port wait in the same accept queue as every client: during a
    /// reconnect storm, up to `listen_backlog` handshakes (4096 at ~40,000/s here: 100 ms) are
    /// ahead of each probe. On their own socket and thread, they are answered at once, and a
    /// load balancer does not mistake a busy node for a dead one.
    pub fn serve_health(&self, listener: std::net::TcpListener) -> std::io::Result<()> {
        listener.set_nonblocking(true)?;
        let router = self.health_router();
        std::thread::Builder::new().name("tether-health".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => return tracing::error!(error = %e, "cannot start the health endpoint"),
            };
            runtime.block_on(async move {
                let served = match TcpListener::from_std(listener) {
                    Ok(listener) => axum::serve(listener, router).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = served {
                    tracing::error!(error = %e, "the health endpoint stopped");
                }
            });
        })?;
        Ok(())
    }

    /// The operator pages: the live dashboard at `/` (with its assets) and the plain-WebSocket
    /// example at `/examples/plain.html`. Separate from [`Gateway::router`] so that a host app
    /// keeps its own `/`. Starts the dashboard's sampler (must be called inside a tokio runtime).
    pub fn dashboard_router(&self) -> Router {
        self.start_background();
        crate::web::dashboard_routes()
            .layer(axum::middleware::from_fn_with_state(self.shared.clone(), crate::host::guard))
    }

    /// Start the once-a-second background work (broker housekeeping: history expiry, idle
    /// streams; the dashboard's sampler) on the current runtime, which from then on also runs
    /// every fan-out sweep. Idempotent; a no-op outside a tokio runtime.
    pub fn start_background(&self) {
        use std::sync::atomic::Ordering;
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.shared.background_started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.shared.hub.run_sweeps_on(runtime.clone());
        runtime.spawn(crate::dashboard::run_sampler(
            self.shared.metrics.clone(),
            self.shared.stats.clone(),
            self.shared.hub.clone(),
            self.shared.config.channel.clone(),
            self.shared.shutdown.clone(),
        ));
        // Busy channels' join/leave changes, one batch per channel per interval.
        let (hub, stop) = (self.shared.hub.clone(), self.shared.shutdown.clone());
        let every = self.shared.config.join_leave_interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => hub.flush_announcements(),
                }
            }
        });
        let (shared, stop) = (self.shared.clone(), self.shared.shutdown.clone());
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {
                        shared.broker.maintain();
                        let held = shared.broker.held();
                        let m = &shared.metrics;
                        if let Some(n) = held.streams {
                            m.broker_streams.set(n as i64);
                        }
                        if let Some(n) = held.idempotency_keys {
                            m.idempotency_keys.set(n as i64);
                        }
                        m.presence_entries.set(shared.broker.presence_entries() as i64);
                        m.users.set(shared.hub.users.user_count() as i64);
                        shared.per_ip.sweep_now(shared.now_ms());
                    }
                }
            }
        });
    }

    /// Publish from the host application.
    pub async fn publish(
        &self,
        channel: &str,
        data: &RawValue,
    ) -> Result<PublishReceipt, PublishError> {
        self.publish_once(channel, data, None).await
    }

    /// Publish with an optional idempotency key (what `POST /api/publish` calls): a retry with
    /// the same key within `idempotency_window` publishes nothing and returns the first
    /// publication's receipt, marked `duplicate`, on any node sharing the broker.
    pub async fn publish_once(
        &self,
        channel: &str,
        data: &RawValue,
        idempotency_key: Option<&str>,
    ) -> Result<PublishReceipt, PublishError> {
        self.shared.publish_once(channel, data, idempotency_key).await
    }

    /// Open WebSocket connections right now.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shared.stopping()
    }

    /// Graceful shutdown of the WebSocket side: refuse new handshakes, send every client its
    /// close (1012 with a reconnect hint, or 1001), and wait up to `drain_timeout` for them.
    pub async fn shutdown(&self) -> DrainReport {
        let connections = self.open_connections();
        self.shared.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.shared.shutdown.cancel();
        self.shared.parking.wake_all(); // parked connections do not watch `shutdown` themselves
        self.shared.tracker.close();
        let drained =
            tokio::time::timeout(self.shared.config.drain_timeout, self.shared.tracker.wait())
                .await;
        let unfinished = if drained.is_ok() { 0 } else { self.shared.tracker.len() };
        // What this node left in a shared backplane (its presence) goes now.
        let _ = tokio::time::timeout(self.shared.config.close_timeout, self.shared.broker.close())
            .await;
        DrainReport { connections, unfinished }
    }

    /// Run standalone on `listener` until `signal` resolves, then shut down gracefully: the
    /// WebSocket side first (see [`Gateway::shutdown`]; `/healthz` answers 503 meanwhile), then
    /// HTTP requests in flight get up to `drain_timeout` to finish. The HTTP server itself (the
    /// accept loop, the pending-handshake cap, TLS, hyper) is `listener.rs`.
    pub async fn serve(
        self,
        listener: TcpListener,
        signal: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<DrainReport> {
        if let Ok(local) = listener.local_addr() {
            let loopback = local.ip().is_loopback();
            self.shared.loopback_only.store(loopback, std::sync::atomic::Ordering::Relaxed);
        }
        let app = self.router().merge(self.dashboard_router()).fallback(crate::api::not_found);
        let gateway = self.clone();
        let drained = async move {
            signal.await;
            tracing::info!(
                connections = gateway.open_connections(),
                "shutting down: closing connections"
            );
            gateway.shutdown().await
        };
        crate::listener::run(&self.shared, listener, app, drained).await
    }
}
