//! Presence's Lua scripts (see the parent module for the layout they keep).

use super::EVENTS_PREFIX;

/// Lua: count a user's entries up or down; publish a change (and the user's edge) to every
/// node when the channel announces them. `PUB`, `OPEN` and `CLOSE` are set in front of it
/// (see [`changes`]).
const CHANGES: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function counted(u, user, by, ttl)
  if user == '' then return false end
  local n = redis.call('HINCRBY', u, user, by)
  if n <= 0 then redis.call('HDEL', u, user) return by < 0 end
  extend(u, ttl)
  return by > 0 and n == 1
end
local function announce(chan, kind, user_kind, edge, json)
  local name = OPEN .. chan .. CLOSE
  redis.call(PUB, name, kind .. ' ' .. json)
  if edge then redis.call(PUB, name, user_kind .. ' ' .. json) end
end
"#;

/// [`CHANGES`] for one Redis (`PUBLISH tether:e:CH`) or a cluster (`SPUBLISH tether:e:{CH}`,
/// in the channel's slot).
pub(super) fn changes(sharded: bool) -> String {
    let (publish, open, close) = match sharded {
        false => ("PUBLISH", EVENTS_PREFIX.to_owned(), ""),
        true => ("SPUBLISH", format!("{EVENTS_PREFIX}{{"), "}"),
    };
    format!("local PUB, OPEN, CLOSE = '{publish}', '{open}', '{close}'\n{CHANGES}")
}

/// KEYS: the presence hash, the user counts (on a cluster, then the nodes' liveness hash).
/// ARGV: the node-key prefix, the ttl in ms, the channel, whether it announces changes (1/0).
/// Returns the live entries' JSON; deletes the entries of nodes whose liveness is gone
/// (announcing their leaves).
pub(super) const READ: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local alive = {}
local out = {}
local now = KEYS[3] and now_ms()
local function live_node(node)
  if node == '' then return false end
  if not KEYS[3] then return redis.call('EXISTS', ARGV[1] .. node) == 1 end
  if tonumber(redis.call('HGET', KEYS[3], node) or '0') > now then return true end
  redis.call('HDEL', KEYS[3], node)
  return false
end
for i = 1, #all, 2 do
  local client = all[i]
  local node = string.match(client, '^([^-]+)-') or ''
  local live = alive[node]
  if live == nil then
    live = live_node(node)
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
pub(super) const EXTEND: &str = r#"
local function extend(k, ttl)
  local t = redis.call('PTTL', k)
  if t ~= -2 and t < ttl then redis.call('PEXPIRE', k, ttl) end
end
"#;

/// KEYS: per change, its channel's presence hash and user counts (on a cluster, then its
/// nodes' liveness hash). ARGV[1]: ttl ms, ARGV[2]: this node's id on a cluster (else
/// empty), then per change: the index of its presence hash, the client, its JSON (empty: a
/// leave), its user (empty: none), whether the channel announces changes (1/0), the channel.
/// Returns, on a cluster, the channels where the node was not alive before this call (new to
/// it, or lapsed: readers may have deleted its entries, which it must write again).
pub(super) const WRITE: &str = r#"
local ttl, node = tonumber(ARGV[1]), ARGV[2]
local lapsed, seen = {}, {}
for i = 3, #ARGV, 6 do
  local k = KEYS[tonumber(ARGV[i])]
  local u = KEYS[tonumber(ARGV[i]) + 1]
  local client, json, user = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local tell, chan = ARGV[i + 4] == '1', ARGV[i + 5]
  if node ~= '' then
    -- A join on a channel the refresh has not reached yet: its node is alive there now.
    local n = KEYS[tonumber(ARGV[i]) + 2]
    local now = now_ms()
    if not seen[chan] and tonumber(redis.call('HGET', n, node) or '0') <= now then
      lapsed[#lapsed + 1] = chan
    end
    seen[chan] = true
    redis.call('HSET', n, node, now + ttl)
    extend(n, ttl)
  end
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
return lapsed
"#;

/// KEYS[1]: the node's liveness key, then its channels' presence hashes. ARGV[1]: ttl ms.
/// Returns whether the liveness key still existed.
pub(super) const REFRESH: &str = r#"
local ttl = tonumber(ARGV[1])
local was = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], '1', 'PX', ttl)
for i = 2, #KEYS do extend(KEYS[i], ttl) end
return was
"#;

/// Cluster: KEYS: a channel's presence hash, user counts and nodes' liveness hash. ARGV: ttl
/// ms, this node's id. Sets the node alive there for `ttl` and drops other nodes' lapsed times
/// (node ids are per process: the hash would otherwise keep one per process that ever was
/// there); returns whether this node still was alive.
pub(super) const REFRESH_CHANNEL: &str = r#"
local ttl, node = tonumber(ARGV[1]), ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local times = redis.call('HGETALL', KEYS[3])
for i = 1, #times, 2 do
  if times[i] ~= node and tonumber(times[i + 1]) <= now then redis.call('HDEL', KEYS[3], times[i]) end
end
local was = tonumber(redis.call('HGET', KEYS[3], node) or '0') > now
redis.call('HSET', KEYS[3], node, now + ttl)
for i = 1, 3 do extend(KEYS[i], ttl) end
return was and 1 or 0
"#;
