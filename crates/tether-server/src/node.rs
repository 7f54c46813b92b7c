//! The node: the state one gateway's routes, connection tasks and background work share —
//! settings, hub, broker, metrics, limits, shutdown signals. Everything above it (connections,
//! the HTTP layer, the gateway façade) reaches the rest of the server through it.

use crate::broker::{Broker, BrokerError, PublishReceipt};
use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use serde_json::value::RawValue;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tether_core::channel::{self, ChannelError};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// State every route and connection task shares.
pub(crate) struct Node {
    pub config: GatewayConfig,
    pub ws_config: WebSocketConfig,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when graceful shutdown begins; every connection task listens.
    pub shutdown: CancellationToken,
    /// Set just before `shutdown` is cancelled: what connections check on every pass of their
    /// loop. (`CancellationToken::is_cancelled` takes a mutex that every connection shares.)
    pub stopping: std::sync::atomic::AtomicBool,
    /// The raw-mode answer to a text ping, encoded once.
    pub raw_pong: tokio_tungstenite::tungstenite::Utf8Bytes,
    /// `raw_pong` as a complete frame, written straight to the socket.
    pub raw_pong_frame: bytes::Bytes,
    /// `allowed_origins`, parsed (validated with the configuration).
    pub origins: Vec<crate::origin::OriginPattern>,
    /// How long a connection must be idle before it parks (see `connection.rs`).
    pub park_after: std::time::Duration,
    /// Where idle connections wait; also how shutdown reaches every connection.
    pub parking: Arc<crate::parking::ParkingLot>,
    /// Tracks connection tasks so shutdown can wait for them (they outlive the HTTP server).
    pub tracker: TaskTracker,
    /// One permit per open WebSocket connection.
    pub connection_slots: Arc<Semaphore>,
    /// Open connections and handshake rates per client address.
    pub per_ip: crate::per_ip::PerIp,
    /// The whole server's handshake budget (`max_handshake_rate`).
    pub handshake_budget: std::sync::Mutex<tether_core::rate::TokenBucket>,
    /// Checks JWTs when `jwt_secret` or `jwt_public_key` is set.
    pub auth: Option<crate::auth::Verifier>,
    pub next_conn_id: AtomicU64,
    /// Random per node process: with a connection's number, its client id, unique across
    /// nodes and restarts without a string per connection.
    pub client_prefix: String,
    /// Figures for the dashboard beyond the Prometheus counters.
    pub stats: Arc<crate::stats::Stats>,
    /// Set once the background tasks (broker housekeeping, dashboard sampler) run.
    pub background_started: std::sync::atomic::AtomicBool,
    /// Set by [`Gateway::serve`] when its listener is on a loopback address: `Host` must then
    /// be a loopback name (see `host.rs`).
    pub loopback_only: std::sync::atomic::AtomicBool,
    /// Connections not upgraded yet, capped (see `pending.rs`; `Gateway::serve` only).
    pub pending: Arc<crate::pending::Pending>,
    /// Handshakes over the budget still being closed with 1013 (see `upgrade.rs`).
    pub lingering_refusals: std::sync::atomic::AtomicUsize,
    /// Whether the "no peer address" warning was logged (once).
    pub warned_no_peer: std::sync::atomic::AtomicBool,
    /// Quiet spells running (`idle_probe`), at most `idle_probes`.
    pub idle_probes: std::sync::atomic::AtomicU32,
}

pub use crate::broker::{HistoryPage, MAX_HISTORY, MAX_HISTORY_BYTES};

/// Why a publication was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("bad channel: {0}")]
    BadChannel(#[from] ChannelError),
    #[error("channels under `_tether:` are reserved for the server")]
    Reserved,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

impl Node {
    /// Take one of the `idle_probes` places for a quiet spell; false when all are taken.
    pub fn start_idle_probe(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let limit = self.config.idle_probes;
        let next = |n: u32| (n < limit).then_some(n + 1);
        let taken = self.idle_probes.fetch_update(AcqRel, Acquire, next).is_ok();
        if taken {
            self.metrics.idle_probes.inc();
        }
        taken
    }

    /// Give back a place taken by [`Node::start_idle_probe`].
    pub fn end_idle_probe(&self) {
        self.idle_probes.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        self.metrics.idle_probes.dec();
    }

    /// Connection `conn`'s client id (what presence shows and the first reply carries).
    pub fn client_id(&self, conn: u64) -> String {
        format!("{}-{conn:x}", self.client_prefix)
    }

    /// Whether `channel` keeps presence (`join_leave` needs it, so it turns it on too).
    pub fn presence_on(&self, channel: &str) -> bool {
        crate::config::presence_on(&self.config.channel, channel)
    }

    /// Connection `conn` no longer subscribes to `channel`: out of its presence, if it keeps one.
    pub fn left(&self, channel: &str, conn: u64) {
        if self.presence_on(channel) {
            self.broker.presence_leave(channel, &self.client_id(conn));
        }
    }

    /// Graceful shutdown has begun.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Take one handshake from the server-wide budget; false when the storm is over budget.
    pub fn admit_handshake(&self) -> bool {
        let rate = self.config.max_handshake_rate as f32;
        if rate == 0.0 {
            return true;
        }
        let now = self.now_ms();
        crate::sync::lock(&self.handshake_budget).take(now, rate, rate)
    }

    /// Whether requests must name a loopback host (see `host.rs`).
    pub fn loopback_only(&self) -> bool {
        self.loopback_only.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Milliseconds since the gateway started (the parking lot's clock), for rate limits.
    pub fn now_ms(&self) -> u64 {
        self.parking.ticks(tokio::time::Instant::now())
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
        channel::validate(channel, self.config.max_channel_name_len)?;
        if channel.starts_with(tether_core::channel::RESERVED_PREFIX) {
            return Err(PublishError::Reserved);
        }
        let window = self.config.idempotency_window;
        let once = idempotency_key.map(|key| crate::broker::Once { key, window });
        let receipt = self.broker.publish(channel, data, once).await?;
        if receipt.duplicate {
            self.metrics.publications_deduplicated.inc();
        } else {
            self.metrics.publications.inc();
        }
        Ok(receipt)
    }

    /// A page of `channel`'s history: with `since`, the first `limit` publications after it;
    /// without, the latest `limit` as far as the channel's history reaches (`limit` 0: only
    /// where the channel stands). `limit` must be at most [`MAX_HISTORY`].
    pub async fn history_page(
        &self,
        channel: &str,
        limit: u64,
        since: Option<&tether_core::protocol::StreamPosition>,
        reverse: bool,
    ) -> Result<HistoryPage, BrokerError> {
        use crate::broker::NotRecovered;
        use tether_core::protocol::StreamPosition;
        // With `since`, one read answers both the page and where the channel stands; without,
        // where it stands comes first, to know where the latest `limit` begin.
        let latest;
        let since = match since {
            Some(since) => since,
            None => {
                let now = self.broker.history(channel, None, MAX_HISTORY_BYTES).await?.position;
                let kept = crate::config::history_policy(&self.config.channel, channel)
                    .map_or(0, |h| h.size as u64);
                let from = now.offset.saturating_sub(limit.min(kept));
                if limit == 0 || from == now.offset {
                    return Ok(HistoryPage::empty(now));
                }
                latest = StreamPosition { epoch: now.epoch, offset: from };
                &latest
            }
        };
        let got = self.broker.history(channel, Some(since), MAX_HISTORY_BYTES).await?;
        let mut page = HistoryPage::empty(got.position);
        if limit == 0 {
            return Ok(page);
        }
        if got.recovered != Some(true) {
            page.incomplete = Some(match got.not_recovered {
                Some(NotRecovered::OverBudget { bytes }) => format!(
                    "the publications after that position weigh {bytes} bytes or more, over {MAX_HISTORY_BYTES}: ask from a later position"
                ),
                Some(NotRecovered::TooFarBehind) => {
                    "more than 10,000 publications after that position".into()
                }
                _ => "history no longer holds every publication after that position (or the epoch changed)".into(),
            });
            return Ok(page);
        }
        page.publications = got.publications.into_iter().take(limit as usize).collect();
        if reverse {
            page.publications.reverse();
        }
        Ok(page)
    }

    /// Open WebSocket connections right now.
    pub fn open_connections(&self) -> usize {
        self.config.max_connections - self.connection_slots.available_permits()
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn broker_name(&self) -> &'static str {
        self.broker.name()
    }

    /// Whether the broker accepts publications now, or why not.
    pub fn broker_readiness(&self) -> Result<(), String> {
        self.broker.readiness()
    }
}

/// The hub as the brokers see it (see [`crate::broker::LocalSubscribers`]).
impl crate::broker::LocalSubscribers for Hub {
    fn deliver(&self, channel: &str, epoch: &Arc<str>, offset: u64, data: &RawValue) -> u64 {
        self.publish(channel, epoch, offset, data)
    }

    fn count(&self, channel: &str) -> usize {
        self.subscriber_count(channel)
    }

    fn channels(&self) -> Vec<Arc<str>> {
        Hub::channels(self, |_| true, usize::MAX).into_iter().map(|(c, _)| c).collect()
    }

    fn watch_interest(&self, hook: crate::hub::ChannelHook) {
        Hub::watch_interest(self, hook)
    }

    fn positions(
        &self,
        only: Option<&[Arc<str>]>,
    ) -> Vec<(Arc<str>, Vec<tether_core::protocol::StreamPosition>)> {
        Hub::positions(self, only)
    }

    fn lost(
        &self,
        channel: &str,
        position: Option<&tether_core::protocol::StreamPosition>,
    ) -> usize {
        Hub::lost(self, channel, position)
    }

    fn announce(&self, channel: &str, changes: Vec<crate::presence::Announcement>) {
        Hub::announce(self, channel, changes)
    }

    fn order(&self, order: crate::control::UserOrder) -> usize {
        Hub::order(self, order)
    }

    fn answer(&self, question: &crate::control::Question) -> serde_json::Value {
        Hub::answer(self, question)
    }

    fn hand(&self, session: &str, batch: bytes::Bytes) -> crate::hub::Handed {
        match crate::hub::SessionId::parse(session) {
            Some(id) => self.sessions.hand(&id, batch),
            None => crate::hub::Handed::Unknown,
        }
    }
}
