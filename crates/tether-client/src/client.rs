//! The application's handle on a connection that outlives any one socket.

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::event::Event;
use crate::stats::ClientStats;
use crate::supervisor::{Request, Supervisor};
use serde_json::value::RawValue;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Bytes;

/// A handle to the client. Clone it freely; the connection lives until [`Client::close`] or
/// until the reconnect policy stops it.
#[derive(Clone)]
pub struct Client {
    requests: mpsc::Sender<Request>,
    stats: Arc<ClientStats>,
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
    tokio::spawn(Supervisor::new(config, requests_rx, events_tx, stats.clone()).run());
    (Client { requests, stats }, Events { rx })
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
}
