//! What the server API asks of a user's connections, as data: subscribe them to a channel,
//! unsubscribe them, disconnect them. An order goes to every node (the broker carries it: in
//! memory, or over Redis pub/sub to every node); each node hands it to the connections of that
//! user it holds (`hub::users`), and each connection's own task carries it out, the one writer
//! of its socket.
//!
//! Also here: the questions the API's cluster-wide `channels` and `info` ask every node, and
//! the ids of streaming sessions, whose commands the broker carries to the node holding them.

use crate::publication::ConnId;
use serde::{Deserialize, Serialize};

/// One order for every connection of `user`, on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOrder {
    pub user: String,
    #[serde(flatten)]
    pub act: Act,
}

/// What a connection does when ordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Act {
    /// Subscribe to `channel` (a server-side subscription: no access check, the API decided),
    /// and tell the client (`{"type": "subscribed", …}`).
    Subscribe { channel: String },
    /// End the subscription to `channel`, and tell the client (`{"type": "unsubscribed", …}`).
    Unsubscribe { channel: String },
    /// Close with this code and reason (the client is advised by the code: 4000–4499
    /// reconnect, 4500–4999 stop).
    Disconnect { code: u16, reason: String },
}

/// Orders waiting for one connection's task at most; one more is dropped (and counted in
/// `tether_user_orders_dropped_total`): a connection this far behind is not taking anything.
pub const MAX_PENDING_ORDERS: usize = 64;

/// A question every node answers about itself, for the server API's cluster-wide `channels`
/// and `info` (each node's answer is a JSON value; see `node.rs` for what it holds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ask", rename_all = "snake_case")]
pub enum Question {
    /// This node's channels with subscribers (matching `pattern`), with their counts.
    Channels { pattern: Option<String> },
    /// This node: name, version, uptime, connections, subscriptions.
    Info,
}

/// Every node's answer to a [`Question`], and how many nodes received it but did not answer in
/// time (a node that is busy, or dying).
#[derive(Debug, Default)]
pub struct Answers {
    pub answers: Vec<serde_json::Value>,
    pub missing: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_travel_as_flat_json() {
        let order = UserOrder {
            user: "ada".into(),
            act: Act::Disconnect { code: 4500, reason: "bye".into() },
        };
        let text = serde_json::to_string(&order).unwrap();
        assert_eq!(text, r#"{"user":"ada","op":"disconnect","code":4500,"reason":"bye"}"#);
        assert_eq!(serde_json::from_str::<UserOrder>(&text).unwrap(), order);
    }
}

/// What became of a batch of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    /// In the session's inbox (or, through Redis, on its way to the node that holds it).
    Delivered,
    /// No such session here (it ended, or never was), or its node is gone.
    Unknown,
    /// Its inbox is full: the session is not keeping up with its own client.
    Full,
}

/// A session id, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub struct SessionId<'a> {
    pub node: &'a str,
    pub conn: ConnId,
    pub secret: u64,
}

impl<'a> SessionId<'a> {
    /// The id of connection `conn` of node `node` (`client` is its client id, `NODE-CONN`).
    pub fn format(client: &str, secret: u64) -> String {
        format!("{client}.{secret:016x}")
    }

    pub fn parse(id: &'a str) -> Option<Self> {
        let (client, secret) = id.split_once('.')?;
        let (node, conn) = client.rsplit_once('-')?;
        let conn = ConnId::from_str_radix(conn, 16).ok()?;
        let secret = u64::from_str_radix(secret, 16).ok().filter(|_| secret.len() == 16)?;
        Some(SessionId { node, conn, secret })
    }
}
