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
-- A state made by another Redis process than this one: `nil` when it is this one's, else
-- 'MADE>HERE'. On a cluster that may be a slot migration (MIGRATE moves keys whole, so the
-- stream is intact); a node told so (`adopt`) has checked that MADE is still a master outside
-- HERE's replication line (see `redis_lineage`), and the state becomes HERE's as it is.
local function foreign(meta, adopt)
  local made, here = redis.call('HGET', meta, 'run'), run_id()
  if made == here then return nil end
  local moved = tostring(made) .. '>' .. here
  if adopt == moved then
    redis.call('HSET', meta, 'run', here)
    return nil
  end
  return moved
end
-- A stream seen for the first time, or again after its state expired, or written by another
-- Redis process than the one that made it (a restart from a snapshot or a failover may have lost
-- its latest publications while keeping its epoch), gets the candidate epoch; history left from
-- an earlier incarnation is dropped. With `adopt` '?' (a cluster), a foreign state is not
-- dropped but reported: returns nil and 'MADE>HERE' for the node to check.
local function epoch_of(meta, hist, candidate, meta_ttl, adopt)
  local epoch = redis.call('HGET', meta, 'epoch')
  local moved = epoch and foreign(meta, adopt)
  if moved and adopt == '?' then return nil, moved end
  if (not epoch) or moved then
    epoch = candidate
    if hist then redis.call('DEL', hist) end
    redis.call('HSET', meta, 'epoch', epoch, 'top', 0, 'run', run_id())
    redis.call('PEXPIRE', meta, meta_ttl)
  end
  return epoch
end
"#;

/// KEYS: state, then history only when the channel keeps some (ARGV[2] > 0), then the
/// idempotency key (`tether:i:{CH}:KEY`) only with a window (ARGV[7] > 0). Keys that do not
/// exist are not named: while a cluster migrates the slot, a script naming a missing key
/// beside present ones is refused (TRYAGAIN) on both masters until the migration ends.
/// ARGV: data, history size (0: none), ttl ms, epoch candidate, pub/sub channel, state ttl ms,
/// idempotency window ms (0: none), the publish command (`PUBLISH`; on a cluster `SPUBLISH`,
/// with the channel in the keys' slot), adopt (`''`; on a cluster `'?'` or 'MADE>HERE', see
/// `foreign`). Returns {epoch, offset, duplicate (0/1), moved}: a key seen within its window
/// publishes nothing and returns the first publication's position; `moved` is '' or the
/// 'MADE>HERE' to check (nothing was published).
pub const PUBLISH: &str = r#"
local window, size = tonumber(ARGV[7]), tonumber(ARGV[2])
local hist = size > 0 and KEYS[2] or nil
local once = KEYS[#KEYS]
if window > 0 then
  local seen = redis.call('GET', once)
  if seen then
    local space = string.find(seen, ' ', 1, true)
    return {string.sub(seen, 1, space - 1), tonumber(string.sub(seen, space + 1)), 1, ''}
  end
end
local epoch, moved = epoch_of(KEYS[1], hist, ARGV[4], ARGV[6], ARGV[9])
if not epoch then return {'', 0, 0, moved} end
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'top', 1))
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if hist then
  local now = now_ms()
  redis.call('XADD', hist, 'MAXLEN', size, offset .. '-0', 't', now, 'd', ARGV[1])
  redis.call('PEXPIRE', hist, ARGV[3])
  trim(hist, tonumber(ARGV[3]), now)
end
redis.call(ARGV[8], ARGV[5], offset .. ' ' .. epoch .. ' ' .. ARGV[1])
if window > 0 then
  redis.call('SET', once, epoch .. ' ' .. offset, 'PX', window)
end
return {epoch, tonumber(offset), 0, ''}
"#;

/// KEYS: state, then history only when the channel keeps some (see `PUBLISH`). ARGV: (unused), state ttl ms, history ttl ms (0: none), first offset
/// wanted (0: none), most entries to return, most data bytes to return, adopt (as for
/// `PUBLISH`; and `!`: a foreign state the node found not to have come with its slot starts
/// again here now, with the candidate epoch, as a publish would start it, so that it is
/// neither checked on every read nor taken up again by its old master should that become
/// master again). Returns {epoch, top, entries, over, moved}: `over` is 0, or the data bytes read when they passed the limit
/// (entries are then empty): entries are read in pages, so that a replay too large for the
/// connection asking is never gathered whole, in Redis or in the node.
/// Reading never creates state: a subscribe to a channel nobody published to costs Redis nothing
/// (epoch "" and top 0 until the first publish).
pub const HISTORY: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local moved = epoch and foreign(KEYS[1], ARGV[7])
if moved and ARGV[7] == '?' then return {'', 0, {}, 0, moved} end
if moved and ARGV[7] == '!' then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1], 'top', 0, 'run', run_id())
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if KEYS[2] then redis.call('DEL', KEYS[2]) end
  return {ARGV[1], 0, {}, 0, ''}
end
if (not epoch) or moved then
  return {'', 0, {}, 0, ''}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'top') or '0')
local ttl = tonumber(ARGV[3])
local hist = KEYS[2]
if hist and ttl > 0 then trim(hist, ttl, now_ms()) end
local from = tonumber(ARGV[4])
local entries = {}
if hist and from > 0 and from <= top then
  local limit, budget, used = tonumber(ARGV[5]), tonumber(ARGV[6]), 0
  while #entries < limit do
    local page = redis.call('XRANGE', hist, string.format('%d', from) .. '-0', '+',
      'COUNT', math.min(256, limit - #entries))
    if #page == 0 then break end
    for _, entry in ipairs(page) do
      local fields = entry[2]
      for i = 1, #fields, 2 do
        if fields[i] == 'd' then used = used + #fields[i + 1] end
      end
      if used > budget then return {epoch, top, {}, used, ''} end
      entries[#entries + 1] = entry
    end
    from = tonumber(string.match(page[#page][1], '^%d+')) + 1
  end
end
return {epoch, top, entries, 0, ''}
"#;

/// A script with the shared helpers in front.
pub fn with_helpers(body: &str) -> String {
    format!("{TRIM}\n{body}")
}
