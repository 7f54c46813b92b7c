//! The connection a session runs on: a WebSocket, or an HTTP-streaming session that looks like
//! one to the session loop (see `http_stream`).

use super::http_stream::HttpStream;
use super::*;

pub(super) enum Link {
    Ws(Box<Ws>),
    Stream(Box<HttpStream>),
}

impl Link {
    /// Queue a message; [`Link::flush`] sends what was queued.
    pub async fn feed(&mut self, msg: Message) -> Result<(), WsError> {
        match self {
            Link::Ws(ws) => ws.feed(msg).await,
            Link::Stream(s) => s.feed(msg),
        }
    }

    pub async fn flush(&mut self) -> Result<(), WsError> {
        match self {
            Link::Ws(ws) => ws.flush().await,
            Link::Stream(s) => s.flush().await,
        }
    }

    pub async fn send(&mut self, msg: Message) -> Result<(), WsError> {
        self.feed(msg).await?;
        self.flush().await
    }

    pub async fn next(&mut self) -> Option<Result<Message, WsError>> {
        match self {
            Link::Ws(ws) => ws.next().await,
            Link::Stream(s) => s.next().await,
        }
    }
}
