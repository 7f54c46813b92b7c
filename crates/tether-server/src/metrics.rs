//! The metrics registry: every counter the gateway keeps, exposed at `GET /metrics` in the
//! Prometheus text format (encoding by `prometheus-client`). Later subsystems (broker, auth)
//! register theirs in the same [`Registry`] through [`Metrics::register`].

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    /// The code for catalogue codes; `3xxx`/`4xxx`/`other` for codes a peer chose, so that
    /// peers cannot create unbounded label values.
    pub code: std::borrow::Cow<'static, str>,
    pub initiator: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub connections_open: Gauge,
    pub connections_parked: Gauge,
    pub connection_wakeups: Counter,
    pub connections_accepted: Family<ModeLabels, Counter>,
    pub handshakes_refused: Family<ReasonLabels, Counter>,
    /// Command batches `POST`ed to `/stream/send`, by what became of them.
    pub stream_batches: Family<ReasonLabels, Counter>,
    pub api_refused: Family<ReasonLabels, Counter>,
    pub pending_handshakes: Gauge,
    pub pending_handshakes_evicted: Counter,
    pub storm_refusals_lingering: Gauge,
    /// Quiet spells running (`tether doctor --idle-probe`).
    pub idle_probes: Gauge,
    pub per_ip_evictions: Counter,
    pub connections_closed: Family<CloseLabels, Counter>,
    pub heartbeat_timeouts: Counter,
    pub heartbeat_rtt: Histogram,
    pub fanout_seconds: Histogram,
    pub delivery_lag: Histogram,
    pub slow_consumers: Counter,
    pub inbound_rate_limited: Counter,
    pub json_too_deep: Counter,
    pub messages_in: Counter,
    pub messages_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub raw_messages_ignored: Counter,
    pub command_errors: Family<ReasonLabels, Counter>,
    pub publications: Counter,
    pub publications_deduplicated: Counter,
    pub publications_compressed: Counter,
    pub deliveries: Counter,
    pub deliveries_dropped: Counter,
    pub direct_deliveries: Counter,
    pub direct_partial_writes: Counter,
    pub fanout_sweeps: Counter,
    pub fanout_backlog_dropped: Counter,
    pub subscriptions: Gauge,
    pub recoveries: Family<OutcomeLabels, Counter>,
    pub resident_memory: Gauge,
    /// Allocator gauges, registered on first render when the binary reports them.
    allocator: std::sync::OnceLock<(Gauge, Gauge, Gauge)>,
    pub cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Memory broker: channel streams held (bounded by `max_channels`), and idempotency keys
    /// remembered; refreshed by the once-a-second housekeeping.
    pub broker_streams: Gauge,
    pub idempotency_keys: Gauge,
    /// Presence entries of this node's subscriptions (refreshed by the housekeeping).
    pub presence_entries: Gauge,
    /// Join/leave changes announced on this node, messages that carried them to subscribers,
    /// and changes dropped from an over-full batch.
    pub presence_events: Counter,
    pub presence_messages: Counter,
    pub presence_events_dropped: Counter,
    /// API orders (subscribe, unsubscribe, disconnect a user) handed to connections here, and
    /// those dropped because a connection had `MAX_PENDING_ORDERS` waiting.
    pub user_orders: Counter,
    pub user_orders_dropped: Counter,
    /// Users (JWT `sub`) with a connection on this node (refreshed by the housekeeping).
    pub users: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            connections_open: Gauge::default(),
            connections_parked: Gauge::default(),
            connection_wakeups: Counter::default(),
            connections_accepted: Family::default(),
            handshakes_refused: Family::default(),
            stream_batches: Family::default(),
            api_refused: Family::default(),
            pending_handshakes: Gauge::default(),
            pending_handshakes_evicted: Counter::default(),
            storm_refusals_lingering: Gauge::default(),
            idle_probes: Gauge::default(),
            per_ip_evictions: Counter::default(),
            connections_closed: Family::default(),
            heartbeat_timeouts: Counter::default(),
            // 100 µs .. ~6.5 s
            heartbeat_rtt: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17),
            ),
            // 100 µs .. ~6.5 s
            fanout_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17),
            ),
            // 100 µs .. ~6.5 s
            delivery_lag: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17),
            ),
            slow_consumers: Counter::default(),
            inbound_rate_limited: Counter::default(),
            json_too_deep: Counter::default(),
            messages_in: Counter::default(),
            messages_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            raw_messages_ignored: Counter::default(),
            command_errors: Family::default(),
            publications: Counter::default(),
            publications_deduplicated: Counter::default(),
            publications_compressed: Counter::default(),
            deliveries: Counter::default(),
            deliveries_dropped: Counter::default(),
            direct_deliveries: Counter::default(),
            direct_partial_writes: Counter::default(),
            fanout_sweeps: Counter::default(),
            fanout_backlog_dropped: Counter::default(),
            subscriptions: Gauge::default(),
            recoveries: Family::default(),
            resident_memory: Gauge::default(),
            allocator: std::sync::OnceLock::new(),
            cpu_seconds: Gauge::default(),
            broker_streams: Gauge::default(),
            idempotency_keys: Gauge::default(),
            presence_entries: Gauge::default(),
            presence_events: Counter::default(),
            presence_messages: Counter::default(),
            presence_events_dropped: Counter::default(),
            user_orders: Counter::default(),
            user_orders_dropped: Counter::default(),
            users: Gauge::default(),
        };
        {
            let mut r = crate::sync::lock(&m.registry);
            let t = &mut *r;
            t.register(
                "tether_connections_open",
                "Open WebSocket connections",
                m.connections_open.clone(),
            );
            t.register(
                "tether_connections_parked",
                "Idle connections parked without WebSocket buffers (a subset of the open ones)",
                m.connections_parked.clone(),
            );
            t.register(
                "tether_connection_wakeups",
                "Parked connections made active again: by their peer, a queued publication, a due heartbeat, shutdown",
                m.connection_wakeups.clone(),
            );
            t.register(
                "tether_connections_accepted",
                "Connections accepted, by mode (json, raw, echo) or transport (sse, http_stream, sse_session)",
                m.connections_accepted.clone(),
            );
            t.register(
                "tether_handshakes_refused",
                "WebSocket handshakes refused, by reason",
                m.handshakes_refused.clone(),
            );
            t.register(
                "tether_stream_batches",
                "Command batches POSTed to /stream/send, by outcome (delivered, unknown, busy, unavailable, bad_request)",
                m.stream_batches.clone(),
            );
            t.register(
                "tether_api_refused",
                "HTTP API requests refused for a missing or wrong API key, by reason",
                m.api_refused.clone(),
            );
            t.register(
                "tether_pending_handshakes",
                "TCP connections that have not finished their HTTP request (or TLS handshake) yet",
                m.pending_handshakes.clone(),
            );
            t.register(
                "tether_pending_handshakes_evicted",
                "Unfinished HTTP connections closed to make room at max_pending_handshakes (the oldest first)",
                m.pending_handshakes_evicted.clone(),
            );
            t.register(
                "tether_storm_refusals_lingering",
                "Handshakes over max_handshake_rate being closed with 1013 (bounded; beyond it they get HTTP 503)",
                m.storm_refusals_lingering.clone(),
            );
            t.register(
                "tether_idle_probes",
                "Quiet spells running for tether doctor --idle-probe (at most idle_probes)",
                m.idle_probes.clone(),
            );
            t.register(
                "tether_per_ip_table_evictions",
                "Client addresses forgotten early because the per-address table was full (their rate history is lost, their open connections still count)",
                m.per_ip_evictions.clone(),
            );
            t.register(
                "tether_connections_closed",
                "Connections ended, by close code and initiator",
                m.connections_closed.clone(),
            );
            t.register(
                "tether_heartbeat_timeouts",
                "Connections dropped because the peer stopped answering",
                m.heartbeat_timeouts.clone(),
            );
            t.register(
                "tether_heartbeat_rtt_seconds",
                "Round trip from a server ping to its pong",
                m.heartbeat_rtt.clone(),
            );
            t.register(
                "tether_fanout_seconds",
                "From a publication reaching this node's hub until every local subscriber had it handed over (written or queued)",
                m.fanout_seconds.clone(),
            );
            t.register(
                "tether_delivery_lag_seconds",
                "From a publication reaching this node's hub until it was written or queued for one subscriber (sampled: one subscriber in 16; for a sweep, the oldest publication a visit handed over)",
                m.delivery_lag.clone(),
            );
            t.register(
                "tether_slow_consumers",
                "Connections closed because they did not read fast enough",
                m.slow_consumers.clone(),
            );
            t.register(
                "tether_inbound_rate_limited",
                "Connections closed with 1008 for sending more than max_inbound_rate messages/s",
                m.inbound_rate_limited.clone(),
            );
            t.register(
                "tether_json_too_deep",
                "Commands and publish bodies refused for nesting deeper than max_json_depth",
                m.json_too_deep.clone(),
            );
            t.register(
                "tether_messages_in",
                "Data messages received from clients",
                m.messages_in.clone(),
            );
            t.register(
                "tether_messages_out",
                "Data messages sent to clients",
                m.messages_out.clone(),
            );
            t.register(
                "tether_bytes_in",
                "Payload bytes received from clients",
                m.bytes_in.clone(),
            );
            t.register("tether_bytes_out", "Payload bytes sent to clients", m.bytes_out.clone());
            t.register(
                "tether_raw_messages_ignored",
                "Raw-mode messages that were not the ping text",
                m.raw_messages_ignored.clone(),
            );
            t.register(
                "tether_command_errors",
                "Commands answered with an error, by error code",
                m.command_errors.clone(),
            );
            t.register(
                "tether_publications",
                "Publications accepted (HTTP API and clients)",
                m.publications.clone(),
            );
            t.register(
                "tether_publications_compressed",
                "Publications compressed for permessage-deflate subscribers (once each, shared by all of them)",
                m.publications_compressed.clone(),
            );
            t.register(
                "tether_publications_deduplicated",
                "Publish requests answered from an earlier one with the same idempotency key",
                m.publications_deduplicated.clone(),
            );
            t.register(
                "tether_deliveries",
                "Publication messages handed to subscribers (queued or written directly)",
                m.deliveries.clone(),
            );
            t.register(
                "tether_deliveries_dropped",
                "Publications a subscriber never got: its queue was full (slow consumer) or it was closing",
                m.deliveries_dropped.clone(),
            );
            t.register(
                "tether_direct_deliveries",
                "Publication messages the publisher wrote straight to a subscriber's socket",
                m.direct_deliveries.clone(),
            );
            t.register(
                "tether_direct_partial_writes",
                "Direct writes (publisher or sweep) the socket took only in part: the connection's task finished the frame before writing anything else",
                m.direct_partial_writes.clone(),
            );
            t.register(
                "tether_fanout_sweeps",
                "Sweeps started: a channel's publications came too fast for one direct fan-out each, so one task went round its subscribers handing each everything new in one write",
                m.fanout_sweeps.clone(),
            );
            t.register(
                "tether_fanout_backlog_dropped",
                "Publications a sweep dropped because it held MAX_SWEEP_BACKLOG (1024) not yet handed to everyone; subscribers that missed one are closed to recover",
                m.fanout_backlog_dropped.clone(),
            );
            t.register(
                "tether_subscriptions",
                "Channel subscriptions held by open connections",
                m.subscriptions.clone(),
            );
            t.register(
                "tether_recoveries",
                "Subscribes that asked to recover, by outcome (recovered; not_recovered: history or epoch; over_budget: the replay would not fit outbound_queue_bytes)",
                m.recoveries.clone(),
            );
            t.register(
                "tether_broker_streams",
                "Channel streams the memory broker holds (max_channels): made by a channel's first publication, kept while it has history, live idempotency keys or subscribers",
                m.broker_streams.clone(),
            );
            t.register(
                "tether_idempotency_keys",
                "Idempotency keys the memory broker remembers (forgotten after idempotency_window by its housekeeping)",
                m.idempotency_keys.clone(),
            );
            t.register(
                "tether_presence_entries",
                "Presence entries of this node's subscriptions to presence channels (one per subscription; bounded by max_connections × max_subscriptions)",
                m.presence_entries.clone(),
            );
            t.register(
                "tether_presence_events",
                "Join/leave changes announced to this node's subscribers (channels with join_leave)",
                m.presence_events.clone(),
            );
            t.register(
                "tether_presence_messages",
                "Messages that carried join/leave changes to subscribers: one per change in small channels, one per batch in busy ones",
                m.presence_messages.clone(),
            );
            t.register(
                "tether_presence_events_dropped",
                "Join/leave changes dropped because a channel's batch held 10,000 already",
                m.presence_events_dropped.clone(),
            );
            t.register(
                "tether_user_orders",
                "Server API orders (subscribe, unsubscribe, disconnect a user) handed to this node's connections of that user",
                m.user_orders.clone(),
            );
            t.register(
                "tether_user_orders_dropped",
                "Server API orders dropped because the connection had 64 waiting already",
                m.user_orders_dropped.clone(),
            );
            t.register(
                "tether_users",
                "Users (a token's sub) with at least one connection on this node",
                m.users.clone(),
            );
            t.register(
                "process_cpu_seconds",
                "CPU time (user + system) used by the gateway process",
                m.cpu_seconds.clone(),
            );
            t.register(
                "process_resident_memory_bytes",
                "Resident memory of the gateway process",
                m.resident_memory.clone(),
            );
        }
        m
    }

    /// Render the Prometheus text exposition, refreshing process figures first.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        if let Some(figures) = ALLOCATOR_STATS.get().and_then(|read| read()) {
            let gauges = self.allocator.get_or_init(|| {
                let g = (Gauge::default(), Gauge::default(), Gauge::default());
                self.register(
                    "tether_allocator_allocated_bytes",
                    "Bytes the memory allocator has handed out and not had back (live heap)",
                    g.0.clone(),
                );
                self.register(
                    "tether_allocator_resident_bytes",
                    "Bytes of physical memory the allocator holds (live heap, caches, metadata)",
                    g.1.clone(),
                );
                self.register(
                    "tether_allocator_active_bytes",
                    "Bytes in the allocator's active pages (the live heap rounded up to pages)",
                    g.2.clone(),
                );
                g
            });
            gauges.0.set(figures.allocated as i64);
            gauges.1.set(figures.resident as i64);
            gauges.2.set(figures.active as i64);
        }
        if let Some(cpu) = cpu_seconds("self") {
            self.cpu_seconds.set(cpu);
        }
        let mut out = String::new();
        let registry = crate::sync::lock(&self.registry);
        encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }

    /// Register a metric from another subsystem (broker, auth) in the same registry.
    pub fn register(
        &self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        crate::sync::lock(&self.registry).register(name, help, metric);
    }
}

/// What an allocator reports about itself.
#[derive(Clone, Copy, Debug)]
pub struct AllocatorFigures {
    /// Bytes handed out to the program and not yet freed.
    pub allocated: u64,
    /// Bytes of physical memory the allocator holds.
    pub resident: u64,
    /// Bytes in active pages (allocated, rounded up to whole pages).
    pub active: u64,
}

/// The allocator's live heap right now, when the binary supplied a reader.
pub fn allocated_bytes() -> Option<u64> {
    ALLOCATOR_STATS.get().and_then(|read| read()).map(|f| f.allocated)
}

/// Heap profiles on demand: what the binary's allocator can do (the `tether` binary: jemalloc
/// with profiling compiled in, via `jemalloc_pprof`). Served behind the API key at
/// `/debug/pprof/heap` (see `api.rs`).
pub trait HeapProfiler: Send + Sync {
    /// Start or stop sampling allocations.
    fn set_active(&self, on: bool) -> Result<(), String>;
    fn is_active(&self) -> bool;
    /// The live heap as sampled since activation, as a gzipped pprof protobuf.
    fn dump_pprof(&self) -> Result<Vec<u8>, String>;
}

static HEAP_PROFILER: std::sync::OnceLock<Box<dyn HeapProfiler>> = std::sync::OnceLock::new();

/// Install the heap profiler (set once; later calls are ignored).
pub fn set_heap_profiler(profiler: Box<dyn HeapProfiler>) {
    let _ = HEAP_PROFILER.set(profiler);
}

pub fn heap_profiler() -> Option<&'static dyn HeapProfiler> {
    HEAP_PROFILER.get().map(|p| p.as_ref())
}

static ALLOCATOR_STATS: std::sync::OnceLock<fn() -> Option<AllocatorFigures>> =
    std::sync::OnceLock::new();

/// Let `/metrics` report the global allocator's own figures (`tether_allocator_*`). The
/// allocator is the binary's choice, so the binary supplies the reader (the `tether` binary
/// reads jemalloc's statistics). Set once; later calls are ignored.
pub fn set_allocator_stats(read: fn() -> Option<AllocatorFigures>) {
    let _ = ALLOCATOR_STATS.set(read);
}

/// The `code` label for a close code (bounded: catalogue codes, then bands).
pub fn close_code_label(code: tether_core::CloseCode) -> std::borrow::Cow<'static, str> {
    use std::borrow::Cow;
    if tether_core::close_code::CATALOGUE.iter().any(|row| row.code == code) {
        return Cow::Owned(code.0.to_string());
    }
    Cow::Borrowed(match code.0 {
        3000..=3999 => "3xxx",
        4000..=4999 => "4xxx",
        _ => "other",
    })
}

/// CPU time (user + system) of a process (`self` or a pid), from `/proc/PID/stat` (Linux).
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0) // USER_HZ is 100 on Linux
}

/// Resident set size of this process, from `/proc/self/statm` (Linux). `None` elsewhere.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
