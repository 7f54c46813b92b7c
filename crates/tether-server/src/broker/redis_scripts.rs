//! The Lua scripts that make offset assignment, history append and fan-out one atomic step in
//! Redis. Keys per channel (hash-tagged so a cluster would keep them together):
//! `tether:s:{CH}` — a hash with the stream's `epoch` and `top` offset;
//! `tether:h:{CH}` — a Redis Stream of history entries, ID `OFFSET-0`, fields `t` (ms) and `d`.
//! Publications go out on the pub/sub channel `tether:p:CH` as `OFFSET EPOCH DATA`.

/// Drop history entries older than the ttl (entries are in time order: offsets grow with time).
const TRIM: &str = r#"
local function trim(key, ttl, now_ms)
  -- Bounded per call, so that one script never blocks Redis for long; the next calls finish.
  for _ = 1, 1000 do
    local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
    if #head == 0 then return end
    if tonumber(head[1][2][2]) >= now_ms - ttl then return end
    redis.call('XDEL', key, head[1][1])
  end
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Which Redis process this is. Read here, on every call, rather than passed in by a node: a node's
-- idea of it can be stale (it read it before a restart, or could not read it after one), and two
-- nodes with different ideas would each take the other's writes for another process's and reset
-- the stream on alternate publishes. (INFO server costs about 2.4 us inside a script.)
local function run_id()
  return string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
-- A stream seen for the first time, or again after its state expired, or written by another
-- Redis process than the one that made it (a restart from a snapshot or a failover may have lost
-- its latest publications while keeping its epoch), gets the candidate epoch; history left from
-- an earlier incarnation is dropped.
local function epoch_of(meta, hist, candidate, meta_ttl)
  local epoch = redis.call('HGET', meta, 'epoch')
  local run = run_id()
  if (not epoch) or redis.call('HGET', meta, 'run') ~= run then
    epoch = candidate
    redis.call('DEL', hist)
    redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'run', run)
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return epoch
end
"#;

/// KEYS: state, history, idempotency key (`tether:i:{CH}:KEY`, unused when ARGV[7] is 0).
/// ARGV: data, history size (0: none), ttl ms, epoch candidate, pub/sub channel, state ttl ms,
/// idempotency window ms (0: none), the publish command (`PUBLISH`; on a cluster `SPUBLISH`,
/// with the channel in the keys' slot). Returns {epoch, offset, duplicate (0/1)}: a
/// key seen within its window publishes nothing and returns the first publication's position.
pub const PUBLISH: &str = r#"
local window = tonumber(ARGV[7])
if window > 0 then
  local seen = redis.call('GET', KEYS[3])
  if seen then
    local space = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, space - 1), tonumber(string.sub(seen, space + 1)), 1}
  end
end
local epoch = epoch_of(KEYS[1], KEYS[2], ARGV[4], ARGV[6])
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'top', 1))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
local size = tonumber(ARGV[2])
if size > 0 then
  local now = now_ms()
  redis.call('XADD', KEYS[2], 'MAXLEN', size, offset .. '-0', 't', now, 'd', ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  trim(KEYS[2], tonumber(ARGV[3]), now)
end
redis.call(ARGV[8], ARGV[5], offset .. ' ' .. epoch .. ' ' .. ARGV[1])
if window > 0 then
  redis.call('SET', KEYS[3], epoch .. ' ' .. offset, 'PX', window)
end
return {epoch, tonumber(offset), 0}
"#;

/// KEYS: state, history. ARGV: (unused), state ttl ms, history ttl ms (0: none), first offset
/// wanted (0: none), most entries to return, most data bytes to return. Returns
/// {epoch, top, entries, over}: `over` is 0, or the data bytes read when they passed the limit
/// (entries are then empty): entries are read in pages, so that a replay too large for the
/// connection asking is never gathered whole, in Redis or in the node.
/// Reading never creates state: a subscribe to a channel nobody published to costs Redis nothing
/// (epoch "" and top 0 until the first publish).
pub const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if (not epoch) or redis.call('HGET', KEYS[1], 'run') ~= run_id() then
  return {'', 0, {}, 0}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local ttl = tonumber(ARGV[3])
if ttl > 0 then trim(KEYS[2], ttl, now_ms()) end
local from = tonumber(ARGV[4])
local entries = {}
if from > 0 and from <= top then
  local limit, budget, used = tonumber(ARGV[5]), tonumber(ARGV[6]), 0
  while #entries < limit do
    local page = redis.call('XRANGE', KEYS[2], string.format('%d', from) .. '-0', '+',
      'COUNT', math.min(256, limit - #entries))
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then used = used + #fields[i + 1] end
      end
      if used > budget then return {epoch, top, {}, used} end
      entries[#entries + 1] = entry
    end
    from = tonumber(string.match(page[#page][1], '^%d+')) + 1
  end
end
return {epoch, top, entries, 0}
"#;

/// A script with the shared helpers in front.
pub fn with_helpers(body: &str) -> String {
    format!("{TRIM}\n{body}")
}
