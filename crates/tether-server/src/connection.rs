//! One WebSocket connection, from the upgraded socket to its logged end.
//!
//! A single task per connection owns the socket. While active it selects over: the heartbeat
//! timer, inbound frames, and its mailbox (the bounded outbound queue the hub fills, which also
//! carries the slow-consumer flag and signals from the gateway: shutdown, resync, "consider
//! parking"). Protocol decisions come from `tether-core` (codec, heartbeat, close codes); this
//! file only moves frames and enforces time limits.
//!
//! A connection with nothing in flight for `park_after` **parks**: the WebSocket state, its
//! buffers, the timer and the select's futures are dropped (they live in one boxed future that
//! exists only while active), its socket leaves tokio's reactor for the parking lot's epoll set,
//! and the task waits on its mailbox alone; its next heartbeat is kept by the lot's shared
//! timer. Anything — a byte from the peer, a publication, a due heartbeat, shutdown — makes it
//! active again. This is what makes an idle connection cost well under a kilobyte (decision
//! 0007, docs/performance.md).
//!
//! Every way a connection can end produces one [`Ending`] — code, reason, initiator, wasClean —
//! which is logged once and counted once.

use crate::auth::{Access, Grant};
use crate::gate::Gate;
use crate::hub::{
    Compress, ConnId, Delivery, Mode, Outbound, OutboundQueue, Payload, Published, PushError,
    Subscriber,
};
use crate::mailbox::Admission;
use crate::node::Node;
use crate::transport::Transport;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use smallvec::SmallVec;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tether_core::channel;
use tether_core::close_code::{CloseCode, Initiator, RetryAdvice};
use tether_core::codec;
use tether_core::heartbeat::{Action, Heartbeat};
use tether_core::protocol::{
    ClientCommand, Disconnect, ErrorBody, ErrorCode, ReplyResult, ServerMessage,
};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

mod replay;

pub(crate) type Ws = WebSocketStream<Gate>;

/// How an active phase ended.
enum Phase {
    Ended(Ending),
    /// Nothing in flight for a while: park until `wake_at` (the heartbeat) or anything else.
    Idle {
        transport: Transport,
        wake_at: Instant,
    },
}

/// Feed one message to the socket, as fragments when it is large (see `FRAGMENT`).
async fn feed(ws: &mut Ws, msg: Message) -> Result<(), WsError> {
    use crate::publication::{fragments, FRAGMENT};
    if msg.len() <= FRAGMENT {
        return ws.feed(msg).await;
    }
    for fragment in fragments(msg) {
        ws.feed(fragment).await?;
    }
    Ok(())
}

/// `future` limited to `limit`, with the timer created only if the future does not finish on
/// its first poll: almost every write completes at once, and building a timer per write (a
/// runtime-handle lookup and a reference count) showed in fan-out profiles.
async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, ()> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => tokio::time::timeout(limit, future).await.map_err(|_| ()),
    }
}

/// Largest outbound messages written before one flush.
const WRITE_BATCH: usize = 64;

/// How a connection ended.
#[derive(Debug)]
pub(crate) struct Ending {
    pub code: CloseCode,
    pub reason: String,
    pub initiator: Initiator,
    pub was_clean: bool,
}

impl Ending {
    fn network(reason: impl Into<String>) -> Self {
        Ending {
            code: CloseCode::ABNORMAL,
            reason: reason.into(),
            initiator: Initiator::Network,
            was_clean: false,
        }
    }
}

/// Why a write did not complete.
enum WriteFailed {
    TimedOut,
    /// The outbound queue overflowed while a write was blocked.
    Overflowed,
    Transport(WsError),
}

pub(crate) struct Connection {
    pub id: ConnId,
    pub mode: Mode,
    shared: Arc<Node>,
    /// The mailbox: outbound queue, subscriptions, overflow flag, waker, parked deadline.
    queue: Arc<OutboundQueue>,
    /// This connection's place in the parking lot.
    lot_key: usize,
    peer: Option<SocketAddr>,
    /// When it opened, in the parking lot's ticks (ms).
    opened: u64,
    /// Inbound messages allowed (`max_inbound_rate`).
    inbound: tether_core::rate::TokenBucket,
    /// What this connection's token allows (JWT on, and a token given).
    grant: Option<Arc<Grant>>,
}

impl Drop for Connection {
    /// Leave the hub whatever way the task ends — normally, by a panic, or cancelled — so that no
    /// subscriber entry outlives its connection.
    fn drop(&mut self) {
        let missed = self.queue.close();
        self.shared.metrics.deliveries_dropped.inc_by(missed);
        self.shared.parking.unregister(self.lot_key);
        // Taken out first: the hub's lock is never taken while holding the mailbox's.
        let channels: Vec<_> = self.queue.with_subscriptions(|s| s.take_channels().collect());
        for channel in channels {
            self.shared.hub.unsubscribe(&channel, self.id);
        }
        self.shared.metrics.connections_open.dec();
        // The slot taken (and forgotten) at the handshake: cheaper to hold than a permit.
        self.shared.connection_slots.add_permits(1);
        if let Some(peer) = self.peer {
            self.shared.per_ip.release(peer.ip(), self.shared.now_ms());
        }
    }
}

/// The task of one connection. Written by hand rather than as one `async fn` so that what a
/// parked connection keeps is exactly [`Parked`]: an async fn's state is the union of all its
/// await points (and keeps moved-from arguments), which measured ~2 KB per connection. Active
/// phases run as a boxed future that exists only while the connection is active.
pub(crate) struct ConnectionTask {
    state: TaskState,
}

/// An active phase: ends with the connection parked (and when its heartbeat is due), or `None`
/// once the connection has ended.
type ActivePhase = Pin<Box<dyn Future<Output = Option<(Parked, Instant)>> + Send>>;

// The large variant is the point: a parked connection is held inline, in the task itself.
#[allow(clippy::large_enum_variant)]
enum TaskState {
    /// Upgrading, or active: returns the parked connection, or `None` once it has ended.
    Running(ActivePhase),
    Parked(Parked),
    Done,
}

/// All a parked connection holds. Every byte counts: with the task's own bookkeeping this must
/// stay within tokio's 384-byte task cell (cells are 128-byte aligned; measured in decision 0007).
/// When its heartbeat is next due is written into its mailbox, for the shared timer.
pub(crate) struct Parked {
    conn: Connection,
    transport: Transport,
    heartbeat: Heartbeat,
    /// The resync generation this connection has seen (see `Shared::resync`).
    resync_seen: u64,
}

impl ConnectionTask {
    /// The task for a handshake just answered with 101: wait for hyper's upgrade, then serve.
    pub(crate) fn new(
        shared: Arc<Node>,
        on_upgrade: hyper::upgrade::OnUpgrade,
        peer: Option<SocketAddr>,
        mode: Mode,
        channels: Vec<String>,
        grant: Option<Arc<Grant>>,
        deflate: Option<u8>,
    ) -> Self {
        let start = async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(peer = ?peer, error = %e, "upgrade did not complete");
                    shared.connection_slots.add_permits(1); // no connection will give it back
                    if let Some(peer) = peer {
                        shared.per_ip.release(peer.ip(), shared.now_ms());
                    }
                    return None;
                }
            };
            let mut transport = Transport::new(upgraded);
            if deflate.is_some() {
                transport.inflate(shared.config.max_message_size.as_u64() as usize);
            }
            let window = deflate.unwrap_or(0);
            let parked = Connection::open(shared, transport, peer, mode, channels, grant, window);
            Some((parked, Instant::now())) // due at once: the task activates it right away
        };
        ConnectionTask { state: TaskState::Running(Box::pin(start)) }
    }
}

impl Future for ConnectionTask {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                TaskState::Running(phase) => match phase.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => {
                        self.state = TaskState::Done;
                        return Poll::Ready(());
                    }
                    Poll::Ready(Some((mut parked, wake_at))) => {
                        let shared = parked.conn.shared.clone();
                        shared.metrics.connections_parked.inc();
                        shared.parking.ensure_tasks();
                        parked.conn.queue.set_deadline(shared.parking.ticks(wake_at));
                        parked.conn.queue.clear_socket_ready();
                        parked.transport.leave_reactor(&shared.parking, parked.conn.lot_key);
                        self.state = TaskState::Parked(parked);
                    }
                },
                TaskState::Parked(parked) => {
                    if parked.poll_wake(cx).is_pending() {
                        return Poll::Pending;
                    }
                    let TaskState::Parked(mut parked) =
                        std::mem::replace(&mut self.state, TaskState::Done)
                    else {
                        unreachable!("matched above")
                    };
                    parked.transport.rejoin_reactor(&parked.conn.shared.parking);
                    parked.conn.shared.metrics.connections_parked.dec();
                    parked.conn.queue.set_deadline(u64::MAX);
                    self.state = TaskState::Running(Box::pin(parked.resume()));
                }
                TaskState::Done => return Poll::Ready(()),
            }
        }
    }
}

impl Parked {
    /// Ready when the socket is readable (data, end, error), the mailbox has something, the
    /// heartbeat is due, or shutdown/resync began. Registers the task's waker with the mailbox
    /// (which the hub, the shared timer and shutdown wake) and with the socket.
    fn poll_wake(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let shared = &self.conn.shared;
        if self.conn.queue.poll_ready(cx).is_ready()
            || self.conn.queue.socket_ready()
            || shared.parking.ticks(Instant::now()) >= self.conn.queue.deadline()
            || shared.stopping()
            || *shared.resync.borrow() != self.resync_seen
            || self.transport.poll_activity(cx).is_ready()
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Run active again until the connection parks again (`Some`) or ends (`None`, logged).
    async fn resume(self) -> Option<(Parked, Instant)> {
        let Parked { mut conn, transport, mut heartbeat, resync_seen } = self;
        let mut resync = conn.shared.resync.subscribe();
        let missed_resync = *resync.borrow_and_update() != resync_seen;
        match conn.active(transport, &mut heartbeat, &mut resync, missed_resync).await {
            Phase::Ended(ending) => {
                conn.finish(ending);
                None
            }
            Phase::Idle { mut transport, wake_at } => {
                transport.shrink();
                let resync_seen = *resync.borrow();
                Some((Parked { conn, transport, heartbeat, resync_seen }, wake_at))
            }
        }
    }
}

impl Connection {
    /// A connection on an upgraded socket: registered, subscribed to its `?channel=`s, and
    /// parked with its first heartbeat due now (so the task activates it right away).
    /// `window`: the permessage-deflate window agreed for what it is sent, 0 without it.
    fn open(
        shared: Arc<Node>,
        transport: Transport,
        peer: Option<SocketAddr>,
        mode: Mode,
        channels: Vec<String>,
        grant: Option<Arc<Grant>>,
        window: u8,
    ) -> Parked {
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let cfg = &shared.config;
        let queue = Arc::new(
            OutboundQueue::new(cfg.outbound_queue, cfg.outbound_queue_bytes.as_u64())
                .deflating(window),
        );
        shared.metrics.connections_open.inc(); // decremented by `Drop for Connection`
        let lot_key = shared.parking.register(queue.clone());
        shared.parking.ensure_tasks(); // its timer also tells active connections when to park
        shared
            .metrics
            .connections_accepted
            .get_or_create(&crate::metrics::ModeLabels { mode: mode.as_str() })
            .inc();
        tracing::debug!(conn = id, peer = ?peer, mode = mode.as_str(), "connection open");
        let now = Instant::now();
        let cfg = &shared.config;
        let heartbeat = Heartbeat::new(cfg.ping_interval, cfg.pong_timeout, now.into_std());
        let resync_seen = *shared.resync.borrow();
        let opened = shared.parking.ticks(now);
        let inbound = tether_core::rate::TokenBucket::full(cfg.max_inbound_rate as f32, opened);
        let mut conn =
            Connection { id, mode, shared, queue, lot_key, peer, opened, inbound, grant };
        for channel in channels {
            // Validated at the handshake; a duplicate `?channel=` is simply ignored here.
            let _ = conn.subscribe(&channel);
        }
        Parked { conn, transport, heartbeat, resync_seen }
    }

    /// The connection has ended (its socket is closed or aborted): leave the hub, count and
    /// log the ending.
    fn finish(self, ending: Ending) {
        let (shared, id, peer, mode) = (self.shared.clone(), self.id, self.peer, self.mode);
        let duration_ms = shared.parking.ticks(Instant::now()).saturating_sub(self.opened);
        drop(self); // leaves the hub (see `Drop for Connection`)
        let m = &shared.metrics;
        let code_label = crate::metrics::close_code_label(ending.code);
        m.connections_closed
            .get_or_create(&crate::metrics::CloseLabels {
                code: code_label.clone(),
                initiator: ending.initiator.as_str(),
            })
            .inc();
        shared.stats.record_close(code_label.into_owned(), ending.initiator.as_str());
        tracing::info!(
            target: "tether::close",
            conn = id,
            peer = %peer.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into()),
            mode = mode.as_str(),
            duration_ms,
            code = ending.code.0,
            reason = %ending.reason,
            was_clean = ending.was_clean,
            initiator = ending.initiator.as_str(),
            "connection closed"
        );
    }

    /// One active phase: a WebSocket over `transport` until the connection ends or idles.
    async fn active(
        &mut self,
        mut transport: Transport,
        heartbeat: &mut Heartbeat,
        resync: &mut watch::Receiver<u64>,
        missed_resync: bool,
    ) -> Phase {
        if self.queue.window() != 0 && !transport.inflates() {
            // Dropped while parked (see `Transport::shrink`): the mailbox remembers the deal.
            transport.inflate(self.shared.config.max_message_size.as_u64() as usize);
        }
        let socket = transport.direct_socket();
        let gate = Gate::new(transport, self.queue.clone(), self.shared.metrics.clone());
        let mut ws =
            WebSocketStream::from_raw_socket(gate, Role::Server, Some(self.shared.ws_config)).await;
        // Declared after `ws`, so dropped before it on every way out: publishers stop writing
        // to the socket before it can be closed.
        let direct = DirectWindow::open(&self.queue, socket);
        // Dropping `ws` on the way out aborts the TCP connection if the ending was not a clean close.
        let ended = if missed_resync {
            Some(self.resync_close(&mut ws).await)
        } else {
            self.active_loop(&mut ws, heartbeat, resync).await
        };
        match ended {
            Some(ending) => Phase::Ended(ending),
            None => {
                let now = Instant::now();
                let wake_at = match heartbeat.poll(now.into_std()) {
                    Action::Wait(at) => self.or_token_expiry(now, Instant::from_std(at)),
                    _ => now,
                };
                drop(direct);
                Phase::Idle { transport: ws.into_inner().into_transport(), wake_at }
            }
        }
    }

    /// The broker's live feed had a hole: have the client resubscribe and recover.
    async fn resync_close(&mut self, ws: &mut Ws) -> Ending {
        let hint = Some(self.shared.config.restart_retry_hint);
        let reason = "message backplane reconnected: resubscribe to recover";
        self.close(ws, CloseCode::SERVICE_RESTART, reason, hint, false).await
    }

    /// The select loop. `None`: idle with nothing in flight, time to park.
    async fn active_loop(
        &mut self,
        ws: &mut Ws,
        heartbeat: &mut Heartbeat,
        resync: &mut watch::Receiver<u64>,
    ) -> Option<Ending> {
        let queue = self.queue.clone();
        let lot = self.shared.parking.clone();
        let park_after = self.shared.park_after;
        // When to consider parking, in the lot's ticks, kept in the mailbox: the lot's shared
        // timer signals us once it has passed. Moving it on each message is one store, where a
        // timer of our own would wake every busy connection every `park_after`.
        let park_check = |now: Instant| queue.set_deadline(lot.ticks(now + park_after));
        park_check(Instant::now());
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut sleep_until = None;
        // The time a message arrived serves as the next pass's clock: one reading per message
        // instead of two (the pass follows at once; its checks do not need the microseconds).
        let mut clock: Option<Instant> = None;
        loop {
            // Shutdown and resync are flags, checked here: the gateway raises them and then wakes
            // every mailbox through the parking lot, which ends the select below. (Two more
            // futures in the select, polled on every message, showed in profiles.)
            if self.shared.stopping() {
                let (code, hint) = match self.shared.config.shutdown_close {
                    crate::config::ShutdownClose::Restart => {
                        (CloseCode::SERVICE_RESTART, Some(self.shared.config.restart_retry_hint))
                    }
                    crate::config::ShutdownClose::GoingAway => (CloseCode::GOING_AWAY, None),
                };
                let reason = "server shutting down";
                return Some(Box::pin(self.close(ws, code, reason, hint, false)).await);
            }
            if self.grant.as_ref().is_some_and(|g| g.expired()) {
                return Some(Box::pin(self.token_expired(ws)).await);
            }
            // (An error would mean the gateway is gone: closing is right then too.)
            if resync.has_changed().unwrap_or(true) {
                return Some(Box::pin(self.resync_close(ws)).await);
            }
            let now = clock.take().unwrap_or_else(Instant::now);
            let wake_at = match heartbeat.poll(now.into_std()) {
                Action::SendPing => {
                    if let Err(e) = self.write_frames(ws, vec![Message::Ping(Bytes::new())]).await {
                        return Some(self.write_failed(e));
                    }
                    continue;
                }
                Action::PeerDead => {
                    self.shared.metrics.heartbeat_timeouts.inc();
                    return Some(Ending {
                        code: CloseCode::HEARTBEAT_TIMEOUT,
                        reason: "heartbeat timeout".into(),
                        initiator: Initiator::Server,
                        was_clean: false,
                    });
                }
                Action::Wait(at) => self.or_token_expiry(now, Instant::from_std(at)),
            };
            // Park when nothing happened for `park_after` and nothing is half-done: no partial
            // frame or message read, nothing queued (writes are always flushed by now).
            if lot.ticks(now) >= queue.deadline() {
                let busy = queue.take_written(); // publications written directly meanwhile
                if !busy && ws.get_ref().can_park() && queue.is_empty() && !queue.overflowed() {
                    return None;
                }
                park_check(now); // something is half-done, or it is busy: look again later
            }
            // The timer serves the heartbeat only; re-armed only when its deadline moves earlier
            // (or it has fired): a wake-up that comes too early just recomputes and re-arms.
            if sleep_until.is_none_or(|at| wake_at < at) {
                sleep.as_mut().reset(wake_at);
                sleep_until = Some(wake_at);
            }
            // The rarely taken branches below are boxed: an async fn's state is as large as its
            // largest await point, and every active connection would otherwise carry the state
            // of a closing handshake. The per-message ones (`on_message`, `write_batch`) are not:
            // a box per message costs more than the bytes it saves while active.
            // `biased`, in this order: reading first, so a busy queue never stops us reading (its
            // pongs are its proof of life); a peer that floods us still lets its queue in, since
            // tokio's cooperative budget makes the socket read pending after 128 reads, and
            // the branch taken then runs to its end. The heartbeat's timer comes last: it only
            // wakes the loop, whose top polls the heartbeat on every pass. Polling the three in
            // random order cost a waker registration on the mailbox or the timer for most
            // messages: 4.8 against 4.5-4.6 µs of CPU per ping-pong round trip.
            tokio::select! {
                biased;
                inbound = ws.next() => {
                    let arrived = Instant::now();
                    clock = Some(arrived);
                    park_check(arrived);
                    if matches!(inbound, Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))))
                        && !self.inbound_allowed(lot.ticks(arrived))
                    {
                        return Some(Box::pin(self.rate_limited(ws)).await);
                    }
                    heartbeat.on_inbound(arrived.into_std());
                    match inbound {
                        Some(Ok(Message::Pong(_))) => {
                            if let Some(rtt) = heartbeat.on_pong(Instant::now().into_std()) {
                                self.shared.metrics.heartbeat_rtt.observe(rtt.as_secs_f64());
                                self.shared.stats.record_rtt(rtt);
                            }
                        }
                        Some(Ok(Message::Ping(_))) => {
                            // tungstenite queued the pong; push it out now, not with the next write.
                            if let Err(e) = self.flush(ws).await {
                                return Some(self.write_failed(e));
                            }
                        }
                        Some(Ok(Message::Close(frame))) => return Some(Box::pin(self.peer_closed(ws, frame)).await),
                        Some(Ok(msg)) => {
                            if let Some(ending) = self.on_message(ws, msg).await {
                                return Some(ending);
                            }
                        }
                        Some(Err(e)) => return Some(Box::pin(self.read_failed(ws, e)).await),
                        None => return Some(Ending::network("connection ended without a close frame")),
                    }
                }
                out = queue.next() => {
                    // `None`: woken by the gateway (shutdown, resync); the loop's top checks.
                    let Some(out) = out else { continue };
                    park_check(Instant::now());
                    match self.write_batch(ws, out, &queue).await {
                        Err(e) => return Some(self.write_failed(e)),
                        Ok(false) => {}
                        Ok(true) if queue.overflowed() => {
                            self.shared.metrics.slow_consumers.inc();
                            return Some(Box::pin(self.close(ws, CloseCode::SLOW_CONSUMER, "slow consumer: outbound queue full", None, false)).await);
                        }
                        Ok(true) => {
                            tracing::warn!(conn = self.id, "a publication is missing from the live feed; asking the client to recover");
                            let hint = Some(self.shared.config.restart_retry_hint);
                            return Some(Box::pin(self.close(ws, CloseCode::SERVICE_RESTART, "gap in the live feed: resubscribe to recover", hint, false)).await);
                        }
                    }
                }
                _ = &mut sleep => sleep_until = None,
            }
        }
    }

    fn access(&self, channel: &str, publish: bool) -> Access {
        let s = &self.shared;
        let grant = self.grant.as_deref();
        crate::auth::access(s.auth.as_ref(), &s.config.anonymous_channels, grant, channel, publish)
    }

    /// The `connect` command: verify the token and keep what it allows. A token that cannot
    /// work closes the connection with advice not to retry (4502); an expired one with advice
    /// to fetch a fresh one and reconnect (4002).
    async fn connect_command(&mut self, ws: &mut Ws, id: u64, token: &str) -> Option<Ending> {
        let Some(verifier) = self.shared.auth.as_ref() else {
            // No JWT configured: nothing to check, the connection may do what anyone may.
            let reply = ServerMessage::ok(id, ReplyResult::default());
            return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
        };
        match verifier.verify(token) {
            Ok(grant) => {
                tracing::debug!(conn = self.id, sub = ?grant.sub, "authenticated");
                self.grant = Some(Arc::new(grant));
                let reply = ServerMessage::ok(id, ReplyResult::default());
                self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await
            }
            Err(crate::auth::TokenError::Expired) => Some(self.token_expired(ws).await),
            Err(crate::auth::TokenError::Invalid(why)) => {
                let reason = format!("token not accepted: {why}");
                Some(self.close(ws, CloseCode::TOKEN_INVALID, &reason, None, false).await)
            }
        }
    }

    /// `at`, or when the token expires if that comes first: the connection wakes then, active
    /// or parked (whose mailbox deadline this becomes), rather than at its next heartbeat.
    fn or_token_expiry(&self, now: Instant, at: Instant) -> Instant {
        self.grant.as_ref().map_or(at, |g| at.min(now + g.remaining()))
    }

    async fn token_expired(&mut self, ws: &mut Ws) -> Ending {
        let reason = "token expired: fetch a fresh token and reconnect";
        self.close(ws, CloseCode::TOKEN_EXPIRED, reason, None, false).await
    }

    /// One more inbound message within `max_inbound_rate`?
    fn inbound_allowed(&mut self, now_ms: u64) -> bool {
        let rate = self.shared.config.max_inbound_rate as f32;
        rate == 0.0 || self.inbound.take(now_ms, rate, rate)
    }

    async fn rate_limited(&mut self, ws: &mut Ws) -> Ending {
        self.shared.metrics.inbound_rate_limited.inc();
        let reason = format!(
            "rate limit: more than {} messages per second",
            self.shared.config.max_inbound_rate
        );
        self.close(ws, CloseCode::POLICY_VIOLATION, &reason, None, true).await
    }

    /// A text or binary message from the peer. Returns an ending when the connection must close.
    async fn on_message(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
        let m = &self.shared.metrics;
        m.messages_in.inc();
        m.bytes_in.inc_by(msg.len() as u64);
        let reply = match (self.mode, msg) {
            (Mode::Raw, Message::Text(text)) if text.as_str() == self.shared.config.raw_ping => {
                if ws.get_mut().hold_if_idle() {
                    // The pong's frame is built once: straight to the socket, as publications.
                    let (frame, len) = (&self.shared.raw_pong_frame, self.shared.raw_pong.len());
                    let timeout = self.shared.config.write_timeout;
                    let outcome = within(timeout, write_frame(ws, frame)).await;
                    if let Err(e) = self.written(outcome, 1, len as u64) {
                        return Some(self.write_failed(e));
                    }
                    ws.get_mut().release();
                    return None;
                }
                Message::Text(self.shared.raw_pong.clone()) // shared bytes, no copy per reply
            }
            (Mode::Echo, msg) => return self.echo(ws, msg).await,
            (Mode::Raw, _) => {
                // Raw mode is receive-only: other inbound messages are counted and dropped.
                m.raw_messages_ignored.inc();
                return None;
            }
            (Mode::Json, Message::Text(text)) => {
                let depth = self.shared.config.max_json_depth;
                if codec::json_depth(text.as_str(), depth).is_err() {
                    m.json_too_deep.inc();
                }
                let reply = match codec::decode_command_limited(text.as_str(), depth) {
                    Ok(ClientCommand::Subscribe { id, channel, recover }) => {
                        return self.subscribe_command(ws, id, channel, recover).await;
                    }
                    Ok(ClientCommand::Connect { id, token }) => {
                        return self.connect_command(ws, id, &token).await;
                    }
                    Ok(command) => self.on_command(command).await,
                    Err(e) => e.into_reply(),
                };
                self.count_error(&reply);
                Message::Text(codec::encode(&reply).into())
            }
            (Mode::Json, _) => {
                let reply = ServerMessage::err(
                    None,
                    ErrorBody::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames carry no meaning in tether.v1.json; send JSON text",
                    ),
                );
                self.count_error(&reply);
                Message::Text(codec::encode(&reply).into())
            }
        };
        self.enqueue(ws, reply).await
    }

    /// The conformance echo: the message goes back the way a publication goes to a subscriber
    /// — framed once (compressed when the connection agreed to permessage-deflate and the
    /// message is large enough), written straight to the socket when the connection is ready
    /// for a direct write, else queued for the task's batch writer, which gathers frames into
    /// vectored writes and sends large messages as fragments (docs/interop.md).
    async fn echo(&mut self, ws: &mut Ws, msg: Message) -> Option<Ending> {
        let payload = match msg {
            Message::Text(text) => Payload::Text(text),
            Message::Binary(bytes) => Payload::Binary(bytes),
            _ => return None,
        };
        let cfg = &self.shared.config;
        let min = cfg.compression_min_size.as_u64();
        let compress = Compress::for_message(cfg.compression, payload.len(), min);
        let echo = Arc::new(Published::unsequenced(payload, compress));
        match self.queue.deliver(echo, cfg.direct_delivery) {
            Ok(Delivery::Written(bytes)) => {
                self.shared.metrics.messages_out.inc();
                self.shared.metrics.bytes_out.inc_by(bytes as u64);
                None
            }
            Ok(Delivery::Queued | Delivery::Partial | Delivery::Skipped) => None,
            Err(PushError::Closed) => None,
            Err(PushError::Full) => {
                self.shared.metrics.slow_consumers.inc();
                let reason = "slow consumer: outbound queue full";
                Some(self.close(ws, CloseCode::SLOW_CONSUMER, reason, None, false).await)
            }
        }
    }

    /// Queue a reply. Replies share the outbound queue with publications, so the order the peer
    /// sees is the order things happened.
    async fn enqueue(&mut self, ws: &mut Ws, reply: Message) -> Option<Ending> {
        if ws.get_mut().hold_if_idle() {
            // Nothing is waiting to go out before it: write it now (a ping-pong round trip
            // then costs one pass of the loop, not two).
            return self.write_one(ws, reply).await.err().map(|e| self.write_failed(e));
        }
        match self.queue.push(Outbound::Reply(reply)) {
            Ok(()) => None,
            Err(_) => {
                self.shared.metrics.slow_consumers.inc();
                Some(
                    self.close(
                        ws,
                        CloseCode::SLOW_CONSUMER,
                        "slow consumer: outbound queue full",
                        None,
                        false,
                    )
                    .await,
                )
            }
        }
    }

    fn count_error(&self, reply: &ServerMessage) {
        let code = match reply {
            ServerMessage::Reply { error: Some(e), .. } | ServerMessage::Error { error: e } => {
                e.code
            }
            _ => return,
        };
        self.shared
            .metrics
            .command_errors
            .get_or_create(&crate::metrics::ReasonLabels { reason: code.as_str() })
            .inc();
    }

    async fn on_command(&mut self, command: ClientCommand) -> ServerMessage {
        let id = command.id();
        let result = match command {
            // (`connect` is answered by `connect_command`, which can end the connection.)
            ClientCommand::Ping { .. } | ClientCommand::Connect { .. } => {
                Ok(ReplyResult::default())
            }
            ClientCommand::Subscribe { channel, .. } => self.subscribe(&channel),
            ClientCommand::Unsubscribe { channel, .. } => {
                if self.queue.with_subscriptions(|s| s.remove(&channel)) {
                    self.shared.hub.unsubscribe(&channel, self.id);
                    Ok(ReplyResult::default())
                } else {
                    Err(ErrorBody::new(
                        ErrorCode::NotSubscribed,
                        format!("not subscribed to `{channel}`"),
                    ))
                }
            }
            ClientCommand::Publish { channel, data, .. } => self.publish(&channel, &data).await,
        };
        match result {
            Ok(result) => ServerMessage::ok(id, result),
            Err(error) => ServerMessage::err(Some(id), error),
        }
    }

    fn subscribe(&mut self, channel: &str) -> Result<ReplyResult, ErrorBody> {
        let cfg = &self.shared.config;
        channel::validate(channel, cfg.max_channel_name_len)
            .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
        let (subscribed, held) = self.queue.with_subscriptions(|s| (s.contains(channel), s.len()));
        if subscribed {
            return Err(ErrorBody::new(
                ErrorCode::AlreadySubscribed,
                format!("already subscribed to `{channel}`"),
            ));
        }
        if held >= cfg.max_subscriptions {
            return Err(ErrorBody::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "this connection already holds {} subscriptions (max_subscriptions)",
                    cfg.max_subscriptions
                ),
            ));
        }
        let sub = Subscriber::new(self.queue.clone(), self.mode);
        // Publishers queue from here on until the reply that follows is written: they must
        // not meet the subscription before its watermark exists (a recovery sets it later).
        self.queue.hold();
        // The watermark exists before the hub knows the subscription: a sweep passes over a
        // connection without one, and would not come back for what it passed over.
        self.queue.with_subscriptions(|s| s.insert(Arc::from(channel)));
        if let Some(name) = self.shared.hub.subscribe(channel, self.id, sub) {
            self.queue.with_subscriptions(|s| s.adopt(name));
        }
        Ok(ReplyResult::default())
    }

    /// `subscribe`, with recovery: check access, register in the hub first (live publications
    /// start queueing), then answer with the position and the replay (see `replay`).
    async fn subscribe_command(
        &mut self,
        ws: &mut Ws,
        id: u64,
        channel: String,
        recover: Option<tether_core::protocol::StreamPosition>,
    ) -> Option<Ending> {
        match self.access(&channel, false) {
            Access::Allowed => {}
            Access::Forbidden => {
                let reply = ServerMessage::err(
                    Some(id),
                    ErrorBody::new(
                        ErrorCode::Forbidden,
                        format!(
                            "this connection's token does not allow subscribing to `{channel}`"
                        ),
                    ),
                );
                self.count_error(&reply);
                return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
            }
            Access::TokenRequired => {
                let reason = format!("a token is required for `{channel}`: send `connect` first");
                return Some(self.close(ws, CloseCode::TOKEN_REQUIRED, &reason, None, false).await);
            }
            Access::TokenExpired => return Some(self.token_expired(ws).await),
        }
        if let Err(error) = self.subscribe(&channel) {
            let reply = ServerMessage::err(Some(id), error);
            self.count_error(&reply);
            return self.enqueue(ws, Message::Text(codec::encode(&reply).into())).await;
        }
        self.answer_subscribe(ws, id, &channel, recover.as_ref()).await
    }

    async fn publish(
        &self,
        channel: &str,
        data: &serde_json::value::RawValue,
    ) -> Result<ReplyResult, ErrorBody> {
        let cfg = &self.shared.config;
        channel::validate(channel, cfg.max_channel_name_len)
            .map_err(|e| ErrorBody::new(ErrorCode::BadChannel, e.to_string()))?;
        if channel.starts_with(tether_core::channel::RESERVED_PREFIX)
            || !channel::any_matches(&cfg.client_publish, channel)
        {
            return Err(ErrorBody::new(
                ErrorCode::PublishForbidden,
                format!("clients may not publish to `{channel}`; see the `client_publish` setting"),
            ));
        }
        if self.access(channel, true) != Access::Allowed {
            return Err(ErrorBody::new(
                ErrorCode::Forbidden,
                format!("this connection's token does not allow publishing to `{channel}`"),
            ));
        }
        let receipt = self
            .shared
            .broker
            .publish(channel, data, None)
            .await
            .map_err(|e| ErrorBody::new(ErrorCode::Unavailable, e.to_string()))?;
        self.shared.metrics.publications.inc();
        Ok(ReplyResult {
            offset: Some(receipt.offset),
            delivered: Some(receipt.delivered),
            epoch: Some(receipt.epoch.to_string()),
            ..ReplyResult::default()
        })
    }

    /// The peer sent a close frame; tungstenite queued our reply. Finish the handshake.
    async fn peer_closed(&mut self, ws: &mut Ws, frame: Option<CloseFrame>) -> Ending {
        let (code, reason) = match frame {
            Some(f) => (CloseCode(u16::from(f.code)), f.reason.to_string()),
            None => (CloseCode::NO_STATUS, String::new()),
        };
        // tungstenite writes our close reply itself, from `next()`: nothing may follow it.
        ws.get_mut().hold();
        // Drive the stream until it ends: this flushes our close reply.
        let drained = tokio::time::timeout(self.shared.config.close_timeout, async {
            while ws.next().await.is_some() {}
        })
        .await;
        Ending { code, reason, initiator: Initiator::Client, was_clean: drained.is_ok() }
    }

    /// Map a read error to the close it calls for.
    async fn read_failed(&mut self, ws: &mut Ws, error: WsError) -> Ending {
        match error {
            WsError::Capacity(e) => {
                let reason = format!("message too big: {e}");
                self.close(ws, CloseCode::MESSAGE_TOO_BIG, &reason, None, true).await
            }
            WsError::Utf8(_) => {
                self.close(
                    ws,
                    CloseCode::INVALID_PAYLOAD,
                    "text message is not valid UTF-8",
                    None,
                    true,
                )
                .await
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Ending::network("connection reset without a closing handshake")
            }
            WsError::Protocol(e) => {
                let reason = format!("protocol error: {e}");
                self.close(ws, CloseCode::PROTOCOL_ERROR, &reason, None, true).await
            }
            WsError::Io(e) => Ending::network(format!("transport error: {e}")),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                Ending::network("connection ended without a close frame")
            }
            other => {
                let reason = format!("internal error: {other}");
                self.close(ws, CloseCode::INTERNAL_ERROR, &reason, None, true).await
            }
        }
    }

    fn write_failed(&self, e: WriteFailed) -> Ending {
        match e {
            WriteFailed::TimedOut => {
                self.shared.metrics.slow_consumers.inc();
                Ending {
                    code: CloseCode::SLOW_CONSUMER,
                    reason: format!(
                        "slow consumer: a write blocked for {:?} (write_timeout)",
                        self.shared.config.write_timeout
                    ),
                    initiator: Initiator::Server,
                    was_clean: false,
                }
            }
            WriteFailed::Overflowed => {
                self.shared.metrics.slow_consumers.inc();
                // No close frame: the socket is stuck in the middle of a frame.
                Ending {
                    code: CloseCode::SLOW_CONSUMER,
                    reason: "slow consumer: outbound queue full while a write was blocked".into(),
                    initiator: Initiator::Server,
                    was_clean: false,
                }
            }
            WriteFailed::Transport(e) => Ending::network(format!("write failed: {e}")),
        }
    }

    /// Server-initiated close: advice (JSON mode), close frame, then wait for the peer's reply —
    /// all within one `close_timeout`. After a read error the WebSocket stream is finished, so
    /// instead of waiting for a close frame we half-close and drain the raw socket until the peer
    /// closes: dropping it with unread data (say, the rest of an oversized message) would send a
    /// TCP reset that can overtake our close frame.
    async fn close(
        &mut self,
        ws: &mut Ws,
        code: CloseCode,
        reason: &str,
        retry_after: Option<Duration>,
        stream_failed: bool,
    ) -> Ending {
        ws.get_mut().hold(); // for good: nothing may follow the close frame
                             // A close reason is at most 123 bytes on the wire (RFC 6455 §5.5).
        let mut wire_reason = reason.to_owned();
        while wire_reason.len() > 123 {
            wire_reason.pop();
        }
        let deadline = Instant::now() + self.shared.config.close_timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            if self.mode == Mode::Json {
                let advice = ServerMessage::Disconnect(Disconnect {
                    code,
                    reason: reason.to_owned(),
                    reconnect: code.advice() != RetryAdvice::Stop,
                    retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
                });
                ws.feed(Message::Text(codec::encode(&advice).into())).await?;
            }
            let frame = CloseFrame { code: WireCode::from(code.0), reason: wire_reason.into() };
            ws.send(Message::Close(Some(frame))).await
        })
        .await;
        let mut was_clean = false;
        if matches!(sent, Ok(Ok(()))) && stream_failed {
            // Lingering close: send FIN after the close frame, then discard input until the
            // peer closes its side too.
            let _ = tokio::time::timeout_at(deadline, async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let io = ws.get_mut();
                let _ = io.shutdown().await;
                let mut scratch = [0u8; 4096];
                while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
            })
            .await;
        } else if matches!(sent, Ok(Ok(()))) {
            // Wait for the peer's close frame; anything else it still sends is discarded.
            let _ = tokio::time::timeout_at(deadline, async {
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Close(_)) => was_clean = true,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
        Ending { code, reason: reason.to_owned(), initiator: Initiator::Server, was_clean }
    }

    /// Write frames (large ones as fragments) and flush once, within `write_timeout`; counts
    /// the data messages among them.
    async fn write_frames(&self, ws: &mut Ws, frames: Vec<Message>) -> Result<(), WriteFailed> {
        let data = frames.iter().filter(|f| f.is_text() || f.is_binary());
        let (n, bytes) = data.fold((0u64, 0u64), |(n, b), f| (n + 1, b + f.len() as u64));
        ws.get_mut().hold();
        let write = async {
            for frame in frames {
                feed(ws, frame).await?;
            }
            ws.flush().await
        };
        self.written(within(self.shared.config.write_timeout, write).await, n, bytes)?;
        ws.get_mut().release();
        Ok(())
    }

    /// Write one message (a reply) and flush, within `write_timeout`. The caller holds the
    /// write side (`hold_if_idle`).
    async fn write_one(&self, ws: &mut Ws, msg: Message) -> Result<(), WriteFailed> {
        let bytes = msg.len() as u64;
        let write = async {
            feed(ws, msg).await?;
            ws.flush().await
        };
        self.written(within(self.shared.config.write_timeout, write).await, 1, bytes)?;
        ws.get_mut().release();
        Ok(())
    }

    /// The outcome of a timed write; counts the data messages that went out.
    fn written(
        &self,
        outcome: Result<Result<(), WsError>, ()>,
        messages: u64,
        bytes: u64,
    ) -> Result<(), WriteFailed> {
        match outcome {
            Err(()) => Err(WriteFailed::TimedOut),
            Ok(Err(e)) => Err(WriteFailed::Transport(e)),
            Ok(Ok(())) => {
                self.shared.metrics.messages_out.inc_by(messages);
                self.shared.metrics.bytes_out.inc_by(bytes);
                Ok(())
            }
        }
    }

    async fn flush(&self, ws: &mut Ws) -> Result<(), WriteFailed> {
        ws.get_mut().hold();
        match within(self.shared.config.write_timeout, ws.flush()).await {
            Err(_) => Err(WriteFailed::TimedOut),
            Ok(r) => r.map_err(WriteFailed::Transport),
        }?;
        ws.get_mut().release();
        Ok(())
    }

    /// Write one queued message and whatever else is already queued (up to a batch), then flush
    /// once. Publications framed at publish time (`Published::wire`) skip tungstenite: the shared
    /// bytes are gathered into vectored writes, so a delivery copies nothing and touches no
    /// per-connection codec. Replies and large publications go through tungstenite, in order.
    async fn write_batch(
        &mut self,
        ws: &mut Ws,
        first: Outbound,
        queue: &OutboundQueue,
    ) -> Result<bool, WriteFailed> {
        let (mut n, mut bytes, mut gap) = (0u64, 0u64, false);
        let write_timeout = self.shared.config.write_timeout;
        let write = async {
            let mut framed = Framed::new(queue.window());
            // Something went to tungstenite's buffer and is not flushed yet.
            let mut fed = false;
            let mut next = Some(first);
            while let Some(item) = next.take() {
                let frame = match item {
                    Outbound::Reply(m) => Some(m),
                    Outbound::Admitted { publication, written } => {
                        n += 1;
                        bytes += publication.payload.len() as u64;
                        if framed.is_full() {
                            framed.write(ws, &mut fed).await?;
                        }
                        framed.push(publication, written);
                        None
                    }
                    Outbound::Publication(p) => match queue.admit(&p) {
                        Admission::Send if p.wire_for(queue.window()).is_some() => {
                            n += 1;
                            bytes += p.payload.len() as u64;
                            if framed.is_full() {
                                framed.write(ws, &mut fed).await?;
                            }
                            framed.push(p, 0);
                            None
                        }
                        Admission::Send => Some(p.payload.message()),
                        Admission::Skip => None,
                        Admission::Gap => {
                            gap = true;
                            break;
                        }
                    },
                };
                if let Some(frame) = frame {
                    framed.write(ws, &mut fed).await?; // what was gathered goes first
                    n += 1;
                    bytes += frame.len() as u64;
                    feed(ws, frame).await?;
                    fed = true;
                }
                if n < WRITE_BATCH as u64 {
                    next = queue.pop();
                }
            }
            framed.write(ws, &mut fed).await?;
            if fed {
                ws.flush().await?;
            }
            Ok(())
        };
        // A consumer that stopped reading blocks this write; what piles up meanwhile must not
        // wait for `write_timeout` to be noticed.
        let outcome = tokio::select! {
            biased;
            outcome = within(write_timeout, write) => outcome,
            () = queue.overflow() => return Err(WriteFailed::Overflowed),
        };
        self.written(outcome, n, bytes)?;
        if !gap {
            // Everything popped is out (or skipped): publishers may write directly again.
            ws.get_mut().release();
        }
        Ok(gap)
    }
}

/// Write complete frame bytes straight to the socket, past tungstenite (whose buffer must be
/// empty: see `Framed::write`).
async fn write_frame(ws: &mut Ws, mut rest: &[u8]) -> Result<(), WsError> {
    let mut transport = Pin::new(ws.get_mut());
    while !rest.is_empty() {
        let written = std::future::poll_fn(|cx| transport.as_mut().poll_write(cx, rest)).await?;
        if written == 0 {
            return Err(WsError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        rest = &rest[written..];
    }
    Ok(())
}

/// While it lives, publishers may write to the connection's socket (see `mailbox`).
struct DirectWindow(Option<Arc<OutboundQueue>>);

impl DirectWindow {
    fn open(queue: &Arc<OutboundQueue>, socket: Option<std::os::fd::RawFd>) -> Self {
        let Some(fd) = socket else { return DirectWindow(None) };
        queue.set_socket(Some(fd));
        DirectWindow(Some(queue.clone()))
    }
}

impl Drop for DirectWindow {
    fn drop(&mut self) {
        if let Some(queue) = &self.0 {
            queue.set_socket(None);
        }
    }
}

/// Pre-framed publications gathered for one vectored write, each with how many bytes of its
/// frame already went out (a publisher's direct write may have sent a first part), and the
/// connection's permessage-deflate window (0: it takes no compressed frames).
struct Framed(SmallVec<[(Arc<Published>, usize); FRAMED_BATCH]>, u8);

/// Publications per vectored write (`writev` takes up to 1024 slices; a few dozen frames already
/// fill a socket buffer's worth of small messages).
const FRAMED_BATCH: usize = 16;

impl Framed {
    fn new(window: u8) -> Self {
        Framed(SmallVec::new(), window)
    }

    fn is_full(&self) -> bool {
        self.0.len() == FRAMED_BATCH
    }

    fn push(&mut self, p: Arc<Published>, written: usize) {
        self.0.push((p, written));
    }

    /// What is left to write of a gathered publication (the compressed frame for a connection
    /// that negotiated permessage-deflate).
    fn rest(item: &(Arc<Published>, usize), window: u8) -> &[u8] {
        let wire = item.0.wire_for(window).unwrap_or_default();
        wire.get(item.1..).unwrap_or_default()
    }

    /// Write everything gathered, directly to the socket. Frames must never interleave, so
    /// whatever went to tungstenite's buffer before (`fed`) is flushed first; otherwise that
    /// buffer is empty here: every write path flushes, and so does reading a ping (the one
    /// frame tungstenite queues by itself).
    async fn write(&mut self, ws: &mut Ws, fed: &mut bool) -> Result<(), WsError> {
        if self.0.is_empty() {
            return Ok(());
        }
        if std::mem::take(fed) {
            ws.flush().await?;
        }
        if let [one] = &self.0[..] {
            // One frame (the common case at low rates): a plain send, cheaper than a writev.
            write_frame(ws, Self::rest(one, self.1)).await?;
            self.0.clear();
            return Ok(());
        }
        let mut transport = Pin::new(ws.get_mut());
        let mut slices: SmallVec<[IoSlice<'_>; FRAMED_BATCH]> =
            self.0.iter().map(|item| IoSlice::new(Self::rest(item, self.1))).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let written =
                std::future::poll_fn(|cx| transport.as_mut().poll_write_vectored(cx, rest)).await?;
            if written == 0 {
                return Err(WsError::Io(std::io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut rest, written);
        }
        drop(slices);
        self.0.clear();
        Ok(())
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn a_parked_connection_fits_tokios_384_byte_task_cell() {
        // tokio's task cell is 128-byte aligned: header 32 + scheduler/id 16 + our future +
        // the task tracker's token 8 + trailer 48 must stay within 384: measured, a future of
        // 272 bytes fits, 280 does not (decision 0007).
        let parked = std::mem::size_of::<Parked>();
        let task = std::mem::size_of::<ConnectionTask>();
        assert!(task <= 264, "ConnectionTask is {task} bytes (Parked {parked})");
    }
}
