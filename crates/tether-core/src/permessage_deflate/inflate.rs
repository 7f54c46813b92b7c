//! Inflating: a compressed message back to its payload, and the stream rewriter that turns
//! a peer's compressed frames into plain ones for a WebSocket layer that knows no extensions.

use super::TAIL;
use flate2::{Decompress, FlushDecompress, Status};
use std::io::Cursor;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Bytes a rewriting stream produced and has not handed to its reader yet: reads take them in
/// pieces as small as the reader's buffer.
#[derive(Default)]
pub struct Pending {
    bytes: Vec<u8>,
    taken: usize,
}

impl Pending {
    /// Where new bytes go.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.taken == self.bytes.len()
    }

    /// Hand `f` the next bytes, at most `max`, and count them as taken.
    pub fn take(&mut self, max: usize, f: impl FnOnce(&[u8])) {
        let n = (self.bytes.len() - self.taken).min(max);
        f(&self.bytes[self.taken..self.taken + n]);
        self.taken += n;
        if self.is_empty() {
            self.bytes.clear();
            self.taken = 0;
        }
    }
}

/// Inflates whole messages one at a time (no context kept between them), reusing its zlib
/// state: for clients that read frames themselves, like `tether bench`'s.
pub struct MessageInflater(Decompress);

impl Default for MessageInflater {
    fn default() -> Self {
        MessageInflater(Decompress::new(false))
    }
}

impl MessageInflater {
    /// The plain payload of one compressed message, or `None` when it is bad data or inflates
    /// beyond `max` bytes.
    pub fn inflate(&mut self, payload: &[u8], max: usize) -> Option<Vec<u8>> {
        self.0.reset(false);
        let mut out = Vec::with_capacity(payload.len() * 4);
        for input in [payload, &TAIL[..]] {
            let start = self.0.total_in();
            loop {
                let consumed = (self.0.total_in() - start) as usize;
                if consumed == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() > max {
                    return None;
                }
                // Grow geometrically, never past one byte over the limit.
                let room = max + 1 - out.len();
                out.reserve(out.len().max(1024).min(room));
                let before = (self.0.total_in(), out.len());
                match self.0.decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync) {
                    Ok(Status::StreamEnd) => break,
                    Ok(_) => {}
                    Err(_) => return None,
                }
                if (self.0.total_in(), out.len()) == before {
                    break;
                }
            }
        }
        (out.len() <= max).then_some(out)
    }
}

/// The inbound side: a stream rewriter that sits under a WebSocket layer without extension
/// support. Bytes from the peer go in; what comes out is the same stream with every compressed
/// message replaced by one plain frame (RSV1 clear, the message inflated, masked again with the
/// key of its first frame when it was masked). Control frames and uncompressed messages pass
/// through untouched, also in the middle of a compressed message.
///
/// Errors are left for the WebSocket layer to report with the right close code: a message that
/// inflates beyond `max_message` comes out as a frame header announcing more than that (1009),
/// and bad compressed data or a misplaced RSV1 come out with RSV1 still set (1002). After an
/// error everything passes through as it is.
pub struct Inflating {
    max_message: usize,
    header: [u8; 14],
    header_len: u8,
    frame: Option<Frame>,
    message: Option<Box<Message>>,
    failed: bool,
}

/// The frame being read.
struct Frame {
    /// Payload bytes still to come.
    left: u64,
    /// `Some`: a frame of a compressed message, with its own masking key (each frame has one)
    /// and how far into the payload we are. `None`: passed through.
    compressed: Option<(Option<[u8; 4]>, usize)>,
    is_final: bool,
}

/// A compressed message being inflated: it exists only between its first and last frames.
struct Message {
    opcode: OpCode,
    /// Bytes of its frames so far, headers included: bounded like the plain message, so that
    /// frames which inflate to little or nothing cannot stream without end.
    wire: u64,
    /// The first frame's key, to mask the plain frame again (a server requires masked frames).
    mask: Option<[u8; 4]>,
    inflate: Decompress,
    plain: Vec<u8>,
}

impl Inflating {
    pub fn new(max_message: usize) -> Self {
        Inflating {
            max_message,
            header: [0; 14],
            header_len: 0,
            frame: None,
            message: None,
            failed: false,
        }
    }

    /// Between messages: no partial frame header, no frame or compressed message in progress.
    pub fn at_rest(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && self.message.is_none()
    }

    /// Rewrite `input` (the next bytes from the peer) into `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.failed {
                out.extend_from_slice(input);
                return;
            }
            match &mut self.frame {
                None => input = self.read_header(input, out),
                Some(frame) if frame.compressed.is_none() => {
                    let n = input.len().min(usize::try_from(frame.left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&input[..n]);
                    frame.left -= n as u64;
                    input = &input[n..];
                    if frame.left == 0 {
                        self.frame = None;
                    }
                }
                Some(_) => input = self.inflate_payload(input, out),
            }
        }
    }

    fn read_header<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let had = self.header_len as usize;
        let take = input.len().min(self.header.len() - had);
        self.header[had..had + take].copy_from_slice(&input[..take]);
        let mut cursor = Cursor::new(&self.header[..had + take]);
        let (header, len) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => {
                self.header_len = (had + take) as u8;
                return &input[take..];
            }
            Err(_) => {
                // The WebSocket layer will refuse this header too.
                self.fail();
                return input;
            }
        };
        let used = cursor.position() as usize - had;
        let raw = &self.header[..had + used];
        self.header_len = 0;
        let rest = &input[used..];
        let starts_compressed =
            header.rsv1 && matches!(header.opcode, OpCode::Data(Data::Text | Data::Binary));
        let continues =
            matches!(header.opcode, OpCode::Data(Data::Continue)) && self.message.is_some();
        if header.rsv2 || header.rsv3 || (header.rsv1 && !starts_compressed) {
            out.extend_from_slice(raw);
            self.fail();
            return rest;
        }
        if starts_compressed {
            if self.message.is_some() {
                out.extend_from_slice(raw); // a new message inside one: the layer refuses it
                self.fail();
                return rest;
            }
            self.message = Some(Box::new(Message {
                opcode: header.opcode,
                wire: 0,
                mask: header.mask,
                inflate: Decompress::new(false),
                plain: Vec::new(),
            }));
        }
        if starts_compressed || continues {
            let message = self.message.as_mut().expect("a compressed message");
            message.wire += raw.len() as u64 + len;
            if message.wire > self.wire_limit() {
                self.fail_message(out, true);
                return rest;
            }
            self.frame = Some(Frame {
                left: len,
                compressed: Some((header.mask, 0)),
                is_final: header.is_final,
            });
            if len == 0 {
                self.end_frame(out);
            }
        } else {
            // Control frames and uncompressed data frames go through as they are.
            out.extend_from_slice(raw);
            if len > 0 {
                self.frame = Some(Frame { left: len, compressed: None, is_final: header.is_final });
            }
        }
        rest
    }

    fn inflate_payload<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        let frame = self.frame.as_mut().expect("a compressed frame");
        let n = input.len().min(usize::try_from(frame.left).unwrap_or(usize::MAX));
        let (mask, offset) = frame.compressed.as_mut().expect("compressed");
        let mut chunk = input[..n].to_vec();
        if let Some(key) = mask {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b ^= key[(*offset + i) % 4];
            }
        }
        *offset += n;
        frame.left -= n as u64;
        let frame_done = frame.left == 0;
        if !self.inflate(&chunk) {
            self.fail_message(out, false);
            return &input[n..];
        }
        if frame_done {
            self.end_frame(out);
        }
        &input[n..]
    }

    /// Inflate `compressed` into the message; false when it is bad data or too big.
    fn inflate(&mut self, compressed: &[u8]) -> bool {
        let limit = self.max_message;
        let message = self.message.as_mut().expect("a compressed message");
        let start = message.inflate.total_in();
        loop {
            let consumed = (message.inflate.total_in() - start) as usize;
            if consumed == compressed.len() && message.plain.len() < message.plain.capacity() {
                return true;
            }
            // Room for at most one byte past the limit: enough to know it was passed.
            let room = (limit + 1).saturating_sub(message.plain.len());
            if room == 0 {
                return false;
            }
            message.plain.reserve(room.min(64 * 1024));
            let before = (message.inflate.total_in(), message.plain.len());
            match message.inflate.decompress_vec(
                &compressed[consumed..],
                &mut message.plain,
                FlushDecompress::Sync,
            ) {
                Ok(Status::StreamEnd) => return message.plain.len() <= limit,
                Ok(_) => {}
                Err(_) => return false,
            }
            if message.plain.len() > limit {
                return false;
            }
            if (message.inflate.total_in(), message.plain.len()) == before {
                // No progress: all input taken and nothing more to produce.
                return (message.inflate.total_in() - start) as usize == compressed.len();
            }
        }
    }

    fn end_frame(&mut self, out: &mut Vec<u8>) {
        let is_final = self.frame.take().is_some_and(|f| f.is_final);
        if !is_final {
            return;
        }
        if !self.inflate(&TAIL) {
            self.fail_message(out, false);
            return;
        }
        let mut message = self.message.take().expect("a compressed message");
        let header = FrameHeader {
            is_final: true,
            opcode: message.opcode,
            mask: message.mask,
            ..FrameHeader::default()
        };
        header.format(message.plain.len() as u64, out).expect("writing to a Vec cannot fail");
        if let Some(key) = message.mask {
            for (i, b) in message.plain.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        out.extend_from_slice(&message.plain);
    }

    /// The most a compressed message may take on the wire, headers included: the plain limit,
    /// plus what DEFLATE adds to data it cannot shrink (a few bytes per block) and room for
    /// frame headers.
    fn wire_limit(&self) -> u64 {
        let max = self.max_message as u64;
        max + max / 128 + 1024
    }

    /// The message cannot be delivered: too big, inflated or on the wire (`too_big`: announce
    /// a frame over the limit, 1009), or bad data (a header with RSV1 set: 1002).
    fn fail_message(&mut self, out: &mut Vec<u8>, too_big: bool) {
        let message = self.message.take().expect("a compressed message");
        let too_big = too_big || message.plain.len() > self.max_message;
        let header = FrameHeader {
            is_final: true,
            rsv1: !too_big,
            opcode: message.opcode,
            mask: message.mask,
            ..FrameHeader::default()
        };
        let announced = if too_big { self.max_message as u64 + 1 } else { 0 };
        header.format(announced, out).expect("writing to a Vec cannot fail");
        self.fail();
    }

    fn fail(&mut self) {
        self.failed = true;
        self.frame = None;
        self.message = None;
        self.header_len = 0;
    }
}
