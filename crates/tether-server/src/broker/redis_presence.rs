//! Presence across nodes, in Redis.
//!
//! Keys: `tether:pr:{CH}`, a hash with one field per subscription (client id → its
//! `ClientInfo` JSON), and `tether:node:ID`, a node's liveness (`PX presence_ttl`, set again
//! every third of it). A client id begins with its node's id (`ID-n`), so a reader keeps only
//! the entries of live nodes and deletes the others as it reads (one script). A node killed
//! with `kill -9` thus vanishes from every answer within `presence_ttl`, at the cost of one
//! `SET` per node per `presence_ttl / 3`, not a write per client (the per-client refresh that
//! makes presence traffic grow with the audience elsewhere). A hash expires `presence_ttl`
//! after the last refresh by a live node with entries in it, so a channel whose every node
//! died is gone even if nobody asks.
//!
//! Writes never wait: a join or leave is recorded in this node's [`LocalPresence`] and in a
//! map of pending writes keyed by (channel, client) — a join and a leave of the same
//! subscription between two flushes cancel out to the last — which one task writes with one
//! script call (per 500 changes) as soon as it can. The map is bounded by this node's
//! subscriptions. Expiry is only ever extended, never shortened, so nodes with different
//! `presence_ttl`s do not cut each other's entries short.
//!
//! A node whose liveness key had vanished when it sets it again (Redis restarted without its
//! data, or the node could not reach Redis for `presence_ttl`, so readers deleted its entries)
//! writes all its entries again. A clean shutdown deletes the node's entries and key at once.
//!
//! **On a Redis Cluster** a script may only touch keys of one slot, so a node's liveness is kept
//! per channel instead, beside the channel's entries: `tether:pn:{CH}`, a hash of node id →
//! the time (Redis's, in ms) until which the node is alive. A join sets its node's time, the
//! refresh sets it in each of the node's channels (one script call per channel, which is what
//! a cluster costs: the keys of different channels live on different shards), and a reader
//! keeps the entries of nodes whose time has not passed. Writes go one call per channel, and
//! changes are announced with `SPUBLISH` on `tether:e:{CH}`, in the channel's slot.

use super::redis_endpoint::Conn as ConnectionManager;
use crate::config::ChannelRule;
use crate::presence::{LocalPresence, Member};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

fn presence_key(channel: &str) -> String {
    format!("tether:pr:{{{channel}}}")
}

/// Per channel: how many entries each user has, across nodes (for `user_join` / `user_leave`).
fn users_key(channel: &str) -> String {
    format!("tether:pu:{{{channel}}}")
}

/// Cluster: per channel, each node's liveness (see the module docs).
fn nodes_key(channel: &str) -> String {
    format!("tether:pn:{{{channel}}}")
}

const NODE_PREFIX: &str = "tether:node:";

/// Presence calls a cluster node keeps in flight (one per channel).
const CLUSTER_IN_FLIGHT: usize = 16;

/// Where join/leave changes go out to every node: `tether:e:CH`, as `TYPE INFO-JSON`.
const EVENTS_PREFIX: &str = "tether:e:";

mod scripts;
use scripts::{changes, EXTEND, READ, REFRESH, REFRESH_CHANNEL, WRITE};

/// The pub/sub channel a channel's join/leave changes go out on.
pub(super) fn events_channel(channel: &str, sharded: bool) -> String {
    match sharded {
        false => format!("{EVENTS_PREFIX}{channel}"),
        true => format!("{EVENTS_PREFIX}{{{channel}}}"),
    }
}

/// The channel a join/leave pub/sub channel is for (see [`events_channel`]).
pub(super) fn events_of(name: &str, sharded: bool) -> Option<&str> {
    let rest = name.strip_prefix(EVENTS_PREFIX)?;
    match sharded {
        false => Some(rest),
        true => rest.strip_prefix('{')?.strip_suffix('}'),
    }
}

/// Changes written per script call at most (each call holds Redis for its duration).
const WRITE_BATCH: usize = 500;

/// A pending write: the entry's JSON (a join) or `None` (a leave), and its user.
#[derive(Clone)]
struct Op {
    json: Option<String>,
    user: Option<Arc<str>>,
}

/// Pending writes by (channel, client).
type Pending = HashMap<(Arc<str>, Arc<str>), Op>;
/// A pending write taken out to be written.
type Change = ((Arc<str>, Arc<str>), Op);

/// Log the start and the end of an outage of one kind of write, not every failed retry.
fn outage(failing: &mut bool, what: &str, error: Option<redis::RedisError>) {
    match error {
        Some(e) if !std::mem::replace(failing, true) => {
            tracing::warn!(error = %e, "cannot {what} in Redis; retrying until it works");
        }
        Some(_) => {}
        None if std::mem::take(failing) => tracing::info!("can {what} in Redis again"),
        None => {}
    }
}

pub(super) struct RedisPresence {
    node: String,
    ttl: Duration,
    /// The channel blocks: which channels announce joins and leaves.
    rules: Vec<ChannelRule>,
    local: LocalPresence,
    pending: Mutex<Pending>,
    wake: Notify,
    read: redis::Script,
    write: redis::Script,
    refresh: redis::Script,
    /// A cluster: liveness per channel, one call per channel (see the module docs).
    sharded: bool,
    refresh_channel: redis::Script,
}

#[derive(Deserialize)]
struct Stored {
    client: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    info: Option<Box<RawValue>>,
}

impl RedisPresence {
    pub(super) fn new(node: String, ttl: Duration, rules: Vec<ChannelRule>, sharded: bool) -> Self {
        let changes = changes(sharded);
        RedisPresence {
            node,
            ttl,
            rules,
            local: LocalPresence::default(),
            pending: Mutex::default(),
            wake: Notify::new(),
            read: redis::Script::new(&format!("{EXTEND}{changes}{READ}")),
            write: redis::Script::new(&format!("{EXTEND}{changes}{WRITE}")),
            refresh: redis::Script::new(&format!("{EXTEND}{REFRESH}")),
            sharded,
            refresh_channel: redis::Script::new(&format!("{EXTEND}{REFRESH_CHANNEL}")),
        }
    }

    pub(super) fn join(&self, channel: &str, member: Arc<Member>) {
        let (client, user, json) = (member.client.clone(), member.user.clone(), member.to_json());
        if self.local.join(channel, member).changed {
            let op = Op { json: Some(json), user };
            crate::sync::lock(&self.pending).insert((channel.into(), client), op);
            self.wake.notify_one();
        }
    }

    pub(super) fn leave(&self, channel: &str, client: &str) {
        if let Some((member, _)) = self.local.leave(channel, client) {
            let op = Op { json: None, user: member.user.clone() };
            crate::sync::lock(&self.pending).insert((channel.into(), member.client.clone()), op);
            self.wake.notify_one();
        }
    }

    fn announces(&self, channel: &str) -> &'static str {
        match crate::config::join_leave_on(&self.rules, channel) {
            true => "1",
            false => "0",
        }
    }

    pub(super) fn entries(&self) -> usize {
        self.local.entries()
    }

    /// Every live entry of `channel`, on every node.
    pub(super) async fn members(
        &self,
        commands: &mut ConnectionManager,
        channel: &str,
    ) -> redis::RedisResult<Vec<Arc<Member>>> {
        let mut call = self.read.key(presence_key(channel));
        call.key(users_key(channel));
        if self.sharded {
            call.key(nodes_key(channel));
        }
        let stored: Vec<String> = call
            .arg(NODE_PREFIX)
            .arg(self.ttl.as_millis() as u64)
            .arg(channel)
            .arg(self.announces(channel))
            .invoke_async(commands)
            .await?;
        Ok(stored
            .iter()
            .filter_map(|json| serde_json::from_str::<Stored>(json).ok())
            .map(|s| {
                Arc::new(Member {
                    client: s.client.into(),
                    user: s.user.map(Into::into),
                    info: s.info.map(Into::into),
                })
            })
            .collect())
    }

    /// Write pending joins and leaves as they come, and keep this node alive, until `stop`.
    pub(super) async fn run(
        self: Arc<Self>,
        connection: Arc<super::redis_endpoint::Commands>,
        stop: CancellationToken,
    ) {
        let mut refresh = tokio::time::interval(self.ttl / 3);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each failure is warned once per outage, not on every retry (a failed flush keeps its
        // batch pending, so its next success has really written).
        let (mut refresh_failing, mut flush_failing) = (false, false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = refresh.tick() => {
                    let refreshed = self.refresh(&mut connection.get()).await;
                    outage(&mut refresh_failing, "refresh this node's presence", refreshed.err());
                }
            }
            let flushed = self.flush(&mut connection.get()).await;
            let failed = flushed.is_err();
            outage(&mut flush_failing, "write presence changes", flushed.err());
            if failed {
                // Not at once: Redis is failing. The next tick or change tries again.
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }

    /// Write what is pending, a script call per [`WRITE_BATCH`] (on a cluster, per channel
    /// as well). What fails stays pending (unless a newer change to the same entry came
    /// meanwhile).
    async fn flush(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        use futures_util::StreamExt;
        let batch = std::mem::take(&mut *crate::sync::lock(&self.pending));
        let mut batch: Vec<_> = batch.into_iter().collect();
        if self.sharded {
            batch.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        }
        let mut chunks: Vec<Vec<Change>> = Vec::new();
        for item in batch {
            match chunks.last_mut() {
                Some(last)
                    if last.len() < WRITE_BATCH && (!self.sharded || last[0].0 .0 == item.0 .0) =>
                {
                    last.push(item)
                }
                _ => chunks.push(vec![item]),
            }
        }
        let in_flight = if self.sharded { CLUSTER_IN_FLIGHT } else { 1 };
        // Futures made in a loop, not a closure: a closure's borrow here would make the
        // presence task's future not `Send` (a known limit of the compiler's inference).
        let mut calls = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let mut conn = commands.clone();
            calls.push(async move {
                let result = self.write_chunk(&chunk, &mut conn).await;
                (chunk, result)
            });
        }
        let written: Vec<_> =
            futures_util::stream::iter(calls).buffer_unordered(in_flight).collect().await;
        let mut failed = Ok(());
        for (chunk, result) in written {
            if let Err(e) = result {
                let mut pending = crate::sync::lock(&self.pending);
                for (key, op) in chunk {
                    pending.entry(key).or_insert(op);
                }
                failed = Err(e);
            }
        }
        failed
    }

    /// One script call for `chunk` (on a cluster, all of one channel).
    async fn write_chunk(
        &self,
        chunk: &[Change],
        commands: &mut ConnectionManager,
    ) -> redis::RedisResult<()> {
        let mut call = self.write.prepare_invoke();
        call.arg(self.ttl.as_millis() as u64);
        call.arg(if self.sharded { self.node.as_str() } else { "" });
        let stride = if self.sharded { 3 } else { 2 };
        for (i, ((channel, client), op)) in chunk.iter().enumerate() {
            call.key(presence_key(channel)).key(users_key(channel));
            if self.sharded {
                call.key(nodes_key(channel));
            }
            call.arg(stride * i + 1).arg(&**client).arg(op.json.as_deref().unwrap_or(""));
            call.arg(op.user.as_deref().unwrap_or("")).arg(self.announces(channel)).arg(&**channel);
        }
        let lapsed: Vec<String> = call.invoke_async(commands).await?;
        // Cluster: where this node was not alive before, readers may have deleted its entries
        // (it could not reach Redis for `presence_ttl`): all of them are written again.
        self.rewrite(&lapsed);
        Ok(())
    }

    /// Queue every local entry of `channels` to be written again.
    fn rewrite(&self, channels: &[String]) {
        if channels.is_empty() {
            return;
        }
        let mut pending = crate::sync::lock(&self.pending);
        for channel in channels {
            for m in self.local.members(channel) {
                let key = (Arc::from(channel.as_str()), m.client.clone());
                let op = || Op { json: Some(m.to_json()), user: m.user.clone() };
                pending.entry(key).or_insert_with(op);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Set this node's liveness key again and extend its channels' hashes; if the key had
    /// vanished, write every entry again (see the module docs).
    async fn refresh(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        let channels = self.local.channels();
        if self.sharded {
            self.refresh_channels(commands, &channels).await?;
            return self.read_announcing(commands, &channels).await;
        }
        let mut call = self.refresh.prepare_invoke();
        call.key(format!("{NODE_PREFIX}{}", self.node)).arg(self.ttl.as_millis() as u64);
        for channel in &channels {
            call.key(presence_key(channel)).key(users_key(channel));
        }
        let existed: bool = call.invoke_async(commands).await?;
        if !existed {
            // Rare (a restart of Redis, or of this node): only then every member is copied.
            let mut pending = crate::sync::lock(&self.pending);
            for (channel, members) in &self.local.all() {
                for m in members {
                    let key = (Arc::from(channel.as_str()), m.client.clone());
                    let op = || Op { json: Some(m.to_json()), user: m.user.clone() };
                    pending.entry(key).or_insert_with(op);
                }
            }
        }
        self.read_announcing(commands, &channels).await
    }

    /// A dead node says no goodbye: in channels that announce leaves, reading clears its
    /// entries and announces them, within `presence_ttl` plus the refresh period.
    async fn read_announcing(
        &self,
        commands: &mut ConnectionManager,
        channels: &[String],
    ) -> redis::RedisResult<()> {
        for channel in channels.iter().filter(|c| self.announces(c) == "1") {
            self.members(commands, channel).await?;
        }
        Ok(())
    }

    /// Cluster: set this node alive in each of its channels; a channel where it no longer
    /// was (readers deleted its entries) gets its entries written again.
    async fn refresh_channels(
        &self,
        commands: &mut ConnectionManager,
        channels: &[String],
    ) -> redis::RedisResult<()> {
        use futures_util::StreamExt;
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut calls = Vec::with_capacity(channels.len());
        for channel in channels {
            let mut conn = commands.clone();
            let mut call = self.refresh_channel.key(presence_key(channel));
            call.key(users_key(channel)).key(nodes_key(channel));
            call.arg(ttl_ms).arg(&self.node);
            calls.push(async move {
                let was: redis::RedisResult<bool> = call.invoke_async(&mut conn).await;
                (channel, was)
            });
        }
        let refreshed: Vec<_> =
            futures_util::stream::iter(calls).buffer_unordered(CLUSTER_IN_FLIGHT).collect().await;
        let mut result = Ok(());
        let mut lapsed = Vec::new();
        for (channel, was) in refreshed {
            match was {
                Ok(true) => {}
                Ok(false) => lapsed.push(channel.clone()),
                Err(e) => result = Err(e),
            }
        }
        self.rewrite(&lapsed);
        result
    }

    /// A clean shutdown: this node's entries and liveness key go now, not at `presence_ttl`.
    pub(super) async fn close(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        let _ = self.flush(commands).await;
        if self.sharded {
            // A pipeline may not span slots: one per channel.
            for (channel, members) in self.local.all() {
                let clients: Vec<&str> = members.iter().map(|m| &*m.client).collect();
                let mut pipe = redis::pipe();
                pipe.hdel(presence_key(&channel), clients).ignore();
                pipe.hdel(nodes_key(&channel), &self.node).ignore();
                pipe.query_async::<()>(commands).await?;
            }
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (channel, members) in self.local.all() {
            let clients: Vec<&str> = members.iter().map(|m| &*m.client).collect();
            pipe.hdel(presence_key(&channel), clients).ignore();
        }
        // (A clean shutdown's entries went with its connections, through `flush` above, with
        // their leaves announced; what is left here is only what the drain did not close.)
        pipe.del(format!("{NODE_PREFIX}{}", self.node)).ignore();
        pipe.query_async::<()>(commands).await
    }
}
