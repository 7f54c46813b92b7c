//! # tether-core: the sans-I/O heart of Tether
//!
//! Everything here is plain data and state machines. Nothing reads a socket, spawns a task or
//! looks at a clock: time comes in as an explicit `now`, randomness as an explicit number, bytes
//! as `&str`. The server, the client and the CLI are thin I/O shells around these pieces, and every
//! piece is tested without a network.
//!
//! A map for newcomers:
//!
//! - [`protocol`] — the `tether.v1.json` messages: client commands, server replies and pushes.
//! - [`codec`] — turning text frames into commands and server messages into text, with typed
//!   errors that become error replies (never a dropped connection).
//! - [`close_code`] — the close-code catalogue: every code Tether sends or reports, what it means,
//!   who sends it, and whether a client should reconnect. Shared by server, Rust client and docs.
//! - [`channel`] — channel-name rules and `*` patterns used in configuration.
//! - [`heartbeat`] — the liveness state machine: when to ping, when the peer is dead, round-trip time.
//! - [`backoff`] — exponential backoff with full jitter.
//! - [`reconnect`] — the reconnect policy: backoff plus "should we retry at all" plus server hints.
//! - [`stream`] — a channel's offsets, epoch and bounded history, and the recovery rule.
//! - [`defaults`] — every default value in one place, each with the reason for it.
//!
//! ## Layers
//! Bottom up. A module imports only modules of layers below its own (checked by
//! `tests/layers.rs`, which reads this list):
//! 1. `defaults`, `close_code`, `channel`, `rate`, `heartbeat`, `permessage_deflate`
//! 2. `protocol`, `backoff`
//! 3. `codec`, `stream`, `reconnect`

pub mod backoff;
pub mod channel;
pub mod close_code;
pub mod codec;
pub mod defaults;
pub mod heartbeat;
pub mod permessage_deflate;
pub mod protocol;
pub mod rate;
pub mod reconnect;
pub mod stream;

pub use close_code::{CloseCode, Initiator, RetryAdvice};
pub use protocol::{ClientCommand, ErrorCode, ServerMessage};
