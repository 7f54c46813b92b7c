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
//! (The read script touches keys it is not given, as a standalone Redis allows; Redis Cluster
//! needs another layout.)

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

const NODE_PREFIX: &str = "tether:node:";

/// Where join/leave changes go out to every node: `tether:e:CH`, as `TYPE INFO-JSON`.
pub(super) const EVENTS_PREFIX: &str = "tether:e:";

/// Lua: count a user's entries up or down; publish a change (and the user's edge) to every
/// node when the channel announces them.
const CHANGES: &str = r#"
local function counted(u, user, by, ttl)
  if user == '' then return false end
  local n = redis.call('HINCRBY', u, user, by)
  if n <= 0 then redis.call('HDEL', u, user) return by < 0 end
  extend(u, ttl)
  return by > 0 and n == 1
end
local function announce(chan, kind, user_kind, edge, json)
  redis.call('PUBLISH', 'tether:e:' .. chan, kind .. ' ' .. json)
  if edge then redis.call('PUBLISH', 'tether:e:' .. chan, user_kind .. ' ' .. json) end
end
"#;

/// KEYS: the presence hash, the user counts. ARGV: the node-key prefix, the ttl in ms, the
/// channel, whether it announces changes (1/0). Returns the live entries' JSON; deletes the
/// entries of nodes whose key is gone (announcing their leaves).
const READ: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local out = {}
for i = 1, #all, 2 do
  local client = all[i]
  local node = string.match(client, '^([^-]+)-') or ''
  local live = alive[node]
  if live == nil then
    live = node ~= '' and redis.call('EXISTS', ARGV[1] .. node) == 1
    alive[node] = live
  end
  if live then
    out[#out + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], client)
    local ok, entry = pcall(cjson.decode, all[i + 1])
    local user = (ok and type(entry.user) == 'string') and entry.user or ''
    local edge = counted(KEYS[2], user, -1, tonumber(ARGV[2]))
    if ARGV[4] == '1' then announce(ARGV[3], 'leave', 'user_leave', edge, all[i + 1]) end
  end
end
return out
"#;

/// Give a key at least `ttl` ms to live (never shorten it: nodes may differ in
/// `presence_ttl`). PTTL is -1 for a key without expiry, -2 for none.
const EXTEND: &str = r#"
local function extend(k, ttl)
  local t = redis.call('PTTL', k)
  if t ~= -2 and t < ttl then redis.call('PEXPIRE', k, ttl) end
end
"#;

/// KEYS: per change, its channel's presence hash and user counts. ARGV[1]: ttl ms, then per
/// change: the index of its presence hash, the client, its JSON (empty: a leave), its user
/// (empty: none), whether the channel announces changes (1/0), the channel.
const WRITE: &str = r#"
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 6 do
  local k = KEYS[tonumber(ARGV[i])]
  local u = KEYS[tonumber(ARGV[i]) + 1]
  local client, json, user = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tell, chan = ARGV[i + 4] == '1', ARGV[i + 5]
  if json == '' then
    local old = redis.call('HGET', k, client)
    if old then
      redis.call('HDEL', k, client)
      local edge = counted(u, user, -1, ttl)
      if tell then announce(chan, 'leave', 'user_leave', edge, old) end
    end
  else
    local added = redis.call('HSET', k, client, json) == 1
    extend(k, ttl)
    if added then
      local edge = counted(u, user, 1, ttl)
      if tell then announce(chan, 'join', 'user_join', edge, json) end
    end
  end
end
"#;

/// KEYS[1]: the node's liveness key, then its channels' presence hashes. ARGV[1]: ttl ms.
/// Returns whether the liveness key still existed.
const REFRESH: &str = r#"
local ttl = tonumber(ARGV[1])
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ttl)
for i = 2, #KEYS do extend(KEYS[i], ttl) end
return was
"#;

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
    pub(super) fn new(node: String, ttl: Duration, rules: Vec<ChannelRule>) -> Self {
        RedisPresence {
            node,
            ttl,
            rules,
            local: LocalPresence::default(),
            pending: Mutex::default(),
            wake: Notify::new(),
            read: redis::Script::new(&format!("{EXTEND}{CHANGES}{READ}")),
            write: redis::Script::new(&format!("{EXTEND}{CHANGES}{WRITE}")),
            refresh: redis::Script::new(&format!("{EXTEND}{REFRESH}")),
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
        let stored: Vec<String> = self
            .read
            .key(presence_key(channel))
            .key(users_key(channel))
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

    /// Write what is pending, a script call per [`WRITE_BATCH`]. What fails stays pending
    /// (unless a newer change to the same entry came meanwhile).
    async fn flush(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        let batch = std::mem::take(&mut *crate::sync::lock(&self.pending));
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut batch: Vec<_> = batch.into_iter().collect();
        while !batch.is_empty() {
            let chunk: Vec<_> = batch.drain(..batch.len().min(WRITE_BATCH)).collect();
            let mut call = self.write.prepare_invoke();
            call.arg(ttl_ms);
            for (i, ((channel, client), op)) in chunk.iter().enumerate() {
                call.key(presence_key(channel)).key(users_key(channel));
                call.arg(2 * i + 1).arg(&**client).arg(op.json.as_deref().unwrap_or(""));
                call.arg(op.user.as_deref().unwrap_or(""))
                    .arg(self.announces(channel))
                    .arg(&**channel);
            }
            if let Err(e) = call.invoke_async::<()>(commands).await {
                let mut pending = crate::sync::lock(&self.pending);
                for (key, op) in chunk.into_iter().chain(batch) {
                    pending.entry(key).or_insert(op);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Set this node's liveness key again and extend its channels' hashes; if the key had
    /// vanished, write every entry again (see the module docs).
    async fn refresh(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        let channels = self.local.channels();
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
        // A dead node says no goodbye: in channels that announce leaves, reading clears its
        // entries and announces them, within `presence_ttl` plus this period.
        for channel in channels.iter().filter(|c| self.announces(c) == "1") {
            self.members(commands, channel).await?;
        }
        Ok(())
    }

    /// A clean shutdown: this node's entries and liveness key go now, not at `presence_ttl`.
    pub(super) async fn close(&self, commands: &mut ConnectionManager) -> redis::RedisResult<()> {
        let _ = self.flush(commands).await;
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
