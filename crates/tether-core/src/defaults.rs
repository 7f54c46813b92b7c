//! Every default in one place, with the reason for its value. Configuration structs in the server
//! and client crates take their defaults from here, and `docs/configuration.md` prints them.

use std::time::Duration;

/// Address `tether serve` listens on with no configuration: loopback only, so a first run never
/// exposes an unauthenticated gateway to the network.
pub const LISTEN: &str = "127.0.0.1:8080";

/// Server ping cadence. 25 s sits safely under the 60 s idle timeouts of nginx
/// (`proxy_read_timeout`) and common cloud load balancers — under them, never equal to them.
pub const PING_INTERVAL: Duration = Duration::from_secs(25);

/// Extra silence tolerated after a ping before the peer is declared dead. A connection with
/// nothing inbound for `PING_INTERVAL + PONG_TIMEOUT` (35 s) is dropped.
pub const PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest inbound message. Bigger ones close the connection with 1009.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Outbound messages queued for one connection before it is closed as a slow consumer (1013).
pub const OUTBOUND_QUEUE_MESSAGES: usize = 1024;

/// How long one write to a peer may block (its TCP window is full) before it is a slow consumer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Channels one connection may be subscribed to at once.
pub const MAX_SUBSCRIPTIONS_PER_CONNECTION: usize = 128;

/// Longest channel name, in bytes.
pub const MAX_CHANNEL_NAME_LEN: usize = 128;

/// Deepest nesting of arrays and objects accepted in a command or a publication's data. Deeper
/// documents are refused before parsing: parsers elsewhere (browsers, other languages) may
/// recurse on them.
pub const MAX_JSON_DEPTH: usize = 32;

/// How long graceful shutdown waits for clients to finish their closing handshake.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing handshake may take before the socket is simply dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Reconnect hint sent with 1012 on shutdown: clients wait between 1× and 2× this, so that a
/// restart does not bring every client back in the same millisecond.
pub const RESTART_RETRY_HINT: Duration = Duration::from_millis(500);

/// Read buffer per WebSocket connection (the chunk one read asks for; a large message grows the
/// buffer as it arrives). tungstenite's 128 KiB default would cost ~137 KB of server memory per
/// idle connection (decision 0001); 1 KiB instead of 4 KiB saved another 3.5 KB per idle
/// connection here, and a gateway's inbound traffic is small (pings, commands).
pub const READ_BUFFER_SIZE: usize = 1024;

/// Reconnect backoff: first delay ceiling, cap and growth factor (full jitter under the ceiling).
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
pub const BACKOFF_FACTOR: f64 = 2.0;

/// A connection that stayed up this long resets the backoff to its first step.
pub const MIN_UPTIME: Duration = Duration::from_secs(5);

/// Client heartbeat: the client pings every interval and gives the server interval + timeout to
/// show any sign of life. Generous on purpose: browsers throttle timers in background tabs.
pub const CLIENT_PING_INTERVAL: Duration = Duration::from_secs(25);
pub const CLIENT_PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// Messages a client buffers while disconnected; one more is an error to the caller.
pub const CLIENT_OFFLINE_QUEUE: usize = 1000;

/// Raw mode heartbeat strings, as browser code has used them for a decade.
pub const RAW_PING: &str = "ping";
pub const RAW_PONG: &str = "pong";

/// The JSON subprotocol name.
pub const SUBPROTOCOL_JSON: &str = "tether.v1.json";
