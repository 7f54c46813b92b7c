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
}
