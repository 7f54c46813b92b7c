//! The streaming sessions on this node (HTTP-streaming and SSE, where the client has no socket
//! to write to), each with the inbox its commands are handed to. A client `POST`s its commands
//! to `/stream/send` on whichever node its balancer picks; that node hands them here when the
//! session is its own, or through the broker to the node that holds it (see
//! `Broker::hand`), which hands them here. No sticky sessions.
//!
//! A session id is `NODE-CONN.SECRET`: the node that holds it, the connection (together its
//! client id), and 64 random bits, so that knowing a client id (presence shows them) does not
//! let anyone speak for it.

pub use crate::control::{Handed, SessionId};
use crate::publication::ConnId;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Command batches a session's inbox holds before a sender is told to slow down.
pub const INBOX_BATCHES: usize = 16;

struct Inbox {
    secret: u64,
    tx: mpsc::Sender<Bytes>,
    /// A batch found the inbox full and was dropped (see [`Sessions::overrun`]).
    overrun: bool,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<ConnId, Inbox>>,
}

impl Sessions {
    /// Session `conn` opened; its commands come out of the returned inbox.
    pub fn add(&self, conn: ConnId, secret: u64) -> mpsc::Receiver<Bytes> {
        let (tx, rx) = mpsc::channel(INBOX_BATCHES);
        crate::sync::lock(&self.map).insert(conn, Inbox { secret, tx, overrun: false });
        rx
    }

    pub fn remove(&self, conn: ConnId) {
        crate::sync::lock(&self.map).remove(&conn);
    }

    pub fn len(&self) -> usize {
        crate::sync::lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand a batch of commands to session `id` of this node. A batch that finds the inbox full
    /// is dropped and the session marked: it must end, since its client may already have been
    /// told the batch was taken (through the broker, answers come before the hand-over).
    pub fn hand(&self, id: &SessionId, batch: Bytes) -> Handed {
        let mut map = crate::sync::lock(&self.map);
        let Some(inbox) = map.get_mut(&id.conn).filter(|i| i.secret == id.secret) else {
            return Handed::Unknown;
        };
        match inbox.tx.try_send(batch) {
            Ok(()) => Handed::Delivered,
            Err(mpsc::error::TrySendError::Full(_)) => {
                inbox.overrun = true;
                Handed::Full
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Handed::Unknown,
        }
    }

    /// Whether a batch for session `conn` was dropped because its inbox was full.
    pub fn overrun(&self, conn: ConnId) -> bool {
        crate::sync::lock(&self.map).get(&conn).is_some_and(|i| i.overrun)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_node_the_connection_and_a_secret() {
        let id = SessionId::format("1a2b3c4d5e6f-2a", 0xfeed);
        let parsed = SessionId::parse(&id).unwrap();
        assert_eq!(parsed, SessionId { node: "1a2b3c4d5e6f", conn: 0x2a, secret: 0xfeed });
        for bad in
            ["", "x", "node-2a", "node-zz.0000000000000001", "node-2a.1", "-2a.0000000000000001x"]
        {
            assert_eq!(SessionId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_batch_reaches_only_the_session_whose_secret_it_names_and_inboxes_are_bounded() {
        let sessions = Sessions::default();
        let mut rx = sessions.add(7, 42);
        let good = SessionId { node: "n", conn: 7, secret: 42 };
        let forged = SessionId { secret: 43, ..SessionId { node: "n", conn: 7, secret: 0 } };
        assert_eq!(sessions.hand(&forged, Bytes::from_static(b"x")), Handed::Unknown);
        for _ in 0..INBOX_BATCHES {
            assert_eq!(sessions.hand(&good, Bytes::from_static(b"x")), Handed::Delivered);
        }
        assert!(!sessions.overrun(7));
        assert_eq!(sessions.hand(&good, Bytes::from_static(b"x")), Handed::Full);
        assert!(sessions.overrun(7), "the session must end: a batch was lost");
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"x"));
        sessions.remove(7);
        assert_eq!(sessions.hand(&good, Bytes::from_static(b"x")), Handed::Unknown);
        assert!(sessions.is_empty());
    }
}
