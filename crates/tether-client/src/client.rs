//! The application's handle on a connection that outlives any one socket.

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::event::Event;
use crate::stats::ClientStats;
use crate::supervisor::{Request, Supervisor};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::sync::Arc;
use tether_core::protocol::{ClientCommand, ClientInfo, ReplyResult, StreamPosition};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Bytes;

/// A handle to the client. Clone it freely; the connection lives until [`Client::close`] or
/// until the reconnect policy stops it.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    stats: Arc<ClientStats>,
    client_id: Arc<std::sync::Mutex<Option<String>>>,
}

/// How many are in a presence channel ([`Client::presence_stats`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresenceStats {
    pub num_clients: u64,
    /// Distinct users; a client without a user counts as one of its own.
    pub num_users: u64,
}

/// The stream of [`Event`]s. Read it: when its buffer is full the client stops reading the socket.
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Stopped`].
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// Start a client: it connects in the background and reconnects by itself. Must be called
/// inside a tokio runtime.
pub fn connect(config: ClientConfig) -> (Client, Events) {
    let (requests, requests_rx) = mpsc::channel(64);
    let (events_tx, rx) = mpsc::channel(config.event_buffer.max(1));
    let stats = Arc::new(ClientStats::default());
    let client_id = Arc::new(std::sync::Mutex::new(None));
    let supervisor =
        Supervisor::new(config, requests_rx, events_tx, stats.clone(), client_id.clone());
    tokio::spawn(supervisor.run());
    (Client { requests, stats, client_id }, Events { rx })
}

impl Client {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ClientError>>) -> Request,
    ) -> Result<T, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.map_err(|_| ClientError::Stopped)?;
        rx.await.map_err(|_| ClientError::Stopped)?
    }

    /// Subscribe to a channel (JSON mode); kept across reconnects. Confirmation arrives as
    /// [`Event::Subscribed`], refusal as [`Event::CommandError`].
    pub async fn subscribe(&self, channel: &str) -> Result<(), ClientError> {
        let channel = channel.to_owned();
        self.request(|done| Request::Subscribe { channel, done }).await
    }

    pub async fn unsubscribe(&self, channel: &str) -> Result<(), ClientError> {
        let channel = channel.to_owned();
        self.request(|done| Request::Unsubscribe { channel, done }).await
    }

    /// Publish (JSON mode; the server must allow client publishing on the channel). Queued
    /// while disconnected.
    pub async fn publish(&self, channel: &str, data: Box<RawValue>) -> Result<(), ClientError> {
        let channel = channel.to_owned();
        self.request(|done| Request::Publish { channel, data, done }).await
    }

    /// Send a text message as is. Queued while disconnected.
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        let text = text.into();
        self.request(|done| Request::SendText { text, done }).await
    }

    /// Send a binary message as is. Queued while disconnected.
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        let data = data.into();
        self.request(|done| Request::SendBinary { data, done }).await
    }

    /// Close with 1000 and stop reconnecting. Resolves when the close is done.
    pub async fn close(&self) {
        let _ = self.request(|done| Request::Close { done }).await;
    }

    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// The id the server gave the current connection — how other clients see this one in
    /// presence. `None` until the server's first reply on a connection (sent right after it
    /// opens), and again while disconnected; a new connection has a new id.
    pub fn client_id(&self) -> Option<String> {
        self.client_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Who is in a presence channel this client is subscribed to, by client id (JSON mode,
    /// connected). Refused ([`ClientError::Refused`]) when not subscribed or the channel keeps
    /// no presence.
    pub async fn presence(
        &self,
        channel: &str,
    ) -> Result<BTreeMap<String, ClientInfo>, ClientError> {
        let channel = channel.to_owned();
        let command = Box::new(move |id| ClientCommand::Presence { id, channel });
        let result = self.request(|done| Request::Query { command, done }).await?;
        Ok(result.clients.unwrap_or_default())
    }

    /// A page of a subscribed channel's history (JSON mode, connected): the latest `limit`, or
    /// with `since` the first `limit` after it, newest first with `reverse`. The result's
    /// `publications`, `epoch` and `offset` (the channel's top); `recovered: Some(false)` with a
    /// `reason` when history no longer covers `since`.
    pub async fn history(
        &self,
        channel: &str,
        limit: u64,
        since: Option<StreamPosition>,
        reverse: bool,
    ) -> Result<ReplyResult, ClientError> {
        let channel = channel.to_owned();
        let command = Box::new(move |id| ClientCommand::History {
            id,
            channel,
            limit: Some(limit),
            since,
            reverse,
        });
        self.request(|done| Request::Query { command, done }).await
    }

    /// How many clients and distinct users are in a presence channel (as [`Client::presence`]).
    pub async fn presence_stats(&self, channel: &str) -> Result<PresenceStats, ClientError> {
        let channel = channel.to_owned();
        let command = Box::new(move |id| ClientCommand::PresenceStats { id, channel });
        let result = self.request(|done| Request::Query { command, done }).await?;
        Ok(PresenceStats {
            num_clients: result.num_clients.unwrap_or_default(),
            num_users: result.num_users.unwrap_or_default(),
        })
    }
}
