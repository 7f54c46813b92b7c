//! Every way a connection ends: the peer's close, a read or write failure, and the
//! server's own closing handshake. Each produces one [`Ending`].

use super::*;

impl Connection {
    /// The peer sent a close frame; tungstenite queued our reply. Finish the handshake.
    pub(super) async fn peer_closed(&mut self, ws: &mut Ws, frame: Option<CloseFrame>) -> Ending {
        let (code, reason) = match frame {
            Some(f) => (CloseCode(u16::from(f.code)), f.reason.to_string()),
            None => (CloseCode::NO_STATUS, String::new()),
        };
        // tungstenite writes our close reply itself, from `next()`: nothing may follow it.
        ws.get_mut().hold();
        // Drive the stream until it ends: this flushes our close reply.
        let drained = tokio::time::timeout(self.shared.config.close_timeout, async {
            while ws.next().await.is_some() {}
        })
        .await;
        Ending { code, reason, initiator: Initiator::Client, was_clean: drained.is_ok() }
    }

    /// Map a read error to the close it calls for.
    pub(super) async fn read_failed(&mut self, ws: &mut Ws, error: WsError) -> Ending {
        let close = match error {
            WsError::Capacity(e) => {
                Close::new(CloseCode::MESSAGE_TOO_BIG, format!("message too big: {e}"))
            }
            WsError::Utf8(_) => {
                Close::new(CloseCode::INVALID_PAYLOAD, "text message is not valid UTF-8")
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                return Ending::network("connection reset without a closing handshake")
            }
            WsError::Protocol(e) => {
                Close::new(CloseCode::PROTOCOL_ERROR, format!("protocol error: {e}"))
            }
            WsError::Io(e) => return Ending::network(format!("transport error: {e}")),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                return Ending::network("connection ended without a close frame")
            }
            other => Close::new(CloseCode::INTERNAL_ERROR, format!("internal error: {other}")),
        };
        self.close(ws, close.after_stream_failure()).await
    }

    pub(super) fn write_failed(&self, e: WriteFailed) -> Ending {
        match e {
            WriteFailed::TimedOut => {
                self.shared.metrics.slow_consumers.inc();
                let timeout = self.shared.config.write_timeout;
                let reason =
                    format!("slow consumer: a write blocked for {timeout:?} (write_timeout)");
                Ending::server(CloseCode::SLOW_CONSUMER, reason)
            }
            WriteFailed::Overflowed => {
                self.shared.metrics.slow_consumers.inc();
                // No close frame: the socket is stuck in the middle of a frame.
                let reason = "slow consumer: outbound queue full while a write was blocked";
                Ending::server(CloseCode::SLOW_CONSUMER, reason)
            }
            WriteFailed::Transport(e) => Ending::network(format!("write failed: {e}")),
            WriteFailed::Gone => Ending::network("the reader went away"),
        }
    }

    /// Server-initiated close: advice (JSON mode), close frame, then wait for the peer's reply —
    /// all within one `close_timeout`. After a read error the WebSocket stream is finished, so
    /// instead of waiting for a close frame we half-close and drain the raw socket until the peer
    /// closes: dropping it with unread data (say, the rest of an oversized message) would send a
    /// TCP reset that can overtake our close frame.
    pub(super) async fn close(&mut self, ws: &mut Ws, close: Close) -> Ending {
        ws.get_mut().hold(); // for good: nothing may follow the close frame
        let deadline = Instant::now() + self.shared.config.close_timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            if let Some(advice) = close.advice(self.session.mode()) {
                ws.feed(Message::Text(codec::encode(&advice).into())).await?;
            }
            let frame = CloseFrame {
                code: WireCode::from(close.code.0),
                reason: close.wire_reason().to_owned().into(),
            };
            ws.send(Message::Close(Some(frame))).await
        })
        .await;
        let mut was_clean = false;
        if matches!(sent, Ok(Ok(()))) && close.stream_failed {
            // Lingering close: send FIN after the close frame, then discard input until the
            // peer closes its side too.
            let _ = tokio::time::timeout_at(deadline, async {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let io = ws.get_mut();
                let _ = io.shutdown().await;
                let mut scratch = [0u8; 4096];
                while matches!(io.read(&mut scratch).await, Ok(n) if n > 0) {}
            })
            .await;
        } else if matches!(sent, Ok(Ok(()))) {
            // Wait for the peer's close frame; anything else it still sends is discarded.
            let _ = tokio::time::timeout_at(deadline, async {
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Close(_)) => was_clean = true,
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
        }
        close.ending(was_clean)
    }
}
