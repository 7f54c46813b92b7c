//! How a connection ends: the closes the server decides ([`Close`], one constructor per
//! reason, so the code, the reason text and the retry advice are chosen in one place) and what
//! is logged and counted once it has ended ([`Ending`]).
//!
//! A `Close` is an intent: the transport carries it out (for a WebSocket, the advice message in
//! JSON mode, the close frame, waiting for the peer's reply) and reports the [`Ending`].

use crate::config::{GatewayConfig, ShutdownClose};
use crate::publication::Mode;
use std::time::Duration;
use tether_core::close_code::{CloseCode, Initiator, RetryAdvice};
use tether_core::protocol::{Disconnect, ServerMessage};

/// How a connection ended: logged once and counted once.
#[derive(Debug)]
pub(crate) struct Ending {
    pub code: CloseCode,
    pub reason: String,
    pub initiator: Initiator,
    pub was_clean: bool,
}

impl Ending {
    /// The connection was lost under us: no close frame either way (1006).
    pub fn network(reason: impl Into<String>) -> Self {
        Ending {
            code: CloseCode::ABNORMAL,
            reason: reason.into(),
            initiator: Initiator::Network,
            was_clean: false,
        }
    }

    /// The server ended it without a closing handshake (one could not get through).
    pub fn server(code: CloseCode, reason: impl Into<String>) -> Self {
        Ending { code, reason: reason.into(), initiator: Initiator::Server, was_clean: false }
    }

    /// The peer showed no sign of life within `ping_interval + pong_timeout`: the socket is
    /// closed without a handshake (a dead peer would not answer one).
    pub fn heartbeat_timeout() -> Self {
        Ending::server(CloseCode::HEARTBEAT_TIMEOUT, "heartbeat timeout")
    }
}

/// A close the server decided on, for the transport to carry out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: CloseCode,
    pub reason: String,
    /// When the client should come back (`retry_after_ms` of the advice).
    pub retry_after: Option<Duration>,
    /// The inbound stream is broken (a protocol error, an oversized message): do not wait for
    /// the peer's close reply, drain and half-close instead.
    pub stream_failed: bool,
}

impl Close {
    pub fn new(code: CloseCode, reason: impl Into<String>) -> Self {
        Close { code, reason: reason.into(), retry_after: None, stream_failed: false }
    }

    fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = Some(hint);
        self
    }

    /// The inbound stream is broken: see [`Close::stream_failed`].
    pub fn after_stream_failure(mut self) -> Self {
        self.stream_failed = true;
        self
    }

    pub fn shutdown(config: &GatewayConfig) -> Self {
        let reason = "server shutting down";
        match config.shutdown_close {
            ShutdownClose::Restart => Close::new(CloseCode::SERVICE_RESTART, reason)
                .retry_after(config.restart_retry_hint),
            ShutdownClose::GoingAway => Close::new(CloseCode::GOING_AWAY, reason),
        }
    }

    /// A publication is missing from this connection's live feed.
    pub fn gap(config: &GatewayConfig) -> Self {
        let reason = "gap in the live feed: resubscribe to recover";
        Close::new(CloseCode::SERVICE_RESTART, reason).retry_after(config.restart_retry_hint)
    }

    pub fn slow_consumer() -> Self {
        Close::new(CloseCode::SLOW_CONSUMER, "slow consumer: outbound queue full")
    }

    pub fn rate_limited(config: &GatewayConfig) -> Self {
        let reason =
            format!("rate limit: more than {} messages per second", config.max_inbound_rate);
        Close::new(CloseCode::POLICY_VIOLATION, reason).after_stream_failure()
    }

    /// A quiet spell (`idle_probe`) ran its course: nothing on the path cut the connection.
    pub fn idle_probe_over() -> Self {
        Close::new(CloseCode::NORMAL, "idle probe over: nothing cut this silent connection")
    }

    pub fn token_expired() -> Self {
        let reason = "token expired: fetch a fresh token and reconnect";
        Close::new(CloseCode::TOKEN_EXPIRED, reason)
    }

    pub fn token_invalid(why: &str) -> Self {
        Close::new(CloseCode::TOKEN_INVALID, format!("token not accepted: {why}"))
    }

    pub fn token_required(channel: &str) -> Self {
        let reason = format!("a token is required for `{channel}`: send `connect` first");
        Close::new(CloseCode::TOKEN_REQUIRED, reason)
    }

    /// The broker cannot be reached: without a stream position a subscription promises
    /// nothing, so the client comes back when it is reachable again.
    pub fn broker_unavailable() -> Self {
        Close::new(CloseCode::TRY_AGAIN_LATER, "broker unavailable")
            .retry_after(Duration::from_secs(1))
    }

    /// What a JSON-mode client is told before the close frame: the code, the reason, whether
    /// to reconnect and when. Other modes get the close frame alone.
    pub fn advice(&self, mode: Mode) -> Option<ServerMessage> {
        (mode == Mode::Json).then(|| {
            ServerMessage::Disconnect(Disconnect {
                code: self.code,
                reason: self.reason.clone(),
                reconnect: self.code.advice() != RetryAdvice::Stop,
                retry_after_ms: self.retry_after.map(|d| d.as_millis() as u64),
            })
        })
    }

    /// The reason as a close frame may carry it: at most 123 bytes (RFC 6455 §5.5), cut on a
    /// character boundary.
    pub fn wire_reason(&self) -> &str {
        let mut end = self.reason.len().min(123);
        while !self.reason.is_char_boundary(end) {
            end -= 1;
        }
        &self.reason[..end]
    }

    /// What the connection's log and metrics record once the close is done.
    pub fn ending(self, was_clean: bool) -> Ending {
        Ending { code: self.code, reason: self.reason, initiator: Initiator::Server, was_clean }
    }
}
