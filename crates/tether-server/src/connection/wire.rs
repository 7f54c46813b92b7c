//! The wire a connection's session is carried over: a WebSocket (`active`), or an HTTP
//! response that streams (`streaming`: HTTP-streaming and SSE sessions, issue 21). The
//! session's decisions — replies, subscriptions with their replays, the server's orders, every
//! close — are carried out once, in `actions` and `orders`, over either; this trait is what
//! they need from the wire. Only what is about the wire differs: how a message is framed and
//! written, who else may write (a WebSocket's publishers write to its socket directly), and
//! how a close is told.

use super::*;

pub(super) trait Wire: Send {
    /// From now until the next write completes, publishers queue rather than write directly:
    /// a subscription must not meet a publisher before its watermark exists.
    fn hold(&mut self);

    /// Write `msg` now if nothing is queued ahead of it; otherwise give it back, to be queued
    /// behind what is (the order the peer sees is the order things happened).
    fn send_now(
        &mut self,
        conn: &Connection,
        msg: Message,
    ) -> impl Future<Output = Result<Option<Message>, WriteFailed>> + Send;

    /// Write these messages, chunk by chunk, with nothing between them (a reply and its
    /// replay): live publications wait in the mailbox meanwhile.
    fn write_chunks(
        &mut self,
        conn: &Connection,
        chunks: &mut (dyn Iterator<Item = Vec<Message>> + Send),
    ) -> impl Future<Output = Result<(), WriteFailed>> + Send;

    /// End the connection from the server's side: the advice, then the wire's own ending.
    fn close(&mut self, conn: &mut Connection, close: Close)
        -> impl Future<Output = Ending> + Send;
}

impl Wire for Ws {
    fn hold(&mut self) {
        self.get_mut().hold();
    }

    async fn send_now(
        &mut self,
        conn: &Connection,
        msg: Message,
    ) -> Result<Option<Message>, WriteFailed> {
        if !self.get_mut().hold_if_idle() {
            return Ok(Some(msg));
        }
        // Nothing is waiting to go out before it: write it now (a ping-pong round trip then
        // costs one pass of the loop, not two).
        conn.write_one(self, msg).await.map(|()| None)
    }

    async fn write_chunks(
        &mut self,
        conn: &Connection,
        chunks: &mut (dyn Iterator<Item = Vec<Message>> + Send),
    ) -> Result<(), WriteFailed> {
        conn.write_replay(self, chunks).await
    }

    async fn close(&mut self, conn: &mut Connection, close: Close) -> Ending {
        conn.close(self, close).await
    }
}
