//! One WebSocket connection, from the upgraded socket to its logged end.
//!
//! A single task per connection owns the socket. While active it selects over: the heartbeat
//! timer, inbound frames, and its mailbox (the bounded outbound queue the hub fills, which also
//! carries the slow-consumer flag and signals from the gateway: shutdown, "consider
//! parking"). Protocol decisions come from the session (`crate::session`, over `tether-core`'s
//! codec, heartbeat and close codes); this module moves frames and enforces time limits.
//!
//! A connection with nothing in flight for `park_after` **parks**: the WebSocket state, its
//! buffers, the timer and the select's futures are dropped (they live in one boxed future that
//! exists only while active), its socket leaves tokio's reactor for the parking lot's epoll set,
//! and the task waits on its mailbox alone; its next heartbeat is kept by the lot's shared
//! timer. Anything — a byte from the peer, a publication, a due heartbeat, shutdown — makes it
//! active again. This is what makes an idle connection cost well under a kilobyte (decision
//! 0007, docs/performance.md).
//!
//! What the peer may say and what the server answers is decided by the sans-I/O `session`
//! (commands, subscriptions with recovery, access, token expiry, heartbeat decisions); this
//! module carries its decisions out over a WebSocket. Every way a connection can end produces
//! one [`Ending`] — code, reason, initiator, wasClean — which is logged once and counted once.
//!
//! The files, by concern:
//! - this one — the [`Connection`] (what every phase shares), its opening and its logged end;
//! - `task` — the task and the park/wake state machine ([`ConnectionTask`], `Parked`);
//! - `active` — an active phase: the select loop over socket, mailbox and timer;
//! - `actions` — the session's decisions carried out: replies, subscribe, publish, echo;
//! - `replay` — writing a subscribe's reply and recovery replay, chunk by chunk;
//! - `orders` — subscriptions the server makes (the token's, at `connect`) and the API's orders
//!   to a user's connections;
//! - `close` — every way it ends: the peer's close, read and write failures, our close;
//! - `output` — every write of the task, and the window for publishers' direct writes.

use crate::auth::Grant;
use crate::gate::Gate;
use crate::hub::{
    Compress, ConnId, Delivery, Mode, Outbound, OutboundQueue, Payload, Published, PushError,
    Subscriber,
};
use crate::mailbox::{Admission, DirectWindow};
use crate::node::Node;
use crate::session::{Action, Answer, Close, Ending, Held, Inbound, Rules, Session, Tick};
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
use tether_core::close_code::{CloseCode, Initiator};
use tether_core::codec;
use tether_core::protocol::ServerMessage;
use tokio::io::AsyncWrite;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

mod actions;
mod active;
mod close;
mod orders;
mod output;
mod replay;
mod streaming;
mod task;
mod wire;

use output::{feed, within, write_frame};
pub(crate) use streaming::{parse_event_id, Format, Opening, Registered, Streaming, BODY_CHUNKS};
pub(crate) use task::ConnectionTask;
#[cfg(test)]
use task::Parked;
use wire::Wire;

pub(crate) type Ws = WebSocketStream<Gate>;

/// How an active phase ended.
enum Phase {
    Ended(Ending),
    /// Nothing in flight for a while: park until `wake_at` (the heartbeat) or anything else.
    Idle {
        transport: Transport,
        wake_at: Instant,
        /// Parked between the messages of a peer that talks often: the socket stays in tokio's
        /// reactor (see `ConnectionTask::poll`).
        chatty: bool,
    },
}

/// Why a write did not complete.
enum WriteFailed {
    TimedOut,
    /// The outbound queue overflowed while a write was blocked.
    Overflowed,
    Transport(WsError),
    /// A stream's reader went away (the response body was dropped).
    Gone,
}

pub(crate) struct Connection {
    pub id: ConnId,
    shared: Arc<Node>,
    /// The mailbox: outbound queue, subscriptions, overflow flag, waker, parked deadline.
    queue: Arc<OutboundQueue>,
    /// This connection's place in the parking lot.
    lot_key: usize,
    peer: Option<SocketAddr>,
    /// When it opened, in the parking lot's ticks (ms).
    opened: u64,
    /// The protocol: heartbeat, rate limit, token, commands.
    session: Session,
}

/// What the session decides with, from the node.
fn rules(node: &Node) -> Rules<'_> {
    Rules { config: &node.config, verifier: node.auth.as_ref(), metrics: &node.metrics }
}

/// The session sees the subscriptions where publishers read them: in the mailbox.
impl Held for OutboundQueue {
    fn holds(&self, channel: &str) -> bool {
        self.with_subscriptions(|s| s.contains(channel))
    }

    fn count(&self) -> usize {
        self.with_subscriptions(|s| s.len())
    }
}

impl Drop for Connection {
    /// Leave the hub whatever way the task ends — normally, by a panic, or cancelled — so that no
    /// subscriber entry outlives its connection.
    fn drop(&mut self) {
        let missed = self.queue.close();
        self.shared.metrics.deliveries_dropped.inc_by(missed);
        if self.session.is_quiet() {
            self.shared.end_idle_probe();
        }
        self.shared.parking.unregister(self.lot_key);
        if let Some(user) = self.user() {
            self.shared.hub.users.remove(user, self.id);
        }
        // Taken out first: the hub's lock is never taken while holding the mailbox's.
        let channels: Vec<_> = self.queue.with_subscriptions(|s| s.take_channels().collect());
        for channel in channels {
            self.shared.hub.unsubscribe(&channel, self.id);
            self.shared.left(&channel, self.id);
        }
        self.shared.metrics.connections_open.dec();
        // The slot taken (and forgotten) at the handshake: cheaper to hold than a permit.
        self.shared.connection_slots.add_permits(1);
        if let Some(peer) = self.peer {
            self.shared.per_ip.release(peer.ip(), self.shared.now_ms());
        }
    }
}

impl Connection {
    /// A connection for a handshake being answered: registered and subscribed to its
    /// `?channel=`s (publications queue in its mailbox until its socket is there).
    /// `window`: the permessage-deflate window agreed for what
    /// it is sent, 0 without it.
    fn open(
        shared: Arc<Node>,
        peer: Option<SocketAddr>,
        mode: Mode,
        transport: &'static str,
        channels: Vec<String>,
        grant: Option<Arc<Grant>>,
        window: u8,
    ) -> Connection {
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
            .get_or_create(&crate::metrics::ModeLabels { mode: transport })
            .inc();
        tracing::debug!(conn = id, peer = ?peer, mode = mode.as_str(), transport, "connection open");
        let now = Instant::now();
        let opened = shared.parking.ticks(now);
        let session = Session::new(&shared.config, mode, grant, now.into_std(), opened);
        let mut conn = Connection { id, shared, queue, lot_key, peer, opened, session };
        for channel in channels {
            // Validated at the handshake; a duplicate `?channel=` is simply ignored here.
            if crate::session::subscribable(&conn.shared.config, &*conn.queue, &channel).is_ok() {
                conn.join(&channel);
            }
        }
        // After the `?channel=`s, which the handshake counted against `max_subscriptions`:
        // a server-side subscription that no longer fits is the one skipped (and logged).
        conn.adopt_grant();
        conn
    }

    /// The connection has ended (its socket is closed or aborted): leave the hub, count and
    /// log the ending (`transport`: which wire it had).
    fn finish(self, ending: Ending, transport: &'static str) {
        let (shared, id, peer, mode) =
            (self.shared.clone(), self.id, self.peer, self.session.mode());
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
            transport,
            duration_ms,
            code = ending.code.0,
            reason = %ending.reason,
            was_clean = ending.was_clean,
            initiator = ending.initiator.as_str(),
            "connection closed"
        );
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
