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
        match error {
            WsError::Capacity(e) => {
                let reason = format!("message too big: {e}");
                self.close(ws, CloseCode::MESSAGE_TOO_BIG, &reason, None, true).await
            }
            WsError::Utf8(_) => {
                self.close(
                    ws,
                    CloseCode::INVALID_PAYLOAD,
                    "text message is not valid UTF-8",
                    None,
                    true,
                )
                .await
            }
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
                Ending::network("connection reset without a closing handshake")
            }
            WsError::Protocol(e) => {
                let reason = format!("protocol error: {e}");
                self.close(ws, CloseCode::PROTOCOL_ERROR, &reason, None, true).await
            }
            WsError::Io(e) => Ending::network(format!("transport error: {e}")),
            WsError::ConnectionClosed | WsError::AlreadyClosed => {
                Ending::network("connection ended without a close frame")
            }
            other => {
                let reason = format!("internal error: {other}");
                self.close(ws, CloseCode::INTERNAL_ERROR, &reason, None, true).await
            }
        }
    }

    pub(super) fn write_failed(&self, e: WriteFailed) -> Ending {
        match e {
            WriteFailed::TimedOut => {
                self.shared.metrics.slow_consumers.inc();
                Ending {
                    code: CloseCode::SLOW_CONSUMER,
                    reason: format!(
                        "slow consumer: a write blocked for {:?} (write_timeout)",
                        self.shared.config.write_timeout
                    ),
                    initiator: Initiator::Server,
                    was_clean: false,
                }
            }
            WriteFailed::Overflowed => {
                self.shared.metrics.slow_consumers.inc();
                // No close frame: the socket is stuck in the middle of a frame.
                Ending {
                    code: CloseCode::SLOW_CONSUMER,
                    reason: "slow consumer: outbound queue full while a write was blocked".into(),
                    initiator: Initiator::Server,
                    was_clean: false,
                }
            }
            WriteFailed::Transport(e) => Ending::network(format!("write failed: {e}")),
        }
    }

    /// Server-initiated close: advice (JSON mode), close frame, then wait for the peer's reply —
    /// all within one `close_timeout`. After a read error the WebSocket stream is finished, so
    /// instead of waiting for a close frame we half-close and drain the raw socket until the peer
    /// closes: dropping it with unread data (say, the rest of an oversized message) would send a
    /// TCP reset that can overtake our close frame.
    pub(super) async fn close(
        &mut self,
        ws: &mut Ws,
        code: CloseCode,
        reason: &str,
        retry_after: Option<Duration>,
        stream_failed: bool,
    ) -> Ending {
        ws.get_mut().hold(); // for good: nothing may follow the close frame
                             // A close reason is at most 123 bytes on the wire (RFC 6455 §5.5).
        let mut wire_reason = reason.to_owned();
        while wire_reason.len() > 123 {
            wire_reason.pop();
        }
        let deadline = Instant::now() + self.shared.config.close_timeout;
        let sent = tokio::time::timeout_at(deadline, async {
            if self.mode == Mode::Json {
                let advice = ServerMessage::Disconnect(Disconnect {
                    code,
                    reason: reason.to_owned(),
                    reconnect: code.advice() != RetryAdvice::Stop,
                    retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
                });
                ws.feed(Message::Text(codec::encode(&advice).into())).await?;
            }
            let frame = CloseFrame { code: WireCode::from(code.0), reason: wire_reason.into() };
            ws.send(Message::Close(Some(frame))).await
        })
        .await;
        let mut was_clean = false;
        if matches!(sent, Ok(Ok(()))) && stream_failed {
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
        Ending { code, reason: reason.to_owned(), initiator: Initiator::Server, was_clean }
    }
}
