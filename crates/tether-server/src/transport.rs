//! The byte stream under a connection's WebSocket, and what it knows about frame boundaries.
//!
//! An idle connection is *parked*: its WebSocket state (tungstenite's context, its read buffer,
//! the waker proxies) is dropped, and only this transport is kept, waiting for readability
//! without any buffer. That is only safe when tungstenite holds nothing half-read: no partial
//! frame in its buffer and no fragmented message in progress. tungstenite does not expose that,
//! so the transport follows the frame structure of the bytes it hands over, using tungstenite's
//! own header parser ([`FrameBoundary`]).
//!
//! While parked, a plain TCP socket also leaves tokio's reactor for the parking lot's epoll set
//! ([`Transport::leave_reactor`] / [`Transport::rejoin_reactor`]; see `parking.rs`).

use bytes::{Buf, Bytes};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use std::io;
use std::io::Cursor;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

/// The longest frame header: 2 bytes, a 64-bit length, a 4-byte mask (RFC 6455 §5.2).
const MAX_HEADER: usize = 14;

/// Where the inbound byte stream stands relative to WebSocket frames and messages.
#[derive(Debug, Default)]
pub(crate) struct FrameBoundary {
    /// Bytes of a frame header received so far (a header is at most 14 bytes).
    header: [u8; MAX_HEADER],
    header_len: u8,
    /// Payload bytes of the current frame still to come (frames over 4 GiB are refused by
    /// tungstenite's `max_frame_size` anyway; the tracker gives up on them).
    payload_left: u32,
    /// A fragmented data message has begun and its final frame has not been seen.
    in_message: bool,
    /// The current frame ends a message (a control frame, or a data frame marked final).
    ends_message: bool,
    /// Messages handed over whole that the connection has not taken yet ([`FrameBoundary::took`]):
    /// tungstenite reads whatever the socket has and returns one message at a time, so the rest
    /// lives only in its buffer, which parking would drop.
    unread: u32,
    /// The stream could not be followed (a header tungstenite will refuse too): never claim rest.
    lost: bool,
}

impl FrameBoundary {
    /// Account for bytes handed to the WebSocket layer, in order.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = bytes.len().min(self.payload_left as usize);
                self.payload_left -= n as u32;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let had = self.header_len as usize;
            let take = bytes.len().min(self.header.len() - had);
            self.header[had..had + take].copy_from_slice(&bytes[..take]);
            let mut cursor = Cursor::new(&self.header[..had + take]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    let used = cursor.position() as usize - had;
                    bytes = &bytes[used..];
                    self.header_len = 0;
                    let Ok(len) = u32::try_from(len) else {
                        self.lost = true;
                        return;
                    };
                    self.payload_left = len;
                    self.ends_message = match header.opcode {
                        OpCode::Data(Data::Continue) => {
                            if header.is_final {
                                self.in_message = false;
                            }
                            header.is_final
                        }
                        OpCode::Data(_) => {
                            self.in_message = !header.is_final;
                            header.is_final
                        }
                        OpCode::Control(_) => true,
                    };
                    if len == 0 {
                        self.frame_done();
                    }
                }
                Ok(None) => {
                    self.header_len = (had + take) as u8;
                    bytes = &bytes[take..];
                }
                Err(_) => self.lost = true,
            }
        }
    }

    /// A frame's last byte was handed over.
    fn frame_done(&mut self) {
        if self.ends_message {
            self.unread = self.unread.saturating_add(1);
        }
    }

    /// The connection took one message from the WebSocket layer (every message it returns
    /// ends with one frame counted in `unread`: a control frame or a final data frame).
    pub fn took(&mut self) {
        self.unread = self.unread.saturating_sub(1);
    }

    /// True between messages: every byte handed over belongs to a complete frame, no
    /// fragmented message is in progress, and every message handed over was taken.
    pub fn at_rest(&self) -> bool {
        !self.lost
            && self.header_len == 0
            && self.payload_left == 0
            && !self.in_message
            && self.unread == 0
    }
}

enum Io {
    /// A plain TCP socket (hyper's own HTTP/1 server hands it over as such): parked on its
    /// readiness, without reading.
    Tcp(TcpStream),
    /// The same socket while parked in the parking lot's epoll set, out of tokio's reactor.
    Watched(std::net::TcpStream),
    /// Lost while moving between reactors (an error is then pending).
    Detached,
    /// Whatever else the HTTP server upgraded (axum::serve's version-sniffing wrapper, TLS):
    /// parked by a small read whose bytes are kept for the WebSocket layer. Boxed: the largest
    /// variant by far (56 bytes against 32), which every parked plain socket would carry.
    Other(Box<TokioIo<Upgraded>>),
}

/// How many bytes a parked connection of the `Other` kind reads at once to notice activity.
const PARKED_READ: usize = 128;

/// A connection's socket. Reads are tracked by a [`FrameBoundary`].
pub(crate) struct Transport {
    io: Io,
    /// Bytes read but not yet handed to the WebSocket layer: what hyper read past the HTTP
    /// request, or what a parked read found.
    /// Boxed: rarely present, and this struct lives in every parked connection.
    prefix: Option<Box<Bytes>>,
    /// An error a parked read met, reported to the WebSocket layer on its first read.
    error: Option<io::Error>,
    boundary: FrameBoundary,
    /// permessage-deflate negotiated: compressed messages from the peer are inflated into plain
    /// frames before the WebSocket layer reads them (boxed: most connections have none).
    inflating: Option<Box<Inflate>>,
}

/// The inbound permessage-deflate rewriter and what it produced that was not handed over yet.
struct Inflate {
    rewriter: tether_core::permessage_deflate::Inflating,
    pending: tether_core::permessage_deflate::Pending,
}

impl Transport {
    /// Take the upgraded connection apart when it is a plain TCP socket.
    pub fn new(upgraded: Upgraded) -> Self {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut boundary = FrameBoundary::default();
                boundary.feed(&parts.read_buf);
                let prefix = (!parts.read_buf.is_empty()).then(|| Box::new(parts.read_buf));
                Transport {
                    io: Io::Tcp(parts.io.into_inner()),
                    prefix,
                    error: None,
                    boundary,
                    inflating: None,
                }
            }
            Err(upgraded) => Transport {
                io: Io::Other(Box::new(TokioIo::new(upgraded))),
                prefix: None,
                error: None,
                boundary: FrameBoundary::default(),
                inflating: None,
            },
        }
    }

    /// A plain TCP socket with nothing read yet (tests build connections without hyper).
    #[cfg(test)]
    pub fn from_tcp(tcp: TcpStream) -> Self {
        Transport {
            io: Io::Tcp(tcp),
            prefix: None,
            error: None,
            boundary: FrameBoundary::default(),
            inflating: None,
        }
    }

    /// The connection took a message from the WebSocket layer.
    pub fn took_message(&mut self) {
        self.boundary.took();
    }

    /// Inflate compressed messages from now on (the connection negotiated permessage-deflate),
    /// refusing any that inflates beyond `max_message` bytes.
    pub fn inflate(&mut self, max_message: usize) {
        // From here on the boundary follows the rewritten stream, which starts with whatever
        // is already buffered.
        self.boundary = FrameBoundary::default();
        self.inflating = Some(Box::new(Inflate {
            rewriter: tether_core::permessage_deflate::Inflating::new(max_message),
            pending: Default::default(),
        }));
    }

    pub fn inflates(&self) -> bool {
        self.inflating.is_some()
    }

    /// The socket, when it is a plain TCP socket (in tokio's reactor or, parked, in the lot's
    /// epoll set): publishers may then write to it directly (see `mailbox::direct`).
    pub fn direct_socket(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.io {
            Io::Tcp(s) => Some(s.as_raw_fd()),
            Io::Watched(s) => Some(s.as_raw_fd()),
            _ => None,
        }
    }

    /// Whether this connection may be parked now: nothing half-read by the WebSocket layer.
    pub fn can_park(&self) -> bool {
        self.prefix.is_none()
            && self.error.is_none()
            && self.boundary.at_rest()
            && self.inflating.as_ref().is_none_or(|i| i.rewriter.at_rest() && i.pending.is_empty())
    }

    /// Drop the inflater between messages: a parked connection keeps no permessage-deflate
    /// state at all (its mailbox remembers the extension was agreed, and the connection makes a
    /// new inflater when it wakes).
    pub fn shrink(&mut self) {
        let idle = |i: &Inflate| i.rewriter.at_rest() && i.pending.is_empty();
        if self.inflating.as_deref().is_some_and(idle) {
            self.inflating = None;
        }
    }

    /// Move a plain socket out of tokio's reactor into the lot's epoll set (see `parking.rs`).
    /// Anything else, or a failure, leaves it where it is: parking still works, at tokio's cost.
    pub fn leave_reactor(&mut self, lot: &crate::parking::ParkingLot, key: usize) {
        use std::os::fd::AsRawFd;
        if !matches!(self.io, Io::Tcp(_)) || !lot.has_reactor() {
            return;
        }
        let Io::Tcp(tcp) = std::mem::replace(&mut self.io, Io::Detached) else { return };
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                self.error = Some(e);
                return;
            }
        };
        if lot.watch(key, std.as_raw_fd()).is_ok() {
            self.io = Io::Watched(std);
        } else {
            self.io = match TcpStream::from_std(std) {
                Ok(tcp) => Io::Tcp(tcp),
                Err(e) => {
                    self.error = Some(e);
                    Io::Detached
                }
            };
        }
    }

    /// Back into tokio's reactor, before the WebSocket layer uses the socket again.
    pub fn rejoin_reactor(&mut self, lot: &crate::parking::ParkingLot) {
        use std::os::fd::AsRawFd;
        if let Io::Watched(std) = &self.io {
            lot.unwatch(std.as_raw_fd());
            let Io::Watched(std) = std::mem::replace(&mut self.io, Io::Detached) else { return };
            match TcpStream::from_std(std) {
                Ok(tcp) => self.io = Io::Tcp(tcp),
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// Ready when the parked peer did something: sent data, ended the stream, or failed.
    /// Registers the waker.
    pub fn poll_activity(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.prefix.is_some() || self.error.is_some() {
            return Poll::Ready(());
        }
        match &mut self.io {
            Io::Tcp(tcp) => tcp.poll_read_ready(cx).map(|_| ()),
            // The lot's reactor reports through the mailbox.
            Io::Watched(_) => Poll::Pending,
            Io::Detached => Poll::Ready(()),
            Io::Other(io) => {
                // No readiness API on an upgraded stream: read a little and keep what came.
                let mut scratch = [0u8; PARKED_READ];
                let mut buf = ReadBuf::new(&mut scratch);
                match Pin::new(io).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Ok(())) => {
                        if self.inflating.is_none() {
                            self.boundary.feed(buf.filled());
                        }
                        let read = buf.filled();
                        // Nothing read (the end of the stream) leaves no prefix: the next read
                        // reports the end again.
                        self.prefix =
                            (!read.is_empty()).then(|| Box::new(Bytes::copy_from_slice(read)));
                        Poll::Ready(())
                    }
                    Poll::Ready(Err(e)) => {
                        self.error = Some(e);
                        Poll::Ready(())
                    }
                }
            }
        }
    }
}

impl Transport {
    /// `poll_read` with permessage-deflate: raw bytes (what was buffered first, then the
    /// socket) go through the rewriter, and the WebSocket layer gets its output.
    fn poll_read_inflating(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let inflate = self.inflating.as_mut().expect("inflating");
            if !inflate.pending.is_empty() {
                let boundary = &mut self.boundary;
                inflate.pending.take(buf.remaining(), |out| {
                    buf.put_slice(out);
                    boundary.feed(out);
                });
                return Poll::Ready(Ok(()));
            }
            if let Some(prefix) = self.prefix.take() {
                inflate.rewriter.feed(&prefix, inflate.pending.buffer());
                continue;
            }
            let mut scratch = [0u8; 8192];
            let mut raw = ReadBuf::new(&mut scratch);
            let polled = match &mut self.io {
                Io::Tcp(s) => Pin::new(s).poll_read(cx, &mut raw),
                Io::Other(s) => Pin::new(s).poll_read(cx, &mut raw),
                Io::Watched(_) | Io::Detached => return Poll::Ready(Err(not_in_reactor())),
            };
            match polled {
                Poll::Ready(Ok(())) if raw.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => {
                    inflate.rewriter.feed(raw.filled(), inflate.pending.buffer())
                }
                other => return other,
            }
        }
    }
}

/// I/O on a socket that is not in tokio's reactor: a bug, or the socket was lost on the way.
fn not_in_reactor() -> io::Error {
    io::Error::other("socket is not registered with the runtime")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        if this.inflating.is_some() {
            return this.poll_read_inflating(cx, buf);
        }
        if let Some(prefix) = this.prefix.as_mut() {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if prefix.is_empty() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = match &mut this.io {
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Io::Other(s) => Pin::new(s).poll_read(cx, buf),
            Io::Watched(_) | Io::Detached => return Poll::Ready(Err(not_in_reactor())),
        };
        if let Poll::Ready(Ok(())) = polled {
            this.boundary.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Io::Other(s) => Pin::new(s).poll_write(cx, buf),
            Io::Watched(_) | Io::Detached => Poll::Ready(Err(not_in_reactor())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
            Io::Other(s) => Pin::new(s).poll_flush(cx),
            Io::Watched(_) | Io::Detached => Poll::Ready(Err(not_in_reactor())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Io::Other(s) => Pin::new(s).poll_shutdown(cx),
            Io::Watched(_) | Io::Detached => Poll::Ready(Err(not_in_reactor())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            // tokio's `writev` has no MSG_NOSIGNAL: a reset peer would raise SIGPIPE (see `sys`).
            Io::Tcp(s) => loop {
                std::task::ready!(s.poll_write_ready(cx))?;
                let sent = s.try_io(tokio::io::Interest::WRITABLE, || {
                    use std::os::fd::AsFd;
                    crate::sys::send_vectored(s.as_fd(), bufs)
                });
                match sent {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    other => return Poll::Ready(other),
                }
            },
            Io::Other(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Watched(_) | Io::Detached => Poll::Ready(Err(not_in_reactor())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Tcp(s) => s.is_write_vectored(),
            Io::Other(s) => s.is_write_vectored(),
            Io::Watched(_) | Io::Detached => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::Control;

    /// A client frame as it appears on the wire (masked; the payload's content does not matter).
    fn wire(opcode: OpCode, fin: bool, payload: &[u8]) -> Vec<u8> {
        let header =
            FrameHeader { is_final: fin, opcode, mask: Some([1, 2, 3, 4]), ..Default::default() };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn whole_frames_leave_it_at_rest_partial_ones_do_not() {
        let mut b = FrameBoundary::default();
        assert!(b.at_rest());
        let text = wire(OpCode::Data(Data::Text), true, b"hello");
        b.feed(&text[..3]);
        assert!(!b.at_rest(), "half a header");
        b.feed(&text[3..8]);
        assert!(!b.at_rest(), "header, part of the payload");
        b.feed(&text[8..]);
        assert!(!b.at_rest(), "a whole message, not taken yet");
        b.took();
        assert!(b.at_rest());
    }

    #[test]
    fn follows_frames_split_anywhere_and_batched_together() {
        let big = vec![7u8; 70_000]; // 64-bit length header
        let mut stream = wire(OpCode::Data(Data::Binary), true, &big);
        stream.extend(wire(OpCode::Control(Control::Ping), true, b""));
        stream.extend(wire(OpCode::Data(Data::Text), true, &[b'x'; 300])); // 16-bit length
        for chunk in [1usize, 2, 13, 14, 15, 1000, 100_000] {
            let mut b = FrameBoundary::default();
            for piece in stream.chunks(chunk) {
                b.feed(piece);
            }
            assert!(!b.at_rest(), "three messages not taken, chunk size {chunk}");
            for _ in 0..3 {
                b.took();
            }
            assert!(b.at_rest(), "chunk size {chunk}");
        }
    }

    #[test]
    fn a_fragmented_message_is_not_rest_until_its_final_frame() {
        let mut b = FrameBoundary::default();
        b.feed(&wire(OpCode::Data(Data::Text), false, b"hel"));
        assert!(!b.at_rest());
        b.feed(&wire(OpCode::Control(Control::Ping), true, b"")); // control frames interleave
        assert!(!b.at_rest());
        b.took(); // the Ping
        b.feed(&wire(OpCode::Data(Data::Continue), true, b"lo"));
        assert!(!b.at_rest(), "the message, not taken yet");
        b.took();
        assert!(b.at_rest());
    }
}
