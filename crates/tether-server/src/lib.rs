//! # tether-server: the Tether gateway as a library
//!
//! Mount it into an existing axum application (`gateway.router()` beside your routes, sharing
//! your listener) or run it alone (`gateway.serve(listener, signal)`; that is what `tether serve`
//! does).
//!
//! ## Layers
//! Bottom up. A module imports only modules of lower layers (checked by
//! `tether-core/tests/layers.rs`, which reads this list); docs/architecture.md walks through them.
//! 1. `sys`, `sync`, `svg_chart`, `tls`, `web`, `forwarded`, `origin`, `publication`
//! 2. `metrics`, `config`, `per_ip`, `stats`
//! 3. `auth`, `pending`, `mailbox`, `handshake`, `presence`, `control`
//! 4. `parking`, `hub`, `broker`
//! 5. `transport`, `dashboard`, `session`
//! 6. `gate`, `node`
//! 7. `connection`, `api`, `admission`
//! 8. `host`, `upgrade`, `sse`, `stream`, `listener`
//! 9. `gateway`
//!
//! What each holds:
//! - `sys` — the only `unsafe` code: sends on borrowed sockets (without SIGPIPE), the epoll set.
//! - `sync` — the one lock-poisoning policy.
//! - [`svg_chart`] — server-rendered SVG line charts for the dashboard; `web` — the embedded
//!   browser assets (`/tether.js`, the dashboard, the plain example); [`tls`] — rustls setup.
//! - [`forwarded`] — the client address behind trusted proxies; [`origin`] — which browser
//!   origins may connect.
//! - `publication` — a publication as it goes out: rendered, framed once (plain and
//!   compressed), fragmented.
//! - [`metrics`] — the Prometheus registry; [`config`] — [`GatewayConfig`], every setting, and
//!   the `[[channel]]` blocks that decide each channel's options;
//!   [`per_ip`] — per-client limits; [`stats`] — round trips and closes for the dashboard.
//! - [`auth`] — JWT verification; `pending` — connections not yet WebSockets, capped;
//!   `mailbox` — a connection's outbound queue, and the direct-write handle publishers write
//!   through (`mailbox::direct`, which states its invariant).
//! - `presence` — who is subscribed to presence channels on this node (the broker shares it);
//!   `control` — what the server API orders a user's connections to do (subscribe,
//!   unsubscribe, disconnect), as data every node's broker link carries.
//! - `parking` — where idle connections wait without WebSocket state or timers of their own;
//!   [`hub`] — which connection listens to which channel; one-encode fan-out, sweeps.
//! - [`broker`] — the [`Broker`] seam (memory, Redis), delivering to this node's subscribers
//!   through `broker::LocalSubscribers` (the hub, never named).
//! - `transport` — the socket under a connection, and whether tungstenite holds a partial
//!   frame; `dashboard` — the once-a-second sampler published on `_tether:dashboard`;
//!   `session` — what a peer may say and what the server answers, sans-I/O: commands,
//!   subscriptions with recovery, access and token expiry, heartbeat decisions, every close.
//! - `gate` — the one way out to an active connection's socket; `node` — the state every
//!   route and connection task shares.
//! - `connection` — one task per connection: heartbeat, commands, close diagnostics; `api` —
//!   `POST /api/publish`, health, metrics, heap profiles; `admission` — what every connection
//!   must pass first (per-address limits, token, a slot), WebSocket or SSE.
//! - `handshake` (layer 3) — the WebSocket handshake as data: validation and answers.
//! - `sse` — `GET /sse?channel=`: a channel's publications as Server-Sent Events for any
//!   `EventSource`, recovered from `Last-Event-ID`; `stream` — sessions over plain HTTP
//!   (`POST /stream`, `GET /stream/sse`) and `POST /stream/send`, which any node takes.
//! - [`host`] — the DNS-rebinding guard in front of every route; `upgrade` — the HTTP →
//!   WebSocket upgrade: admission order, hand-over to a connection task; `listener` — `tether serve`'s own HTTP
//!   server: accept loop, pending-handshake cap, TLS, hyper.
//! - [`gateway`] — [`Gateway`], the public façade: routes, publishing, serving, shutdown.
//!
//! The protocol itself (commands, codec, close codes, heartbeat and reconnect state machines)
//! lives in `tether-core`, with no I/O.

mod admission;
mod api;
pub mod auth;
pub mod broker;
pub mod config;
mod connection;
pub mod control;
mod dashboard;
pub mod forwarded;
mod gate;
pub mod gateway;
mod handshake;
pub mod host;
pub mod hub;
mod listener;
mod mailbox;
pub mod metrics;
mod node;
pub mod origin;
mod parking;
mod pending;
pub mod per_ip;
pub mod presence;
mod publication;
mod session;
mod sse;
pub mod stats;
mod stream;
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
