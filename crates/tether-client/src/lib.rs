//! # tether-client: a WebSocket client that explains every close and reconnects by itself
//!
//! ```no_run
//! # async fn demo() {
//! use tether_client::{connect, ClientConfig, Event};
//! let (client, mut events) = connect(ClientConfig::new("ws://127.0.0.1:8080/ws"));
//! client.subscribe("news").await.unwrap();
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Publication { channel, data, .. } => println!("{channel}: {}", data.get()),
//!         Event::Closed(info) => println!("closed: {info}"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! A map of the modules:
//! - [`config`] — [`ClientConfig`]: URL, mode, transports, heartbeat, reconnect policy,
//!   compression, queue sizes.
//! - [`event`] — [`Event`] and [`CloseInfo`]: everything the application is told.
//! - [`client`] — [`Client`], the cheap handle the application calls (subscribe, publish, send
//!   text or binary, close).
//! - `supervisor` — the one task that owns the connection (a WebSocket, or an HTTP-streaming
//!   session where WebSocket cannot get through): connect, run a session, decide
//!   (with `tether_core::reconnect`) whether and when to reconnect. One task, so one reconnect
//!   in flight, however many errors and closes fire together.
//!
//! ## Layers
//! Bottom up; a module imports only those of lower layers (checked by
//! `tether-core/tests/layers.rs`):
//! 1. `config`, `error`, `stats`, `inflating_stream`
//! 2. `event`
//! 3. `supervisor`
//! 4. `client`

pub mod client;
pub mod config;
pub mod error;
pub mod event;
mod inflating_stream;
pub mod stats;
mod supervisor;

pub use client::{connect, Client, Events, PresenceStats};
pub use config::{ClientConfig, Mode, Transport};
pub use error::ClientError;
pub use event::{CloseInfo, Event};
pub use stats::ClientStats;
/// The TLS settings the client dials with (webpki roots plus `extra`), for tools that open
/// their own connections, such as `tether doctor`.
pub use supervisor::tls_config;
pub use tether_core::close_code::Initiator;
pub use tether_core::protocol::{ClientInfo, PresenceChange};
pub use tether_core::reconnect::{ReconnectPolicy, StopReason};
/// The byte buffer of binary messages ([`Event::Binary`], [`Client::send_binary`]): the
/// `bytes` crate's, as tungstenite uses it, so a received message is echoed without a copy.
pub use tokio_tungstenite::tungstenite::Bytes;
