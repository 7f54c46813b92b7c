//! What the client tells the application.

use serde_json::value::RawValue;
use std::fmt;
use std::time::Duration;
use tether_core::close_code::{CloseCode, Initiator};
use tether_core::protocol::{ClientInfo, ErrorBody, PresenceChange};
use tether_core::reconnect::StopReason;
use tokio_tungstenite::tungstenite::Bytes;

/// Why and how a connection (or a connect attempt) ended, and what happens next.
#[derive(Clone, Debug, PartialEq)]
pub struct CloseInfo {
    /// Close code: from the close frame, or 1006 (no handshake), 4000 (heartbeat timeout).
    pub code: u16,
    pub reason: String,
    /// True when the closing handshake completed.
    pub was_clean: bool,
    pub initiator: Initiator,
    /// Whether the client will reconnect.
    pub will_reconnect: bool,
    /// When it will, after how long.
    pub retry_in: Option<Duration>,
    /// The number of the reconnect attempt that comes next (1 = first retry after a healthy
    /// connection); 0 when the client stops.
    pub attempt: u32,
    /// The transport the connection (or attempt) had.
    pub transport: crate::config::Transport,
}

impl fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "code={} ({}) reason={:?} was_clean={} initiator={}",
            self.code,
            CloseCode(self.code).info().name,
            self.reason,
            self.was_clean,
            self.initiator
        )?;
        if self.transport != crate::config::Transport::WebSocket {
            write!(f, " transport={}", self.transport.as_str())?;
        }
        match self.retry_in {
            Some(d) if self.will_reconnect => {
                write!(f, "; reconnecting in {:.3}s (attempt {})", d.as_secs_f64(), self.attempt)
            }
            _ => write!(f, "; not reconnecting"),
        }
    }
}

#[derive(Debug)]
pub enum Event {
    /// A connect attempt starts (attempt 0 is the first connect).
    Connecting { attempt: u32 },
    /// The WebSocket is open. `reconnected` is false only for the very first connection.
    Open { reconnected: bool },
    /// The server confirmed a subscription (`resubscribe` after a reconnect), or made one
    /// itself: the token's (`user_channel`, the `channels` claim), once `connect` is answered,
    /// or the server API's.
    /// `recovered`: after a resubscribe that asked to recover, whether every missed publication
    /// was replayed (they arrive as `Publication` events); `Some(false)`: refetch your state,
    /// and `reason` says why it was not recovered.
    Subscribed {
        channel: String,
        resubscribe: bool,
        recovered: Option<bool>,
        reason: Option<String>,
    },
    /// The server ended a subscription it had made (the server API's `unsubscribe`).
    Unsubscribed { channel: String },
    /// A publication on a subscribed channel (JSON mode).
    Publication { channel: String, offset: u64, epoch: String, data: Box<RawValue> },
    /// A change to a `join_leave` channel's membership: a subscription began (`Join`) or ended
    /// (`Leave`), or a user's first began (`UserJoin`) or last ended (`UserLeave`). A busy
    /// channel's changes come in batches, once per server interval; each is its own event.
    Presence { channel: String, change: PresenceChange, info: ClientInfo },
    /// A text message that is not a publication (raw mode: every text message).
    Message(String),
    /// A binary message, its bytes exactly as received (after inflating, when the server
    /// compressed it). Tether's JSON protocol is text; binary messages come from raw-mode
    /// servers.
    Binary(Bytes),
    /// The server answered a command with an error, or reported an error.
    CommandError { id: Option<u64>, error: ErrorBody },
    /// The connection ended (or a connect attempt failed).
    Closed(CloseInfo),
    /// The client stopped for good; no more events follow.
    Stopped { reason: StopReason },
}
