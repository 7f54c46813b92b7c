//! The server API's reach across nodes over Redis pub/sub: orders to a user's connections go
//! to every node on one channel (`tether:control`), and questions every node answers (the
//! cluster-wide `channels` and `info`) on another (`tether:survey`); each node answers on its
//! own channel (`tether:answer:NODE`). The asker learns from PUBLISH how many nodes heard the
//! question and waits, bounded, for that many answers. Commands for a streaming session held
//! by another node go to that node's own channel (`tether:session:NODE`): PUBLISH says
//! whether the node is there to take them. On a cluster all of these are sharded channels
//! (`SPUBLISH`/`SSUBSCRIBE`): a classic `PUBLISH` there counts only the receiving node's
//! subscribers, which would break those counts.

use super::redis_endpoint::Conn as ConnectionManager;
use super::{BrokerError, LocalSubscribers, Reach};
use crate::control::{Answers, Handed, Question, UserOrder};
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Orders for every node's connections.
pub const ORDERS: &str = "tether:control";
/// Questions for every node.
pub const SURVEYS: &str = "tether:survey";
const ANSWERS_PREFIX: &str = "tether:answer:";
const SESSIONS_PREFIX: &str = "tether:session:";
/// How long an asker waits for the nodes' answers.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);
/// Questions this node may have in flight at once (each holds a channel until answered).
const MAX_IN_FLIGHT: usize = 64;

#[derive(Serialize, Deserialize)]
struct Asked {
    id: u64,
    /// The asking node: where the answer goes.
    from: String,
    question: Question,
}

#[derive(Serialize, Deserialize)]
struct Answered {
    id: u64,
    answer: serde_json::Value,
}

/// This node's side of the surveys.
pub struct Control {
    node: String,
    waiting: Mutex<HashMap<u64, mpsc::Sender<serde_json::Value>>>,
    /// `waiting.len()`, as `tether_cluster_questions_waiting`.
    pub waiting_gauge: Gauge,
}

/// Takes a question's waiter out of the map however its asker ends (answered, timed out, or
/// dropped when the HTTP client goes away mid-wait).
struct Waiting<'a>(&'a Control, u64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = crate::sync::lock(&self.0.waiting);
        waiting.remove(&self.1);
        self.0.waiting_gauge.set(waiting.len() as i64);
    }
}

impl Control {
    pub fn new(node: String) -> Self {
        Control { node, waiting: Mutex::new(HashMap::new()), waiting_gauge: Gauge::default() }
    }

    /// The channel this node's answers come in on.
    pub fn answers_channel(&self) -> String {
        format!("{ANSWERS_PREFIX}{}", self.node)
    }

    /// The channel commands for this node's streaming sessions come in on.
    pub fn sessions_channel(&self) -> String {
        format!("{SESSIONS_PREFIX}{}", self.node)
    }

    /// Hand a batch of commands to `session` on `node`: `Unknown` when no node listens there
    /// (it is gone). Carried as the session id, a line break, then the batch.
    pub async fn hand(
        &self,
        commands: &mut ConnectionManager,
        node: &str,
        session: &str,
        batch: &[u8],
    ) -> redis::RedisResult<Handed> {
        let mut payload = Vec::with_capacity(session.len() + 1 + batch.len());
        payload.extend_from_slice(session.as_bytes());
        payload.push(b'\n');
        payload.extend_from_slice(batch);
        let to = format!("{SESSIONS_PREFIX}{node}");
        let nodes: usize = commands.publish().arg(to).arg(payload).query_async(commands).await?;
        Ok(if nodes == 0 { Handed::Unknown } else { Handed::Delivered })
    }

    /// Send `order` to every node.
    pub async fn order(
        &self,
        commands: &mut ConnectionManager,
        order: &UserOrder,
    ) -> redis::RedisResult<Reach> {
        let text = serde_json::to_string(order).expect("orders always serialize");
        let nodes: usize = commands.publish().arg(ORDERS).arg(text).query_async(commands).await?;
        Ok(Reach::Nodes(nodes))
    }

    /// Ask every node (this one too) and gather their answers.
    pub async fn ask(
        &self,
        commands: &mut ConnectionManager,
        question: Question,
    ) -> Result<Answers, BrokerError> {
        let id = rand::random::<u64>();
        let (tx, mut rx) = mpsc::channel(1024);
        {
            let mut waiting = crate::sync::lock(&self.waiting);
            if waiting.len() >= MAX_IN_FLIGHT {
                return Err(BrokerError::Limit(format!(
                    "{MAX_IN_FLIGHT} cluster-wide questions are in flight on this node; retry shortly"
                )));
            }
            waiting.insert(id, tx);
            self.waiting_gauge.set(waiting.len() as i64);
        }
        let _waiting = Waiting(self, id);
        let asked = Asked { id, from: self.node.clone(), question };
        let text = serde_json::to_string(&asked).expect("questions always serialize");
        let sent = commands.publish().arg(SURVEYS).arg(text).query_async::<usize>(commands).await;
        match sent {
            Ok(nodes) => {
                let mut answers = Vec::with_capacity(nodes);
                let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
                while answers.len() < nodes {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(answer)) => answers.push(answer),
                        _ => break,
                    }
                }
                let missing = nodes - answers.len();
                Ok(Answers { answers, missing })
            }
            Err(e) => Err(BrokerError::Unavailable(format!("Redis: {e}"))),
        }
    }

    /// A message on one of the control channels: carry out an order, answer a question (in the
    /// background: the pub/sub task never waits on Redis), or take an answer.
    pub fn on_message(
        &self,
        channel: &str,
        payload: &[u8],
        hub: &Arc<dyn LocalSubscribers>,
        commands: &ConnectionManager,
    ) -> bool {
        if channel == ORDERS {
            match serde_json::from_slice::<UserOrder>(payload) {
                Ok(order) => _ = hub.order(order),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed order on the Redis backplane; dropped")
                }
            }
        } else if channel == SURVEYS {
            let Ok(asked) = serde_json::from_slice::<Asked>(payload) else {
                tracing::warn!("malformed question on the Redis backplane; dropped");
                return true;
            };
            let answer = Answered { id: asked.id, answer: hub.answer(&asked.question) };
            let text = serde_json::to_string(&answer).expect("answers always serialize");
            let mut commands = commands.clone();
            tokio::spawn(async move {
                let to = format!("{ANSWERS_PREFIX}{}", asked.from);
                let sent: redis::RedisResult<u64> =
                    commands.publish().arg(to).arg(text).query_async(&mut commands).await;
                if let Err(e) = sent {
                    tracing::debug!(error = %e, "could not answer a cluster-wide question");
                }
            });
        } else if channel.strip_prefix(SESSIONS_PREFIX) == Some(self.node.as_str()) {
            let Some(cut) = payload.iter().position(|&b| b == b'\n') else { return true };
            let session = String::from_utf8_lossy(&payload[..cut]);
            let batch = bytes::Bytes::copy_from_slice(&payload[cut + 1..]);
            let handed = hub.hand(&session, batch);
            if handed != Handed::Delivered {
                tracing::debug!(%session, ?handed, "commands for a streaming session not taken");
            }
        } else if channel.strip_prefix(ANSWERS_PREFIX) == Some(self.node.as_str()) {
            let Ok(answered) = serde_json::from_slice::<Answered>(payload) else { return true };
            let waiting = crate::sync::lock(&self.waiting).get(&answered.id).cloned();
            if let Some(tx) = waiting {
                let _ = tx.try_send(answered.answer);
            }
        } else {
            return false;
        }
        true
    }
}
