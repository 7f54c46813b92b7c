//! A lean WebSocket client for load generation.
//!
//! A load generator must be cheaper per message than the server it measures, or it measures
//! itself (with one full tungstenite client per connection, `tether bench` saturated its core
//! at ~100,000 received messages/s). Here tungstenite still performs the opening handshake
//! (request, key, accept check), and its `FrameHeader` parses and formats frame headers; what
//! is dropped is the per-message machinery: frames are read straight out of one buffer per
//! connection, many per `read`, with no allocation per message and no UTF-8 validation (the
//! bench only looks for its stamp). Pings are answered; fragmented messages are reassembled.

use anyhow::{bail, Context, Result};
use std::io::Cursor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::MaybeTlsStream;

/// Bytes read per `read` call at most; also the buffer kept per connection.
const READ_CHUNK: usize = 16 * 1024;

/// Largest message a compressed one may inflate to.
const MAX_MESSAGE: usize = 16 << 20;

pub struct LeanWs {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Start of unparsed bytes in `buf`.
    start: usize,
    /// A fragmented message being reassembled.
    partial: Option<Vec<u8>>,
    /// Whether the first frame of the message being reassembled was compressed.
    partial_compressed: bool,
    mask_seed: u32,
    /// permessage-deflate agreed: compressed messages are inflated before they are handed on.
    inflater: Option<Box<tether_core::permessage_deflate::MessageInflater>>,
    /// Bytes read from the socket: what the server put on the wire for this connection.
    pub wire_bytes: u64,
}

/// What a read delivered.
pub enum Event<'a> {
    /// A whole text or binary message.
    Message(&'a [u8]),
    /// The server sent a close frame, or the stream ended.
    Closed,
}

impl LeanWs {
    /// Connect to `url` (ws:// only).
    pub async fn connect(url: &str) -> Result<LeanWs> {
        Self::connect_with(url, false).await
    }

    /// Connect to `url` (ws:// only), offering permessage-deflate when `deflate`.
    pub async fn connect_with(url: &str, deflate: bool) -> Result<LeanWs> {
        let mut request =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
        if deflate {
            request.headers_mut().insert(
                "sec-websocket-extensions",
                tether_core::permessage_deflate::CLIENT_OFFER.parse()?,
            );
        }
        let host = request.uri().host().context("URL without a host")?.to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        if request.uri().scheme_str() != Some("ws") {
            bail!("the lean bench client speaks ws:// only");
        }
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .with_context(|| format!("cannot resolve {host}"))?;
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (ws, response) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(tcp)).await?;
        let agreed =
            response.headers().get("sec-websocket-extensions").and_then(|v| v.to_str().ok());
        let inflate = match tether_core::permessage_deflate::client_accepts(agreed) {
            Ok(on) => on && deflate,
            Err(why) => bail!("{why}"),
        };
        // The server sends nothing before it is asked to (no publication yet, first ping in
        // seconds), so tungstenite has buffered nothing past the handshake.
        let MaybeTlsStream::Plain(tcp) = ws.into_inner() else { bail!("unexpected TLS stream") };
        Ok(LeanWs {
            tcp,
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            partial: None,
            partial_compressed: false,
            mask_seed: rand::random(),
            inflater: inflate.then(Default::default),
            wire_bytes: 0,
        })
    }

    /// Read once (waiting for data) and hand every complete message to `on_event`; pings are
    /// answered. Returns false when the connection ended.
    pub async fn read_some(&mut self, mut on_event: impl FnMut(Event<'_>)) -> Result<bool> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        // Into spare capacity: no zero-filling of the chunk on every read.
        self.buf.reserve(READ_CHUNK);
        let n = self.tcp.read_buf(&mut self.buf).await?;
        if n == 0 {
            on_event(Event::Closed);
            return Ok(false);
        }
        self.wire_bytes += n as u64;
        let mut pongs: Vec<Vec<u8>> = Vec::new();
        let mut open = true;
        loop {
            let mut cursor = Cursor::new(&self.buf[self.start..]);
            let Some((header, length)) = FrameHeader::parse(&mut cursor)? else { break };
            let body = self.start + cursor.position() as usize;
            let end = body + length as usize;
            if end > self.buf.len() {
                break; // the rest of this frame is still on its way
            }
            let payload = &self.buf[body..end];
            // A compressed message (RSV1 on its first frame) is inflated whole.
            let inflater = &mut self.inflater;
            let mut deliver =
                |message: &[u8], compressed: bool| match (compressed, inflater.as_mut()) {
                    (true, Some(inflater)) => match inflater.inflate(message, MAX_MESSAGE) {
                        Some(plain) => on_event(Event::Message(&plain)),
                        None => on_event(Event::Closed),
                    },
                    _ => on_event(Event::Message(message)),
                };
            match header.opcode {
                OpCode::Data(Data::Continue) => {
                    if let Some(p) = self.partial.as_mut() {
                        p.extend_from_slice(payload);
                    }
                    if header.is_final {
                        if let Some(p) = self.partial.take() {
                            deliver(&p, self.partial_compressed);
                        }
                    }
                }
                OpCode::Data(_) if header.is_final => deliver(payload, header.rsv1),
                OpCode::Data(_) => {
                    self.partial = Some(payload.to_vec());
                    self.partial_compressed = header.rsv1;
                }
                OpCode::Control(Control::Ping) => pongs.push(payload.to_vec()),
                OpCode::Control(Control::Close) => {
                    on_event(Event::Closed);
                    open = false;
                }
                OpCode::Control(_) => {}
            }
            self.start = end;
        }
        for p in pongs {
            self.send(OpCode::Control(Control::Pong), &p).await?;
        }
        Ok(open)
    }

    /// Send a text message.
    pub async fn send_text(&mut self, text: &[u8]) -> Result<()> {
        self.send(OpCode::Data(Data::Text), text).await
    }

    async fn send(&mut self, opcode: OpCode, payload: &[u8]) -> Result<()> {
        // Client frames are masked (RFC 6455 §5.3); the key only has to be unpredictable to
        // intermediaries, so a cheap xorshift is enough for a load generator.
        self.mask_seed ^= self.mask_seed << 13;
        self.mask_seed ^= self.mask_seed >> 17;
        self.mask_seed ^= self.mask_seed << 5;
        let mask = self.mask_seed.to_ne_bytes();
        let header = FrameHeader { is_final: true, opcode, mask: Some(mask), ..Default::default() };
        let mut frame = Vec::with_capacity(14 + payload.len());
        header.format(payload.len() as u64, &mut frame)?;
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        self.tcp.write_all(&frame).await?;
        Ok(())
    }
}

/// The `seq` and `t` of a fan-out message (`{"seq":N,"t":T,...}`, possibly wrapped in a
/// tether.v1.json publication), found without parsing the rest of the JSON.
pub fn stamp(message: &[u8]) -> Option<(u64, u64)> {
    fn number_after(hay: &[u8], key: &[u8]) -> Option<u64> {
        let at = hay.windows(key.len()).position(|w| w == key)? + key.len();
        let digits = hay[at..].iter().take_while(|b| b.is_ascii_digit()).count();
        std::str::from_utf8(&hay[at..at + digits]).ok()?.parse().ok()
    }
    Some((number_after(message, b"\"seq\":")?, number_after(message, b"\"t\":")?))
}

#[cfg(test)]
mod tests {
    use super::stamp;

    #[test]
    fn finds_the_stamp_raw_or_wrapped() {
        assert_eq!(
            stamp(br#"{"seq":12,"t":1700000000123456,"pad":"xx"}"#),
            Some((12, 1700000000123456))
        );
        assert_eq!(
            stamp(br#"{"type":"publication","channel":"c","offset":3,"epoch":"e","data":{"seq":7,"t":9}}"#),
            Some((7, 9))
        );
        assert_eq!(stamp(b"pong"), None);
    }
}
