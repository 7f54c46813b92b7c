//! A session over an HTTP response that streams, for clients whose network lets no WebSocket
//! through (issue 21): HTTP-streaming (`POST /stream`, newline-delimited JSON) and SSE
//! (`GET /stream/sse`, `text/event-stream`). The client's commands arrive in an inbox (see
//! `hub::Sessions`): it `POST`s them to any node, which hands them to this one. Everything a
//! WebSocket session does happens here through the same code — the session's decisions carried
//! out by `actions` and `orders` over the [`Streaming`] wire — so commands, recovery, auth,
//! presence, the API's orders and every close behave alike.
//!
//! What differs is the wire. Every message goes out as one line (HTTP-streaming) or one event
//! (SSE); raw line breaks a publisher left in its JSON become spaces (JSON whitespace). The
//! heartbeat is a `{"type":"ping"}` message every `ping_interval`; any command the client sends
//! within `pong_timeout` proves it alive (clients answer with a `ping` command), and a silent one
//! is ended as dead, as on WebSocket. Nothing writes to a stream but its task: publishers always
//! queue in the mailbox (there is no socket for a direct write).
//!
//! SSE events that carry publications have an `id:` with every subscribed channel's position
//! (`CHANNEL=EPOCH:OFFSET`, channel names percent-encoded, space-separated): a browser that
//! reconnects by itself sends it back as `Last-Event-ID`, and the subscribes and `connect` of
//! the new stream's first commands recover from there.

use super::*;
use crate::session::Action;
use std::collections::BTreeMap;
use tether_core::protocol::StreamPosition;
use tokio::sync::mpsc;

/// Chunks of the response waiting for hyper to write them (the rest waits in the mailbox,
/// bounded by `outbound_queue` and `outbound_queue_bytes`).
pub(crate) const BODY_CHUNKS: usize = 8;

/// How a streaming session frames what it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// One JSON message per line (`application/x-ndjson`).
    Lines,
    /// One SSE event per message (`text/event-stream`), publications with an `id:`.
    Events,
}

impl Format {
    pub fn transport(self) -> &'static str {
        match self {
            Format::Lines => "http_stream",
            Format::Events => "sse_session",
        }
    }
}

/// The wire under a streaming session: the response body, fed through a bounded channel.
pub(crate) struct Streaming {
    tx: mpsc::Sender<Bytes>,
    format: Format,
    write_timeout: Duration,
    /// SSE: where each channel stands in what this stream has sent (the next `id:`).
    positions: BTreeMap<String, (String, u64)>,
}

/// A publication's place, read back from its JSON (replays arrive rendered).
#[derive(serde::Deserialize)]
struct Place {
    #[serde(rename = "type")]
    kind: String,
    channel: Option<String>,
    epoch: Option<String>,
    offset: Option<u64>,
}

impl Streaming {
    pub fn new(tx: mpsc::Sender<Bytes>, format: Format, write_timeout: Duration) -> Self {
        Streaming { tx, format, write_timeout, positions: BTreeMap::new() }
    }

    /// One message as the wire carries it. `place`: the publication's channel and position,
    /// when the caller knows them.
    fn frame(&mut self, conn: &Connection, json: &str, place: Option<(&str, &str, u64)>) -> Bytes {
        let json: std::borrow::Cow<str> = if json.contains(['\n', '\r']) {
            json.replace(['\n', '\r'], " ").into()
        } else {
            json.into()
        };
        match self.format {
            Format::Lines => {
                let mut out = String::with_capacity(json.len() + 1);
                out.push_str(&json);
                out.push('\n');
                Bytes::from(out)
            }
            Format::Events => {
                let parsed;
                let place = match place {
                    Some(p) => Some(p),
                    None if json.starts_with("{\"type\":\"publication\"") => {
                        parsed = serde_json::from_str::<Place>(&json).ok();
                        parsed.as_ref().and_then(|p| match (&p.channel, &p.epoch, p.offset) {
                            (Some(c), Some(e), Some(o)) if p.kind == "publication" => {
                                Some((c.as_str(), e.as_str(), o))
                            }
                            _ => None,
                        })
                    }
                    None => None,
                };
                let mut out = String::with_capacity(json.len() + 16);
                if let Some((channel, epoch, offset)) = place {
                    self.positions.insert(channel.to_owned(), (epoch.to_owned(), offset));
                    let held = |c: &str| conn.queue.with_subscriptions(|s| s.contains(c));
                    self.positions.retain(|c, _| held(c));
                    out.push_str("id: ");
                    out.push_str(&event_id(&self.positions));
                    out.push('\n');
                }
                out.push_str("data: ");
                out.push_str(&json);
                out.push_str("\n\n");
                Bytes::from(out)
            }
        }
    }

    /// Hand a chunk to hyper; a reader that takes nothing for `write_timeout` is too slow.
    async fn send(&self, chunk: Bytes) -> Result<(), WriteFailed> {
        match tokio::time::timeout(self.write_timeout, self.tx.send(chunk)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WriteFailed::Gone),
            Err(_) => Err(WriteFailed::TimedOut),
        }
    }

    async fn send_message(&mut self, conn: &Connection, msg: &Message) -> Result<(), WriteFailed> {
        let text = msg.to_text().unwrap_or_default();
        let chunk = self.frame(conn, text, None);
        let bytes = chunk.len() as u64;
        self.send(chunk).await?;
        conn.shared.metrics.messages_out.inc();
        conn.shared.metrics.bytes_out.inc_by(bytes);
        Ok(())
    }
}

impl Wire for Streaming {
    fn hold(&mut self) {} // nobody writes to a stream but its task

    async fn send_now(
        &mut self,
        conn: &Connection,
        msg: Message,
    ) -> Result<Option<Message>, WriteFailed> {
        if !conn.queue.is_empty() {
            return Ok(Some(msg));
        }
        self.send_message(conn, &msg).await.map(|()| None)
    }

    async fn write_chunks(
        &mut self,
        conn: &Connection,
        chunks: &mut (dyn Iterator<Item = Vec<Message>> + Send),
    ) -> Result<(), WriteFailed> {
        for chunk in chunks {
            for msg in &chunk {
                self.send_message(conn, msg).await?;
            }
        }
        Ok(())
    }

    async fn close(&mut self, conn: &mut Connection, close: Close) -> Ending {
        if let Some(advice) = close.advice(Mode::Json) {
            let text = codec::encode(&advice);
            let mut chunk = self.frame(conn, &text, None);
            if let (Format::Events, Some(hint)) = (self.format, close.retry_after) {
                // The browser's own reconnect waits this long, jittered per stream.
                let retry = hint + hint.mul_f64(rand::random::<f64>());
                let mut with_retry = format!("retry: {}\n", retry.as_millis()).into_bytes();
                with_retry.extend_from_slice(&chunk);
                chunk = Bytes::from(with_retry);
            }
            let _ = self.send(chunk).await;
        }
        close.ending(true)
    }
}

/// Every channel's position as an SSE `id:` carries it: `CHANNEL=EPOCH:OFFSET`, space-separated.
pub(crate) fn event_id(positions: &BTreeMap<String, (String, u64)>) -> String {
    let mut out = String::new();
    for (channel, (epoch, offset)) in positions {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(form_urlencoded::byte_serialize(channel.as_bytes()));
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(epoch.as_bytes()));
        out.push_str(&format!(":{offset}"));
    }
    out
}

/// The positions a `Last-Event-ID` names (what does not parse is left out).
pub(crate) fn parse_event_id(id: &str) -> BTreeMap<String, StreamPosition> {
    let mut out = BTreeMap::new();
    for part in id.split(' ') {
        let Some((channel, position)) = part.split_once('=') else { continue };
        let Some((epoch, offset)) = position.rsplit_once(':') else { continue };
        let Ok(offset) = offset.parse() else { continue };
        let decode = |s: &str| -> String {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let position = StreamPosition { epoch: decode(epoch), offset };
        out.insert(decode(channel), position);
    }
    out
}

/// A session's place in `hub::Sessions`, given back when dropped: however the session ends,
/// even if its task is dropped before it ever ran, no inbox outlives it.
pub(crate) struct Registered(pub Arc<Node>, pub ConnId);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.hub.sessions.remove(self.1);
    }
}

/// A streaming session: what it starts with and where its commands come from.
pub(crate) struct Opening {
    pub wire: Streaming,
    pub inbox: mpsc::Receiver<Bytes>,
    /// The id its commands name (`hub::SessionId`).
    pub session: String,
    /// The commands sent with the request that opened it (the body, or `?commands=`), in order.
    pub first: Bytes,
    /// SSE: the positions `Last-Event-ID` names, which its subscribes recover from.
    pub resume: BTreeMap<String, StreamPosition>,
    pub registered: Option<Registered>,
}

impl Connection {
    /// A connection for a streaming session (JSON mode; no socket, no compression).
    pub(crate) fn open_streaming(
        shared: Arc<Node>,
        peer: Option<SocketAddr>,
        grant: Option<Arc<Grant>>,
        transport: &'static str,
    ) -> Self {
        Connection::open(shared, peer, Mode::Json, transport, Vec::new(), grant, 0)
    }

    /// Client id, for the session id and the hub's registry.
    pub(crate) fn conn_id(&self) -> ConnId {
        self.id
    }

    /// Serve the session until it ends; the ending is logged and counted once.
    pub(crate) async fn serve_streaming(mut self, mut opening: Opening) {
        let transport = opening.wire.format.transport();
        let ending = self.streaming(&mut opening).await;
        drop(opening.registered.take());
        self.finish(ending, transport);
    }

    async fn streaming(&mut self, o: &mut Opening) -> Ending {
        let cfg = &self.shared.config;
        let hello = ServerMessage::Session {
            session: o.session.clone(),
            ping_interval_ms: cfg.ping_interval.as_millis() as u64,
            pong_timeout_ms: cfg.pong_timeout.as_millis() as u64,
            max_batch_bytes: cfg.max_message_size.as_u64(),
        };
        let hello = Message::Text(codec::encode(&hello).into());
        if let Err(e) = o.wire.send_message(self, &hello).await {
            return self.write_failed(e);
        }
        if let Some(ending) = self.commands(o, o.first.clone()).await {
            return ending;
        }
        let queue = self.queue.clone();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            let close = if self.shared.stopping() {
                Some(Close::shutdown(&self.shared.config))
            } else if queue.overflowed() {
                self.shared.metrics.slow_consumers.inc();
                Some(Close::slow_consumer())
            } else {
                None
            };
            if let Some(close) = close {
                return o.wire.close(self, close).await;
            }
            if queue.take_ordered() {
                if let Some(ending) = Box::pin(self.obey(&mut o.wire)).await {
                    return ending;
                }
            }
            let now = Instant::now();
            let wake_at = match self.session.tick(rules(&self.shared), now.into_std()) {
                Tick::SendPing => {
                    let ping = Message::Text(codec::encode(&ServerMessage::Ping).into());
                    match o.wire.send_now(self, ping).await {
                        Ok(None) => {}
                        Ok(Some(ping)) => _ = queue.push(Outbound::Reply(ping)),
                        Err(e) => return self.write_failed(e),
                    }
                    continue;
                }
                Tick::PeerDead => {
                    // The reader may still be there (only the client's way in is broken): tell it.
                    let why = "heartbeat timeout: no command answered the server's ping within pong_timeout";
                    let _ = o.wire.close(self, Close::new(CloseCode::HEARTBEAT_TIMEOUT, why)).await;
                    return Ending::heartbeat_timeout();
                }
                Tick::Close(close) => return o.wire.close(self, close).await,
                Tick::Wait(at) => Instant::from_std(at),
            };
            sleep.as_mut().reset(wake_at);
            tokio::select! {
                biased;
                batch = o.inbox.recv() => {
                    // The registry's sender lives while the session does.
                    let Some(batch) = batch else { continue };
                    if let Some(ending) = self.commands(o, batch).await {
                        return ending;
                    }
                    // A batch that found the inbox full was lost (through the broker the
                    // sender was already answered): end the session so that its client
                    // reconnects and recovers, rather than miss commands silently.
                    if self.shared.hub.sessions.overrun(self.id) {
                        let why = "commands arrived faster than the session took them: reconnect";
                        let close = Close::new(CloseCode::TRY_AGAIN_LATER, why);
                        return o.wire.close(self, close).await;
                    }
                }
                item = queue.next() => {
                    let Some(item) = item else { continue };
                    if let Some(ending) = self.deliver(&mut o.wire, item).await {
                        return ending;
                    }
                }
                () = &mut sleep => {}
                () = o.wire.tx.closed() => return Ending::network("the reader went away"),
            }
        }
    }

    /// A batch of commands, one per line, each carried out in order.
    async fn commands(&mut self, o: &mut Opening, batch: Bytes) -> Option<Ending> {
        let Ok(text) = std::str::from_utf8(&batch) else {
            let close = Close::new(CloseCode::INVALID_PAYLOAD, "commands are not valid UTF-8");
            return Some(o.wire.close(self, close).await);
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let m = &self.shared.metrics;
            m.messages_in.inc();
            m.bytes_in.inc_by(line.len() as u64);
            let now = Instant::now();
            let ticks = self.shared.parking.ticks(now);
            if let Err(close) =
                self.session.received(rules(&self.shared), now.into_std(), ticks, true)
            {
                return Some(o.wire.close(self, close).await);
            }
            let mut action =
                self.session.message(rules(&self.shared), &*self.queue, Inbound::Text(line));
            // A browser's own reconnect: recover from where the last stream's events stood.
            match &mut action {
                Action::Subscribe { channel, recover, .. } => {
                    if let Some(at) = o.resume.remove(channel.as_str()) {
                        *recover = Some(at);
                    }
                }
                Action::Connect { subs, .. } => {
                    // `connect` recovers the token's channels from these; the subscribes that
                    // follow still find theirs.
                    for (channel, at) in &o.resume {
                        subs.insert(channel.clone(), at.clone());
                    }
                }
                _ => {}
            }
            if let Some(ending) = self.carry_out(&mut o.wire, action).await {
                return Some(ending);
            }
        }
        None
    }

    /// One item from the mailbox, and whatever else is queued behind it.
    async fn deliver(&mut self, wire: &mut Streaming, first: Outbound) -> Option<Ending> {
        let mut next = Some(first);
        while let Some(item) = next.take() {
            let sent = match item {
                Outbound::Reply(msg) => wire.send_message(self, &msg).await,
                Outbound::Publication(p) => match self.queue.admit(&p) {
                    Admission::Send => self.publication(wire, &p).await,
                    Admission::Skip => Ok(()),
                    Admission::Gap => {
                        tracing::warn!(conn = self.id, "a publication is missing from the live feed; asking the client to recover");
                        return Some(wire.close(self, Close::gap(&self.shared.config)).await);
                    }
                },
                Outbound::Admitted { publication, .. } => {
                    self.publication(wire, &publication).await
                }
            };
            if let Err(e) = sent {
                return Some(self.write_failed(e));
            }
            next = self.queue.pop();
        }
        None
    }

    async fn publication(&self, wire: &mut Streaming, p: &Published) -> Result<(), WriteFailed> {
        let Ok(text) = std::str::from_utf8(p.payload.as_bytes()) else { return Ok(()) };
        let chunk = wire.frame(self, text, Some((&p.channel, &p.epoch, p.offset)));
        let bytes = chunk.len() as u64;
        wire.send(chunk).await?;
        self.shared.metrics.messages_out.inc();
        self.shared.metrics.bytes_out.inc_by(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_carry_every_channels_position_and_read_back() {
        let mut at = BTreeMap::new();
        at.insert("news eu=1".to_owned(), ("e:1".to_owned(), 41));
        at.insert("b".to_owned(), ("f".to_owned(), 0));
        let id = event_id(&at);
        assert!(!id.contains("news eu"), "{id}");
        let back = parse_event_id(&id);
        assert_eq!(back.len(), 2);
        assert_eq!(back["news eu=1"], StreamPosition { epoch: "e:1".into(), offset: 41 });
        assert_eq!(back["b"], StreamPosition { epoch: "f".into(), offset: 0 });
        assert!(parse_event_id("garbage x=y:z").is_empty());
    }
}
