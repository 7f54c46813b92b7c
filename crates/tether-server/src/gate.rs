//! The one way out to an active connection's socket.
//!
//! Two kinds of writer share a connection's socket: publishers, which write a publication's
//! frame straight to it when the connection's task is not writing (`mailbox::direct`, decision
//! 0008), and the task itself, which writes through tungstenite (pongs, its heartbeat Ping,
//! replies, replays, the close) or gathers frames past it. A direct write the socket takes only
//! in part leaves the rest of its frame queued for the task; anything the task wrote before that
//! rest would land inside the frame and corrupt the stream for good.
//!
//! So every byte the task writes passes through this [`Gate`], the I/O object under the
//! connection's WebSocket: before anything else goes out it holds the write side (publishers
//! queue from then on) and finishes a frame a publisher left half-written. That holds whatever
//! the write is and whoever starts it — including the pong tungstenite flushes by itself while
//! reading. The task releases the write side through the gate only, once a flush has emptied
//! tungstenite's buffer; the gate keeps holding while it has a half-written frame of its own.

use crate::mailbox::OutboundQueue;
use crate::metrics::Metrics;
use crate::publication::Published;
use crate::transport::Transport;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(crate) struct Gate {
    transport: Transport,
    queue: Arc<OutboundQueue>,
    metrics: Arc<Metrics>,
    /// This gate holds the write side: publishers are queueing (the mailbox's `WRITING`).
    held: bool,
    /// A publication a publisher began to write, taken from the mailbox, and how many bytes of
    /// its frame are out.
    partial: Option<(Arc<Published>, usize)>,
    /// The connection's permessage-deflate window (0: none), which picks a publication's frame.
    window: u8,
}

impl Gate {
    pub fn new(transport: Transport, queue: Arc<OutboundQueue>, metrics: Arc<Metrics>) -> Self {
        let window = queue.window();
        Gate { transport, queue, metrics, held: false, partial: None, window }
    }

    /// The transport, for parking. Only between writes: nothing half-written may be left.
    pub fn into_transport(self) -> Transport {
        debug_assert!(self.partial.is_none(), "a half-written frame would be lost");
        self.transport
    }

    /// Whether the connection may park: nothing half-read, nothing half-written.
    pub fn can_park(&self) -> bool {
        self.partial.is_none() && self.transport.can_park()
    }

    /// The connection took a message from the WebSocket layer (see `FrameBoundary::took`).
    pub fn took_message(&mut self) {
        self.transport.took_message();
    }

    /// Hold the write side for good or until [`Gate::release`].
    pub fn hold(&mut self) {
        if !self.held {
            self.partial = self.queue.hold_for_write();
            self.held = true;
        }
    }

    /// Hold the write side if nothing is queued ahead: a reply may then go out at once.
    pub fn hold_if_idle(&mut self) -> bool {
        if self.held {
            // Held already (a write is in progress): only an empty queue lets a reply cut in.
            return self.partial.is_none() && self.queue.is_empty() && !self.queue.overflowed();
        }
        self.held = self.queue.hold_if_idle();
        self.held
    }

    /// Let publishers write directly again: the task has flushed everything it wrote (and
    /// wrote or passed over every item it popped). Kept while a half-written frame is still
    /// this gate's to finish.
    pub fn release(&mut self) {
        if self.partial.is_none() {
            self.held = false;
            self.queue.release();
        }
    }

    /// Before any write: hold the write side and finish a half-written frame.
    fn poll_clear(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.hold();
        while let Some((publication, written)) = &mut self.partial {
            let wire = publication.wire_for(self.window).unwrap_or_default();
            let Some(rest) = wire.get(*written..).filter(|r| !r.is_empty()) else {
                self.metrics.messages_out.inc();
                self.metrics.bytes_out.inc_by(publication.payload.len() as u64);
                self.partial = None;
                break;
            };
            let n = ready!(Pin::new(&mut self.transport).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_clear(cx))?;
        Pin::new(&mut this.transport).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_clear(cx))?;
        Pin::new(&mut this.transport).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.transport.is_write_vectored()
    }

    /// A flush finishes a half-written frame too: the task releases the write side after one.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.partial.is_some() {
            ready!(this.poll_clear(cx))?;
        }
        Pin::new(&mut this.transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_clear(cx))?;
        Pin::new(&mut this.transport).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::io::Write;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// A masked client frame.
    fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let key = [9, 8, 7, 6];
        let header = FrameHeader { opcode, mask: Some(key), ..FrameHeader::default() };
        let mut out = Vec::new();
        header.format(payload.len() as u64, &mut out).unwrap();
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        out
    }

    /// tungstenite reads what the socket has, and returns one message at a time: frames read
    /// but not yet returned live only in its buffer, which parking drops. Found by the splice
    /// test in CI: a command sent together with a Ping was never answered.
    #[tokio::test]
    async fn a_message_read_but_not_yet_taken_keeps_the_connection_from_parking() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let queue = Arc::new(OutboundQueue::new(8, 1 << 20));
        let gate = Gate::new(Transport::from_tcp(server), queue, Arc::new(Metrics::new()));
        let mut ws = WebSocketStream::from_raw_socket(gate, Role::Server, None).await;
        // Two frames in one write: the server's first read takes both.
        let mut bytes = client_frame(OpCode::Control(Control::Ping), b"a");
        bytes.extend(client_frame(OpCode::Data(Data::Text), b"{\"id\":1,\"cmd\":\"ping\"}"));
        client.write_all(&bytes).unwrap();

        let first = ws.next().await.unwrap().unwrap();
        assert!(matches!(first, Message::Ping(_)), "{first:?}");
        ws.get_mut().took_message();
        assert!(
            !ws.get_ref().can_park(),
            "the command is read but not taken: parking now would drop it"
        );
        let second = ws.next().await.unwrap().unwrap();
        assert!(matches!(second, Message::Text(_)), "{second:?}");
        ws.get_mut().took_message();
        assert!(ws.get_ref().can_park(), "everything read was taken");
    }
}
