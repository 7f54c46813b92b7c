//! What can go wrong with a request to the client.

/// Why a request to the client failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Disconnected and the offline queue is full; the message was not queued.
    #[error("offline queue full ({0} messages waiting for a connection); message not sent")]
    QueueFull(usize),
    /// The client has stopped (closed by the application or gave up); nothing more is sent.
    #[error("the client has stopped")]
    Stopped,
    /// The request does not apply in this mode (e.g. publish in raw mode).
    #[error("{0}")]
    WrongMode(&'static str),
    /// A query (presence) needs an open connection, and there is none now (or it ended
    /// before the answer came). Retry after [`crate::Event::Open`].
    #[error("not connected: a query needs an open connection; retry once it is open")]
    NotConnected,
    /// The server refused the command.
    #[error("the server refused: {}: {}", .0.code, .0.message)]
    Refused(tether_core::protocol::ErrorBody),
}
