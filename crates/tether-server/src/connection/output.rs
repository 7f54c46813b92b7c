//! Everything the connection's task writes: replies and queued publications in batches,
//! through tungstenite or, for ready-framed publications, straight to the socket. (The window
//! in which publishers may write to it directly is `mailbox::DirectWindow`.)

use super::*;

/// Feed one message to the socket, as fragments when it is large (see `FRAGMENT`).
pub(super) async fn feed(ws: &mut Ws, msg: Message) -> Result<(), WsError> {
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
pub(super) async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, ()> {
    let mut future = std::pin::pin!(future);
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => tokio::time::timeout(limit, future).await.map_err(|_| ()),
    }
}

/// Largest outbound messages written before one flush.
pub(super) const WRITE_BATCH: usize = 64;

impl Connection {
    /// Write frames (large ones as fragments) and flush once, within `write_timeout`; counts
    /// the data messages among them.
    pub(super) async fn write_frames(
        &self,
        ws: &mut Ws,
        frames: Vec<Message>,
    ) -> Result<(), WriteFailed> {
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
    pub(super) async fn write_one(&self, ws: &mut Ws, msg: Message) -> Result<(), WriteFailed> {
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
    pub(super) fn written(
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

    pub(super) async fn flush(&self, ws: &mut Ws) -> Result<(), WriteFailed> {
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
    pub(super) async fn write_batch(
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
pub(super) async fn write_frame(ws: &mut Ws, mut rest: &[u8]) -> Result<(), WsError> {
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

/// Pre-framed publications gathered for one vectored write, each with how many bytes of its
/// frame already went out (a publisher's direct write may have sent a first part), and the
/// connection's permessage-deflate window (0: it takes no compressed frames).
pub(super) struct Framed(SmallVec<[(Arc<Published>, usize); FRAMED_BATCH]>, u8);

/// Publications per vectored write (`writev` takes up to 1024 slices; a few dozen frames already
/// fill a socket buffer's worth of small messages).
pub(super) const FRAMED_BATCH: usize = 16;

impl Framed {
    pub(super) fn new(window: u8) -> Self {
        Framed(SmallVec::new(), window)
    }

    pub(super) fn is_full(&self) -> bool {
        self.0.len() == FRAMED_BATCH
    }

    pub(super) fn push(&mut self, p: Arc<Published>, written: usize) {
        self.0.push((p, written));
    }

    /// What is left to write of a gathered publication (the compressed frame for a connection
    /// that negotiated permessage-deflate).
    pub(super) fn rest(item: &(Arc<Published>, usize), window: u8) -> &[u8] {
        let wire = item.0.wire_for(window).unwrap_or_default();
        wire.get(item.1..).unwrap_or_default()
    }

    /// Write everything gathered, directly to the socket. Frames must never interleave, so
    /// whatever went to tungstenite's buffer before (`fed`) is flushed first; otherwise that
    /// buffer is empty here: every write path flushes, and so does reading a ping (the one
    /// frame tungstenite queues by itself).
    pub(super) async fn write(&mut self, ws: &mut Ws, fed: &mut bool) -> Result<(), WsError> {
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
