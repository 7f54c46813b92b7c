//! A publication as it goes out: rendered once per protocol mode ([`render`]), framed once for
//! every subscriber ([`Published`]: the plain frame, and the compressed one when a subscriber
//! agreed to permessage-deflate), and split into fragments when large ([`fragments`]). Below
//! the mailbox, the hub and the connection, which all hand these around and never re-encode.

use bytes::Bytes;
use serde_json::value::RawValue;
use std::sync::Arc;
use tether_core::codec;
use tether_core::protocol::ServerMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Identifies a connection within this process.
pub type ConnId = u64;

/// Told a channel's name when it gains its first or loses its last subscriber on this node:
/// how a backplane learns what to subscribe to (see `broker::LocalSubscribers::watch_interest`).
pub type ChannelHook = Arc<dyn Fn(&Arc<str>) + Send + Sync>;

/// How a connection wants publications rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `tether.v1.json`: `{"type":"publication",...}` objects.
    Json,
    /// No subprotocol: the publication's data only.
    Raw,
    /// The conformance echo (`/echo`, off by default): every message comes back as it came.
    /// It subscribes to nothing.
    Echo,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Json => "json",
            Mode::Raw => "raw",
            Mode::Echo => "echo",
        }
    }
}

/// A message's payload: publications are text; a conformance echo may be binary.
#[derive(Debug, Clone)]
pub enum Payload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Payload {
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(t) => t.as_bytes(),
            Payload::Binary(b) => b,
        }
    }

    fn opcode(&self) -> Data {
        match self {
            Payload::Text(_) => Data::Text,
            Payload::Binary(_) => Data::Binary,
        }
    }

    /// The message for the WebSocket layer (a cheap clone of the shared bytes).
    pub fn message(&self) -> Message {
        match self {
            Payload::Text(t) => Message::Text(t.clone()),
            Payload::Binary(b) => Message::Binary(b.clone()),
        }
    }
}

/// A publication rendered for one protocol mode, with its place in its channel's stream.
/// Built once per publication and mode; every subscriber's queue holds an `Arc` of it.
#[derive(Debug)]
pub struct Published {
    /// The message's payload.
    pub payload: Payload,
    /// The whole WebSocket frame (header and payload), when it goes out as one frame: server
    /// frames are not masked, so every subscriber can be sent the same bytes, gathered into one
    /// vectored write per batch. `None` for messages sent as fragments (see `connection`).
    pub wire: Option<Bytes>,
    /// Its channel; empty for a message that belongs to no stream (a conformance echo), which
    /// every connection admits as it comes (see `mailbox::Subscriptions::admit`).
    pub channel: Arc<str>,
    pub epoch: Arc<str>,
    pub offset: u64,
    /// Whether subscribers that negotiated permessage-deflate get it compressed...
    compress: Compress,
    /// ...and the compressed frame, built by the first such subscriber's delivery and shared by
    /// all of them (no context takeover makes it the same bytes for everyone). `None` inside:
    /// compressing did not make it smaller.
    deflated: std::sync::OnceLock<Option<Bytes>>,
    /// With [`Compress::Always`], the frame for subscribers whose window it is longer than
    /// (stored blocks: compressed in form, not in size).
    stored: std::sync::OnceLock<Bytes>,
    /// Not a message but news of a loss (see [`Published::loss`]): never written.
    pub loss: bool,
}

/// When a message goes out compressed to a connection that agreed to permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// Never (compression off, the channel does not match, or the message is too small).
    Never,
    /// When that makes it smaller.
    IfSmaller,
    /// Every message, even when that does not make it smaller (`compression_min_size` 0).
    Always,
}

impl Compress {
    /// The rule for a message of `len` bytes under `compression_min_size` = `min`, when
    /// compression applies to it at all (`on`).
    pub fn for_message(on: bool, len: usize, min: u64) -> Compress {
        match (on, min) {
            (false, _) => Compress::Never,
            (true, 0) => Compress::Always,
            (true, min) if len as u64 >= min => Compress::IfSmaller,
            _ => Compress::Never,
        }
    }
}

impl Published {
    /// Frame `text` once for all subscribers.
    pub fn new(text: Utf8Bytes, channel: Arc<str>, epoch: Arc<str>, offset: u64) -> Self {
        Self::with_compression(text, channel, epoch, offset, Compress::Never)
    }

    /// As [`Published::new`], compressed for deflate subscribers as `compress` says.
    pub fn with_compression(
        text: Utf8Bytes,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        compress: Compress,
    ) -> Self {
        Self::framed(Payload::Text(text), channel, epoch, offset, compress)
    }

    /// A message that belongs to no channel's stream (the conformance echo), framed exactly as
    /// publications are.
    pub fn unsequenced(payload: Payload, compress: Compress) -> Self {
        Self::framed(payload, Arc::from(""), Arc::from(""), 0, compress)
    }

    fn framed(
        payload: Payload,
        channel: Arc<str>,
        epoch: Arc<str>,
        offset: u64,
        compress: Compress,
    ) -> Self {
        let (payload, wire) = if payload.len() <= FRAGMENT {
            let (wire, start) = data_frame(payload.opcode(), payload.as_bytes());
            // The payload shares the frame's allocation.
            let shared = match &payload {
                Payload::Binary(_) => Some(Payload::Binary(wire.slice(start..))),
                // It was UTF-8 before the copy.
                Payload::Text(_) => {
                    Utf8Bytes::try_from(wire.slice(start..)).ok().map(Payload::Text)
                }
            };
            match shared {
                Some(shared) => (shared, Some(wire)),
                None => (payload, None),
            }
        } else {
            (payload, None)
        };
        let (deflated, stored) = (std::sync::OnceLock::new(), std::sync::OnceLock::new());
        Published { payload, wire, channel, epoch, offset, compress, deflated, stored, loss: false }
    }

    /// Not a message: the news that this node missed publications of `channel` up to `offset`
    /// of `epoch` that cannot be replayed (`None`: up to an unknown point). A subscriber behind
    /// it meets a gap (its connection ends and recovers, told `recovered: false`); one at or
    /// past it passes it by. Queued behind what the subscriber already has, never written.
    pub fn loss(channel: Arc<str>, position: Option<(Arc<str>, u64)>) -> Self {
        let (epoch, offset) = position.unwrap_or_else(|| (Arc::from(""), u64::MAX));
        let text = Payload::Text(Utf8Bytes::from_static(""));
        Published { loss: true, ..Self::framed(text, channel, epoch, offset, Compress::Never) }
    }

    /// Whether a compressed frame was built (and was smaller than the plain one).
    pub fn is_compressed(&self) -> bool {
        self.deflated.get().is_some_and(|d| d.is_some())
    }

    /// The bytes to write for a subscriber, as one frame: compressed when it negotiated
    /// permessage-deflate (`window`: the window its compressed messages must fit, 0 without the
    /// extension), compression applies and the message fits that window; `None` when the
    /// message goes out through the WebSocket layer instead (large and not compressed).
    pub fn wire_for(&self, window: u8) -> Option<&[u8]> {
        use tether_core::permessage_deflate::{compressed_frame, fits_window};
        if window == 0 || self.compress == Compress::Never {
            return self.wire.as_deref();
        }
        let (bytes, binary) = (self.payload.as_bytes(), matches!(self.payload, Payload::Binary(_)));
        if fits_window(bytes.len(), window) {
            let compressed = self.deflated.get_or_init(|| {
                let frame = compressed_frame(binary, bytes, 15);
                let worth = self.compress == Compress::Always || frame.len() < bytes.len();
                worth.then(|| Bytes::from(frame))
            });
            if let Some(frame) = compressed {
                return Some(frame);
            }
        } else if self.compress == Compress::Always {
            return Some(
                self.stored.get_or_init(|| Bytes::from(compressed_frame(binary, bytes, window))),
            );
        }
        self.wire.as_deref()
    }
}

/// `text` as one complete, unmasked WebSocket text frame (framing by tungstenite's
/// `FrameHeader`), and where the text starts in it.
pub fn text_frame(text: &[u8]) -> (Bytes, usize) {
    data_frame(Data::Text, text)
}

/// `payload` as one complete, unmasked WebSocket data frame, and where the payload starts in it.
fn data_frame(opcode: Data, payload: &[u8]) -> (Bytes, usize) {
    let header = FrameHeader { opcode: OpCode::Data(opcode), ..FrameHeader::default() };
    let len = payload.len() as u64;
    let mut wire = Vec::with_capacity(header.len(len) + payload.len());
    // Writing into a Vec cannot fail.
    let _ = header.format(len, &mut wire);
    let start = wire.len();
    wire.extend_from_slice(payload);
    (Bytes::from(wire), start)
}

/// Render a publication for a mode (used for live fan-out and for recovery replays).
pub fn render(mode: Mode, channel: &str, epoch: &str, offset: u64, data: &RawValue) -> Utf8Bytes {
    match mode {
        Mode::Json => codec::encode(&ServerMessage::Publication {
            channel: channel.to_owned(),
            offset,
            epoch: epoch.to_owned(),
            data: data.to_owned(),
        })
        .into(),
        Mode::Raw | Mode::Echo => codec::raw_text(data).into(),
    }
}

/// Outbound messages larger than this are sent as fragments of this size. tungstenite keeps its
/// write buffer's capacity after a flush, so one large publication would otherwise stay resident
/// in every subscriber's connection for good (measured: a 200 KB publication to 3,000
/// subscribers left ~590 MB behind, 25 MB with fragments); fragments cap it at one per connection.
pub const FRAGMENT: usize = 8 * 1024;

/// `msg` as one frame, or as fragments of at most `FRAGMENT` bytes (RFC 6455 §5.4; a text
/// message may be split inside a UTF-8 sequence: validity is checked on the whole message).
pub fn fragments(msg: Message) -> Vec<Message> {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let (opcode, payload): (Data, Bytes) = match msg {
        Message::Text(t) if t.len() > FRAGMENT => (Data::Text, Bytes::from(t)),
        Message::Binary(b) if b.len() > FRAGMENT => (Data::Binary, b),
        other => return vec![other],
    };
    let count = payload.len().div_ceil(FRAGMENT);
    (0..count)
        .map(|i| {
            let chunk = payload.slice(i * FRAGMENT..((i + 1) * FRAGMENT).min(payload.len()));
            let code = if i == 0 { OpCode::Data(opcode) } else { OpCode::Data(Data::Continue) };
            Message::Frame(Frame::message(chunk, code, i + 1 == count))
        })
        .collect()
}

/// Numbers sweep entries, across all channels and hubs of the process: a connection's
/// `Watermark::handed` (in its mailbox) compares against it.
static SWEEP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The last sweep entry numbered so far. A new subscription starts its watermark here, so
/// that sweeps do not hand it what was published before it.
pub fn sweep_position() -> u64 {
    SWEEP_SEQ.load(std::sync::atomic::Ordering::Relaxed)
}

/// Number a new sweep entry.
pub fn next_sweep_entry() -> u64 {
    SWEEP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}
