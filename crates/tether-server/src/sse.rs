//! `GET /sse?channel=NAME` (repeatable): channels' publications as Server-Sent Events, for any
//! `EventSource` — no library, no WebSocket (issue 21, point 2).
//!
//! The stream is a subscriber like any other: a mailbox in the hub (`Mode::Json`, no socket, so
//! every publication is queued and admitted by the same rule as a WebSocket's), history and
//! recovery through the broker, the same admission (origin, per-address limits, token, a
//! slot). What differs is the framing:
//! - first `event: subscribed` with where each channel stands (and whether it was recovered),
//!   then one event per publication: `id:` is every channel's position, `EPOCH:OFFSET` in the
//!   order of the `?channel=`s (one channel: exactly `EPOCH:OFFSET`), and `data:` the
//!   `tether.v1.json` publication. The browser sends the last `id` back as `Last-Event-ID`
//!   when it reconnects by itself, and the server replays what came after it;
//! - `event: gap` when that cannot be done (`{"channel", "reason"}`: refetch your state);
//! - a comment (`: ping`) every `ping_interval`, which keeps proxies from cutting an idle
//!   stream and lets a reader's watchdog see the server alive. The stream never hears back
//!   from its reader, so a reader that vanishes without a FIN is found by TCP: the socket gets
//!   `TCP_USER_TIMEOUT` = `ping_interval + pong_timeout` (the WebSocket heartbeat's bound),
//!   and the unacknowledged pings make the kernel give it up (when `tether serve`'s own
//!   listener serves it; a host application's server gives no socket to set it on);
//! - `event: disconnect` (`{code, reason, reconnect, retry_after_ms}`) before the server ends
//!   the stream: shutdown (1012, with `retry:` set between the hint and twice it), a slow reader
//!   (1013), a gap in the live feed (1012), an expired token (4002).

use crate::admission::{admit, come_back_later, event_stream, jittered, refused, Admitted, Denied};
use crate::handshake::{channels_from_query, Refusal};
use crate::hub::{Outbound, OutboundQueue, Subscriber};
use crate::mailbox::Admission;
use crate::node::Node;
use crate::publication::{ConnId, Mode};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tether_core::close_code::CloseCode;
use tether_core::protocol::StreamPosition;
use tokio::sync::mpsc;

/// Chunks of the response waiting for hyper to write them (the rest waits in the mailbox,
/// bounded by `outbound_queue` and `outbound_queue_bytes`).
const BODY_CHUNKS: usize = 8;

pub(crate) async fn sse_handler(State(node): State<Arc<Node>>, req: Request) -> Response {
    let tracked = node.tracker.token();
    let refuse = |r: Refusal| refused(&node, r);
    let cfg = &node.config;
    let query = req.uri().query();
    let channels = match channels_from_query(query, cfg.max_channel_name_len, cfg.max_subscriptions)
    {
        Ok(c) if c.is_empty() => {
            let why = "name the channels to stream: /sse?channel=NAME (repeatable)";
            return refuse(Refusal::new("bad_request", StatusCode::BAD_REQUEST, why));
        }
        Ok(c) => c,
        Err(e) => return refuse(Refusal::new("bad_request", StatusCode::BAD_REQUEST, e)),
    };
    let text = |name| req.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Err(e) = crate::origin::check(text(header::ORIGIN), text(header::HOST), &node.origins) {
        return refuse(Refusal::new("origin", StatusCode::FORBIDDEN, e));
    }
    // Allowed above: a page of another origin may read the stream (a plain `EventSource`
    // sends no credentials; the token, if any, is in the URL).
    let origin = text(header::ORIGIN).and_then(|o| HeaderValue::from_str(o).ok());
    let Admitted { peer, grant, slot } = match admit(&node, &req, &channels) {
        Ok(a) => a,
        Err(Denied::Refused(r)) if matches!(r.status.as_u16(), 429 | 503) => {
            return come_back_later(&node, r, origin)
        }
        Err(Denied::Refused(r)) => return refuse(r),
        Err(Denied::OverBudget) => {
            let busy = Refusal::new(
                "max_handshake_rate",
                StatusCode::SERVICE_UNAVAILABLE,
                "server busy (max_handshake_rate); retry later",
            );
            return come_back_later(&node, busy.with_header(header::RETRY_AFTER, "1"), origin);
        }
    };
    slot.forget(); // given back by `Drop for Stream`
                   // Established: a stream is not an unfinished handshake (see `pending::Held`).
    if let Some(place) = req.extensions().get::<crate::pending::Held>() {
        place.settle();
    }
    // A stream never hears back from its reader: one that vanishes without a FIN leaves the
    // heartbeat comments unacknowledged, and the kernel gives the connection up after the
    // WebSocket heartbeat's bound.
    if let Some(fd) = req.extensions().get::<crate::sys::SocketFd>() {
        let bound = cfg.ping_interval + cfg.pong_timeout;
        if let Err(e) = crate::sys::set_user_timeout(*fd, bound) {
            tracing::debug!(error = %e, "no TCP_USER_TIMEOUT on an SSE stream");
        }
    }
    let asked = last_event_id(text(header::HeaderName::from_static("last-event-id")), query);
    let since = asked.map(|ids| parse_positions(&ids, channels.len()).ok_or(ids));
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_CHUNKS);
    let stream = Stream::open(node.clone(), peer, channels, grant.as_deref());
    node.tracker.spawn(async move {
        stream.run(tx, since).await;
        drop(tracked);
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    event_stream(Body::from_stream(body), origin)
}

/// The position the browser asks to continue from: `Last-Event-ID`, or `?last_event_id=` for
/// a client that cannot set headers on its first request.
fn last_event_id(header: Option<&str>, query: Option<&str>) -> Option<String> {
    header.map(str::to_owned).or_else(|| {
        form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(k, _)| k == "last_event_id")
            .map(|(_, v)| v.into_owned())
    })
}

/// `EPOCH:OFFSET` per channel, space-separated, in the `?channel=`s' order; `None` when it
/// does not fit (then nothing is recovered and the stream starts from now).
fn parse_positions(ids: &str, channels: usize) -> Option<Vec<StreamPosition>> {
    let out: Option<Vec<StreamPosition>> = ids
        .split(' ')
        .map(|id| {
            let (epoch, offset) = id.rsplit_once(':')?;
            Some(StreamPosition { epoch: epoch.to_owned(), offset: offset.parse().ok()? })
        })
        .collect();
    out.filter(|p| p.len() == channels)
}

/// One SSE stream: its subscriptions live in the hub while it does.
struct Stream {
    node: Arc<Node>,
    id: ConnId,
    queue: Arc<OutboundQueue>,
    lot_key: usize,
    peer: Option<SocketAddr>,
    channels: Vec<String>,
    /// Where each channel stands for this stream (what the next `id:` says).
    positions: Vec<(Arc<str>, u64)>,
    /// When the token ends the stream (`exp` plus the leeway).
    expires: Option<tokio::time::Instant>,
    /// The token's user: the API's `disconnect` reaches the stream (see `hub::users`).
    user: Option<String>,
}

impl Stream {
    fn open(
        node: Arc<Node>,
        peer: Option<SocketAddr>,
        channels: Vec<String>,
        grant: Option<&crate::auth::Grant>,
    ) -> Stream {
        let id = node.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let cfg = &node.config;
        let queue =
            Arc::new(OutboundQueue::new(cfg.outbound_queue, cfg.outbound_queue_bytes.as_u64()));
        node.metrics.connections_open.inc(); // decremented by `Drop for Stream`
        let labels = crate::metrics::ModeLabels { mode: "sse" };
        node.metrics.connections_accepted.get_or_create(&labels).inc();
        // In the lot so that shutdown signals it; it never parks.
        let lot_key = node.parking.register(queue.clone());
        let expires = grant.map(|g| tokio::time::Instant::now() + g.remaining());
        let positions = channels.iter().map(|_| (Arc::from(""), 0)).collect();
        let user = grant.and_then(|g| g.sub.clone());
        if let Some(user) = &user {
            node.hub.users.add(user, id, queue.clone());
        }
        Stream { node, id, queue, lot_key, peer, channels, positions, expires, user }
    }

    /// Subscribe, recover, then stream until the reader goes or the server ends it.
    /// `since`: the positions the reader asked to continue from (`Err`: an id that names
    /// none, which is reported as a gap on every channel).
    async fn run(
        mut self,
        tx: mpsc::Sender<Bytes>,
        since: Option<Result<Vec<StreamPosition>, String>>,
    ) {
        let (code, reason) = match self.stream(&tx, since).await {
            Ok(()) => (CloseCode::ABNORMAL, "the reader went away".to_owned()),
            Err(Ended::Told(code, reason)) => (code, reason),
            Err(Ended::Gone) => (CloseCode::ABNORMAL, "the reader went away".to_owned()),
        };
        let initiator = if code == CloseCode::ABNORMAL { "network" } else { "server" };
        let label = crate::metrics::close_code_label(code);
        let closes = crate::metrics::CloseLabels { code: label.clone(), initiator };
        self.node.metrics.connections_closed.get_or_create(&closes).inc();
        self.node.stats.record_close(label.into_owned(), initiator);
        tracing::info!(target: "tether::close", conn = self.id, mode = "sse", code = code.0, reason, initiator, "connection closed");
    }

    async fn stream(
        &mut self,
        tx: &mpsc::Sender<Bytes>,
        since: Option<Result<Vec<StreamPosition>, String>>,
    ) -> Result<(), Ended> {
        let node = self.node.clone();
        let since = match since {
            Some(Err(ids)) => {
                let why = format!("Last-Event-ID `{ids}` does not give a position (EPOCH:OFFSET) for each of the {} channels: refetch your state", self.channels.len());
                for channel in &self.channels {
                    let gap = serde_json::json!({"channel": channel, "reason": why});
                    self.send(tx, format!("event: gap\ndata: {gap}\n\n")).await?;
                }
                None
            }
            Some(Ok(positions)) => Some(positions),
            None => None,
        };
        // Joined first, so that nothing published from here on falls between history and live.
        for channel in &self.channels {
            self.queue.with_subscriptions(|s| s.insert(Arc::from(channel.as_str())));
            let sub = Subscriber::new(self.queue.clone(), Mode::Json);
            if let Some(name) = node.hub.subscribe(channel, self.id, sub) {
                self.queue.with_subscriptions(|s| s.adopt(name));
            }
        }
        let room = self.queue.room_bytes() / self.channels.len().max(1) as u64;
        let mut told = serde_json::Map::new();
        let mut replays = Vec::new();
        for (i, channel) in self.channels.clone().iter().enumerate() {
            let recover = since.as_ref().map(|s| &s[i]);
            let history = match node.broker.history(channel, recover, room).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(channel, error = %e, "SSE stream: broker unavailable");
                    let hint = Duration::from_secs(1);
                    return Err(self
                        .disconnect(
                            tx,
                            CloseCode::TRY_AGAIN_LATER,
                            "broker unavailable",
                            Some(hint),
                        )
                        .await);
                }
            };
            let epoch: Arc<str> = Arc::from(history.position.epoch.as_str());
            let top = history.position.offset;
            self.queue.with_subscriptions(|s| {
                if let Some(w) = s.get_mut(channel) {
                    (w.epoch, w.offset) = (Some(epoch.clone()), top);
                }
            });
            let mut about = serde_json::json!({"epoch": &*epoch, "offset": top});
            if let Some(recovered) = history.recovered {
                about["recovered"] = recovered.into();
            }
            told.insert(channel.clone(), about);
            if history.recovered == Some(false) {
                let why = "history no longer holds every publication after the last event (or the stream began anew): refetch your state";
                let gap = serde_json::json!({"channel": channel, "reason": why});
                self.send(tx, format!("event: gap\ndata: {gap}\n\n")).await?;
            }
            // Where the stream stood before the replay: each replayed event moves it on.
            self.positions[i] = match recover {
                Some(r) if history.recovered == Some(true) => {
                    (Arc::from(r.epoch.as_str()), r.offset)
                }
                _ => (epoch.clone(), top),
            };
            replays.push((i, epoch, history.publications));
        }
        // The browser's reconnect delay after a network error: 1-2 s, different per stream, so
        // that a node's readers do not all come back at the same instant (an `EventSource`
        // has no backoff of its own).
        let retry = jittered(Duration::from_secs(1)).as_millis();
        let hello = serde_json::Value::Object(told);
        let first =
            format!("retry: {retry}\nevent: subscribed\nid: {}\ndata: {hello}\n\n", self.ids());
        self.send(tx, first).await?;
        for (i, epoch, publications) in replays {
            for (offset, data) in publications {
                let text = crate::publication::render(
                    Mode::Json,
                    &self.channels[i],
                    &epoch,
                    offset,
                    &data,
                );
                self.positions[i] = (epoch.clone(), offset);
                let event = self.event(&text);
                self.send(tx, event).await?;
            }
        }
        self.live(tx).await
    }

    /// Live publications, heartbeats, and the server's reasons to end.
    async fn live(&mut self, tx: &mpsc::Sender<Bytes>) -> Result<(), Ended> {
        let node = self.node.clone();
        let queue = self.queue.clone();
        let mut ping = tokio::time::interval(node.config.ping_interval);
        ping.tick().await;
        let expires = self.expires;
        let expiry = async move {
            match expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            if node.stopping() {
                let close = crate::session::Close::shutdown(&node.config);
                return Err(self
                    .disconnect(tx, close.code, &close.reason, close.retry_after)
                    .await);
            }
            // The API's orders for this stream's user: `disconnect` ends it. (Its channels are
            // its URL's: subscribe and unsubscribe orders do not apply to a stream.)
            if queue.take_ordered() {
                let orders = self.user.as_deref().map(|u| node.hub.users.take(u, self.id));
                for order in orders.into_iter().flatten() {
                    if let crate::control::Act::Disconnect { code, reason } = &order.act {
                        return Err(self.disconnect(tx, CloseCode(*code), reason, None).await);
                    }
                }
            }
            if queue.overflowed() {
                node.metrics.slow_consumers.inc();
                let why = "slow consumer: outbound queue full";
                return Err(self.disconnect(tx, CloseCode::SLOW_CONSUMER, why, None).await);
            }
            tokio::select! {
                item = queue.next() => {
                    let Some(item) = item else { continue };
                    let publication = match item {
                        Outbound::Publication(p) => match queue.admit(&p) {
                            Admission::Send => p,
                            Admission::Skip => continue,
                            Admission::Gap => {
                                let hint = Some(node.config.restart_retry_hint);
                                let why = "gap in the live feed: reconnect to recover";
                                return Err(self.disconnect(tx, CloseCode::SERVICE_RESTART, why, hint).await);
                            }
                        },
                        Outbound::Admitted { publication, .. } => publication,
                        Outbound::Reply(_) => continue,
                    };
                    if let Some(i) = self.channels.iter().position(|c| **c == *publication.channel) {
                        self.positions[i] = (publication.epoch.clone(), publication.offset);
                    }
                    let Ok(text) = std::str::from_utf8(publication.payload.as_bytes()) else { continue };
                    let event = self.event(text);
                    self.send(tx, event).await?;
                    node.metrics.messages_out.inc();
                }
                _ = ping.tick() => self.send(tx, ": ping\n\n".into()).await?,
                () = &mut expiry => {
                    let why = "token expired: fetch a fresh token and reconnect";
                    return Err(self.disconnect(tx, CloseCode::TOKEN_EXPIRED, why, None).await);
                }
                () = tx.closed() => return Err(Ended::Gone),
            }
        }
    }

    /// Every channel's position, as the `id:` line carries it.
    fn ids(&self) -> String {
        let ids: Vec<String> = self.positions.iter().map(|(e, o)| format!("{e}:{o}")).collect();
        ids.join(" ")
    }

    /// One publication event. JSON may hold raw line breaks between its tokens: each line
    /// becomes a `data:` line (the browser joins them with `\n`).
    fn event(&self, json: &str) -> String {
        let mut out = format!("id: {}\n", self.ids());
        // A lone CR ends an SSE line too: outside strings it is JSON whitespace, so a space
        // does as well (inside strings JSON has no raw CR or LF).
        let json: std::borrow::Cow<str> =
            if json.contains('\r') { json.replace('\r', " ").into() } else { json.into() };
        for line in json.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }

    /// Hand a chunk to hyper; a reader that takes nothing for `write_timeout` is gone.
    async fn send(&self, tx: &mpsc::Sender<Bytes>, chunk: String) -> Result<(), Ended> {
        let timeout = self.node.config.write_timeout;
        match tokio::time::timeout(timeout, tx.send(Bytes::from(chunk))).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Ended::Gone),
        }
    }

    /// Tell the reader why the stream ends (and when to come back), then end it.
    async fn disconnect(
        &self,
        tx: &mpsc::Sender<Bytes>,
        code: CloseCode,
        reason: &str,
        retry_after: Option<Duration>,
    ) -> Ended {
        let reconnect = code.advice() != tether_core::close_code::RetryAdvice::Stop;
        let mut advice =
            serde_json::json!({"code": code.0, "reason": reason, "reconnect": reconnect});
        let mut chunk = String::new();
        if let Some(hint) = retry_after {
            advice["retry_after_ms"] = (hint.as_millis() as u64).into();
            chunk.push_str(&format!("retry: {}\n", jittered(hint).as_millis()));
        }
        chunk.push_str(&format!("event: disconnect\ndata: {advice}\n\n"));
        let _ = self.send(tx, chunk).await;
        Ended::Told(code, reason.to_owned())
    }
}

/// Why a stream ended.
enum Ended {
    /// The reader went away, or stopped reading.
    Gone,
    /// The server ended it, after telling the reader this.
    Told(CloseCode, String),
}

impl Drop for Stream {
    fn drop(&mut self) {
        let missed = self.queue.close();
        self.node.metrics.deliveries_dropped.inc_by(missed);
        self.node.parking.unregister(self.lot_key);
        if let Some(user) = &self.user {
            self.node.hub.users.remove(user, self.id);
        }
        let channels: Vec<_> = self.queue.with_subscriptions(|s| s.take_channels().collect());
        for channel in channels {
            self.node.hub.unsubscribe(&channel, self.id);
        }
        self.node.metrics.connections_open.dec();
        self.node.connection_slots.add_permits(1);
        if let Some(peer) = self.peer {
            self.node.per_ip.release(peer.ip(), self.node.now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_carry_one_position_per_channel() {
        let p = parse_positions("3f9a:41 :0", 2).unwrap();
        assert_eq!((p[0].epoch.as_str(), p[0].offset), ("3f9a", 41));
        assert_eq!((p[1].epoch.as_str(), p[1].offset), ("", 0));
        assert!(parse_positions("3f9a:41", 2).is_none(), "one per channel");
        assert!(parse_positions("3f9a:x", 1).is_none());
        assert!(parse_positions("nothing", 1).is_none());
        let q = Some("channel=a&last_event_id=e%3A5");
        assert_eq!(last_event_id(None, q).as_deref(), Some("e:5"));
        assert_eq!(last_event_id(Some("h:1"), q).as_deref(), Some("h:1"));
    }
}
