//! The client's byte stream under tungstenite, for permessage-deflate: everything up to the end
//! of the server's HTTP response passes through untouched; if that response agreed to the
//! extension, every byte after it goes through `tether_core`'s inflating rewriter, so that
//! tungstenite (which knows no extensions) reads compressed messages as plain frames.
//!
//! The switch happens inside the stream, at the exact byte where the response head ends: the
//! handshake may read frames past the head in the same read, so it could not be turned on
//! after `client_async` returns. Writes pass through: the messages the client compresses
//! (`ClientConfig::compress_sends`) are framed compressed, RSV1 set, before tungstenite.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tether_core::permessage_deflate::{client_accepts, Inflating, Pending};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct InflatingStream<S> {
    inner: S,
    /// Still in the HTTP response head: the bytes of it so far (bounded), or `None` after it.
    head: Option<Vec<u8>>,
    /// Whether the client offered the extension.
    offered: bool,
    /// After the head, when the server agreed.
    rewriter: Option<Inflating>,
    max_message: usize,
    /// Bytes not yet handed to tungstenite.
    pending: Pending,
}

/// A response head longer than this is not one (tungstenite will refuse it anyway).
const MAX_HEAD: usize = 64 * 1024;

impl<S> InflatingStream<S> {
    pub fn new(inner: S, offered: bool, max_message: usize) -> Self {
        InflatingStream {
            inner,
            head: Some(Vec::new()),
            offered,
            rewriter: None,
            max_message,
            pending: Pending::default(),
        }
    }

    /// Take in bytes read from the server.
    fn take_in(&mut self, mut bytes: &[u8]) {
        if let Some(head) = self.head.as_mut() {
            let end = find_head_end(head, bytes);
            let (part, rest) = bytes.split_at(end.unwrap_or(bytes.len()));
            if head.len() < MAX_HEAD {
                head.extend_from_slice(part);
            }
            self.pending.buffer().extend_from_slice(part);
            bytes = rest;
            if end.is_none() {
                return;
            }
            let head = self.head.take().expect("in the head");
            let agreed = extensions_header(&head);
            if self.offered && client_accepts(agreed.as_deref()) == Ok(true) {
                self.rewriter = Some(Inflating::new(self.max_message));
            }
        }
        match self.rewriter.as_mut() {
            Some(rewriter) => rewriter.feed(bytes, self.pending.buffer()),
            None => self.pending.buffer().extend_from_slice(bytes),
        }
    }
}

/// Where in `bytes` the head ends (just past its blank line), given what came before.
fn find_head_end(before: &[u8], bytes: &[u8]) -> Option<usize> {
    let tail = &before[before.len().saturating_sub(3)..];
    let joined: Vec<u8> = tail.iter().chain(bytes.iter()).copied().collect();
    joined.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4 - tail.len())
}

/// The `Sec-WebSocket-Extensions` value of a response head, if any.
fn extensions_header(head: &[u8]) -> Option<String> {
    String::from_utf8_lossy(head).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-extensions")
            .then(|| value.trim().to_owned())
    })
}

impl<S: AsyncRead + Unpin> AsyncRead for InflatingStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                this.pending.take(buf.remaining(), |out| buf.put_slice(out));
                return Poll::Ready(Ok(()));
            }
            let mut scratch = [0u8; 8192];
            let mut raw = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw) {
                Poll::Ready(Ok(())) if raw.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => this.take_in(raw.filled()),
                other => return other,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for InflatingStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_core::permessage_deflate::{compressed_text_frame, SERVER_RESPONSE};

    fn run(offered: bool, extensions: Option<&str>, split: usize) -> Vec<u8> {
        let mut response = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n".to_vec();
        if let Some(e) = extensions {
            response.extend(format!("Sec-WebSocket-Extensions: {e}\r\n").as_bytes());
        }
        response.extend(b"\r\n");
        let head_len = response.len();
        response.extend(compressed_text_frame(&b"hello hello hello hello".repeat(8)));
        let mut stream = InflatingStream::new((), offered, 1 << 20);
        for piece in response.chunks(split) {
            stream.take_in(piece);
        }
        let mut out = Vec::new();
        stream.pending.take(usize::MAX, |bytes| out.extend_from_slice(bytes));
        assert_eq!(&out[..head_len], &response[..head_len], "the head passes untouched");
        out[head_len..].to_vec()
    }

    #[test]
    fn inflates_after_an_agreeing_head_wherever_the_reads_fall() {
        for split in [1, 2, 3, 5, 64, 4096] {
            let frame = run(true, Some(SERVER_RESPONSE), split);
            assert_eq!(frame[0], 0x81, "FIN + text, RSV1 clear (split {split})");
            assert_eq!(frame[1], 126, "a 16-bit length follows");
            assert_eq!(&frame[4..], &b"hello hello hello hello".repeat(8)[..]);
        }
    }

    #[test]
    fn passes_through_when_not_agreed_or_not_offered() {
        let compressed = compressed_text_frame(&b"hello hello hello hello".repeat(8));
        assert_eq!(run(true, None, 7), compressed);
        assert_eq!(run(false, Some(SERVER_RESPONSE), 7), compressed);
    }
}
