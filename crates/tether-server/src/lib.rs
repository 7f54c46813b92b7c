//! # tether-server: the Tether gateway as a library
//!
//! Mount it into an existing axum application (`gateway.router()` beside your routes, sharing
//! your listener) or run it alone (`gateway.serve(listener, signal)`; that is what `tether serve`
//! does). A map of the modules:
//!
//! - [`config`] — [`GatewayConfig`]: every setting with its default and meaning.
//! - [`gateway`] — [`Gateway`]: owner of everything; routes, publishing, graceful shutdown.
//! - `upgrade` — the HTTP → WebSocket handshake: subprotocol → mode, limits, refusals as JSON.
//! - `connection` — one task per connection: heartbeat, commands, outbound queue, close diagnostics.
//! - `gate` — the one way out to an active connection's socket: finishes a half-written frame first.
//! - `transport` — the socket under a connection, and whether tungstenite holds a partial frame.
//! - `sys` — the only `unsafe` code: sends on borrowed sockets (without SIGPIPE), the epoll set.
//! - `parking` — where idle connections wait without WebSocket state or timers of their own.
//! - [`hub`] — which connection listens to which channel; one-encode fan-out; slow-consumer flags.
//! - [`broker`] — the [`Broker`] seam (in-memory now; Redis backplane later).
//! - `api` — `POST /api/publish`, `GET /healthz`, `GET /metrics`.
//! - [`metrics`] — the Prometheus registry.
//! - [`stats`] — the dashboard's once-a-second sampler, published on `_tether:dashboard`.
//! - [`svg_chart`] — server-rendered SVG line charts for the dashboard.
//! - `web` — the embedded browser assets: `/tether.js`, the dashboard, the plain example.
//!
//! The protocol itself (commands, codec, close codes, heartbeat and reconnect state machines)
//! lives in `tether-core`, with no I/O.

mod api;
pub mod auth;
pub mod broker;
pub mod config;
mod connection;
mod dashboard;
pub mod forwarded;
mod gate;
pub mod gateway;
pub mod host;
pub mod hub;
mod mailbox;
pub mod metrics;
pub mod origin;
mod parking;
mod pending;
pub mod per_ip;
mod publication;
pub mod stats;
pub mod svg_chart;
mod sync;
mod sys;
pub mod tls;
mod transport;
mod upgrade;
mod web;

pub use broker::{Broker, MemoryBroker};
pub use config::{FanoutSweep, GatewayConfig, ShutdownClose};
pub use gateway::{DrainReport, Gateway, GatewayError, PublishError};
