//! The Lua scripts dashi runs on Redis: each is one atomic step that kombu
//! does in several round trips (or not at all). Loaded once per server
//! with `SCRIPT LOAD` and run with `EVALSHA`; after a `NOSCRIPT` (a `SCRIPT
//! FLUSH`, a restart, a failover) the call runs again as `EVAL` with the
//! script's text, which no flush can fail, and the next call loads it
//! again: `NOSCRIPT` means the script did not run, so the retry cannot run
//! it twice.

use parking_lot::Mutex;

/// Pops up to `ARGV[1]` envelopes from the lists `KEYS[1..n]` in order
/// (kombu's most urgent step first; taken from the tail, as `BRPOP`) and
/// records each as unacked in the same step, with one `ZADD` and one `HSET`
/// for the whole batch: `unacked_index` gets the seconds `ARGV[2]`, `unacked`
/// gets `[envelope, "", <queue>]` (`ARGV[3]` is the queue as a JSON
/// string) built by concatenation, so the envelope's bytes are kept. A
/// field already in `unacked` (kombu gives every queue copy of a publish
/// the same tag) gets a suffix made unique with `ARGV[4]`, so two copies
/// held at once never share one entry. An envelope that cannot be recorded
/// (not JSON, no `properties`, no tag, `headers: null`, which kombu's
/// restore would drop) goes to the garbage list `KEYS[n+3]`; it takes a
/// place of the batch. The batch stops once its envelopes pass `ARGV[5]`
/// bytes (one envelope at least), so a reply stays within a client output
/// limit a server may set; the lists are read 16 envelopes at a time, so
/// what a pop does not take is not copied either.
///
/// A script's writes are not undone when a later command of it fails, so
/// the order is what keeps messages: the envelopes are read (`LRANGE`), then
/// recorded (`ZADD`, `HSET`, the garbage `LPUSH`), and only then removed
/// from their lists (`LTRIM` of the tail read). A write refused
/// before the removal (a user not allowed the command, a key of the wrong
/// type) leaves every message in its list and takes back what was
/// recorded; a server out of memory refuses none of them (the first write,
/// an `HDEL` of a field no one uses, grows nothing, and Redis refuses a
/// growing write to a script only as its first), so consumers still drain
/// a full server; a removal refused after an earlier list's went through
/// (not seen with Redis 7's ACLs, which refuse a script's keys before it
/// runs) ends the batch with the lists removed from before it (a garbage
/// envelope of a list not removed from stays in it too, and is set aside
/// again by the next pop).
///
/// Returns `{garbage_count, field1, env1, field2, env2, ...}`, or the
/// error of the first write refused when nothing was removed.
pub(crate) const POP: &str = r#"
local n = #KEYS - 3
local h, z, g = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local max = tonumber(ARGV[1])
local budget = tonumber(ARGV[5]) or 0
local fields, envs, from = {}, {}, {}
local garbage, gfrom = {}, {}
local took = {}
local bytes = 0
local function refused(r)
  return type(r) == 'table' and r.err
end
-- A refusal, naming the key it was about.
local function about(r, key)
  return redis.error_reply(r.err .. ' (key ' .. key .. ')')
end
-- Full: `max` envelopes looked at, or the envelopes past the budget.
local function full(total)
  return total >= max or (budget > 0 and bytes >= budget and #envs > 0)
end
local total = 0
for i = 1, n do
  if full(total) then break end
  -- The tail first, as RPOP takes them, read a window of 16 at a time: a
  -- batch of large envelopes stops at the budget without copying the
  -- rest of `max` into Lua.
  local k = 0
  while not full(total) do
    local size = math.min(16, max - total)
    local got = redis.pcall('LRANGE', KEYS[i], -(k + size), -(k + 1))
    if refused(got) then return about(got, KEYS[i]) end
    for j = #got, 1, -1 do
      if full(total) then break end
      local m = got[j]
      k = k + 1
      total = total + 1
      -- kombu and dashi end every envelope with the tag: read it there
      -- without decoding the whole envelope; anything else is decoded.
      local tag = nil
      if not string.find(m, '"headers": null', 1, true) then
        local at0 = #m - 96
        if at0 < 1 then at0 = 1 end
        local at = string.find(m, '"delivery_tag": ', at0, true)
        if at then
          tag = string.match(m, '^"([^"\\]*)"}}$', at + 16)
            or string.match(m, '^(%d+)}}$', at + 16)
        end
      end
      if not tag then
        local ok, env = pcall(cjson.decode, m)
        if ok and type(env) == 'table' and type(env.properties) == 'table'
            and type(env.headers) ~= 'userdata' then
          local t = env.properties.delivery_tag
          if type(t) == 'string' then
            tag = t
          elseif type(t) == 'number' and t == math.floor(t) then
            tag = string.format('%d', t)
          end
        end
      end
      if tag then
        fields[#fields + 1] = tag
        envs[#envs + 1] = m
        from[#from + 1] = i
        bytes = bytes + #m
      else
        garbage[#garbage + 1] = m
        gfrom[#gfrom + 1] = i
      end
    end
    -- A short window: the list has no more.
    if #got < size then break end
  end
  took[i] = k
end
if #envs > 0 then
  -- A field already in unacked (or twice in this pop) gets a unique suffix.
  local taken = redis.pcall('HMGET', h, unpack(fields))
  if refused(taken) then return about(taken, h) end
  local seen, seq = {}, 0
  for k = 1, #fields do
    local f = fields[k]
    while taken[k] or seen[f] do
      seq = seq + 1
      f = fields[k] .. '.' .. ARGV[4] .. '.' .. seq
      taken[k] = redis.call('HEXISTS', h, f) == 1 and true or false
    end
    seen[f] = true
    fields[k] = f
  end
end
-- Takes back the records of the envelopes from list `i` on.
local function unrecord(i)
  local fs = {}
  for k = 1, #envs do
    if from[k] >= i then fs[#fs + 1] = fields[k] end
  end
  if #fs > 0 then
    redis.pcall('ZREM', z, unpack(fs))
    redis.pcall('HDEL', h, unpack(fs))
  end
end
-- A consumer must drain a server out of memory (`noeviction`), and Redis
-- refuses a growing write (ZADD, HSET, LPUSH) under `maxmemory` only as a
-- script's first write: a write that changes nothing comes first.
if #envs > 0 or #garbage > 0 then
  local r = redis.pcall('HDEL', h, '\0dashi: no such field\0')
  if refused(r) then return about(r, h) end
end
-- In groups of 1000: Lua unpacks at most about 8000 values at once, and a
-- batch may be 4096 (the engine asks for at most 256 today).
for first = 1, #envs, 1000 do
  local zargs, hargs = {}, {}
  for k = first, math.min(first + 999, #envs) do
    zargs[#zargs + 1] = ARGV[2]
    zargs[#zargs + 1] = fields[k]
    hargs[#hargs + 1] = fields[k]
    hargs[#hargs + 1] = '[' .. envs[k] .. ', "", ' .. ARGV[3] .. ']'
  end
  local r = redis.pcall('ZADD', z, unpack(zargs))
  if refused(r) then unrecord(1) return about(r, z) end
  r = redis.pcall('HSET', h, unpack(hargs))
  if refused(r) then unrecord(1) return about(r, h) end
end
if #garbage > 0 then
  local r = redis.pcall('LPUSH', g, unpack(garbage))
  if refused(r) then unrecord(1) return about(r, g) end
end
-- Only now do the lists give them up.
local upto, removed = n + 1, false
for i = 1, n do
  if took[i] and took[i] > 0 then
    -- LTRIM, not RPOP: the envelopes are not copied into a reply again.
    local r = redis.pcall('LTRIM', KEYS[i], 0, -(took[i] + 1))
    if refused(r) then
      unrecord(i)
      if not removed then
        -- Nothing was removed: the garbage pushed goes too (LPUSH put it
        -- at the head), or the next pop would set it aside again.
        if #garbage > 0 then redis.pcall('LPOP', g, #garbage) end
        return about(r, KEYS[i])
      end
      upto = i
      break
    end
    removed = true
  end
end
local out = {0}
for k = 1, #gfrom do
  if gfrom[k] < upto then out[1] = out[1] + 1 end
end
for k = 1, #envs do
  if from[k] < upto then
    out[#out + 1] = fields[k]
    out[#out + 1] = envs[k]
  end
end
return out
"#;

/// Purges the lists `KEYS` of one queue: their lengths summed, then the
/// keys deleted. A key that is not a list (another application's string
/// under a queue's name) stops it before anything is deleted: a
/// transaction of `LLEN` and `DEL` deleted such a key and said "purged 0".
pub(crate) const PURGE: &str = r#"
for i = 1, #KEYS do
  local t = redis.call('TYPE', KEYS[i]).ok
  if t ~= 'list' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE the key ' .. KEYS[i] .. ' holds a ' .. t
      .. ', not a queue\'s list: nothing was purged')
  end
end
local n = 0
for i = 1, #KEYS do
  n = n + redis.call('LLEN', KEYS[i])
end
redis.call('DEL', unpack(KEYS))
return n
"#;

/// Compare-and-restore: if `unacked[ARGV[1]]` still equals `ARGV[2]`, the
/// entry is removed from `unacked` (`KEYS[1]`) and `unacked_index`
/// (`KEYS[2]`) and `ARGV[3]` is pushed with `ARGV[4]` (`RPUSH`: next to be
/// popped; `LPUSH`: last) onto every list `KEYS[3..]`. With `ARGV[5]` and
/// `ARGV[6]` (when it was popped, and its place in that pop) and `RPUSH`,
/// it goes behind the restored messages at the head of the list that were
/// popped before it (their `properties["x-dashi-order"]`), so restored
/// messages keep their original order whatever order they come back in.
/// Returns 1 when it did, 0 when someone acked or restored it first.
pub(crate) const RESTORE: &str = r#"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local t, i = tonumber(ARGV[5]), tonumber(ARGV[6])
for k = 3, #KEYS do
  local moved = {}
  if t and i and ARGV[4] == 'RPUSH' then
    while true do
      local head = redis.call('LINDEX', KEYS[k], -1)
      if not head then break end
      local ok, e = pcall(cjson.decode, head)
      local o = ok and type(e) == 'table' and type(e.properties) == 'table'
        and e.properties['x-dashi-order']
      if type(o) == 'table' and type(o[1]) == 'number' and type(o[2]) == 'number'
          and (o[1] < t or (o[1] == t and o[2] < i)) then
        moved[#moved + 1] = redis.call('RPOP', KEYS[k])
      else
        break
      end
    end
  end
  redis.call(ARGV[4], KEYS[k], ARGV[3])
  for j = #moved, 1, -1 do
    redis.call('RPUSH', KEYS[k], moved[j])
  end
end
return 1
"#;

/// A kombu fanout message (`PUBLISH`) into a dashi queue, once: if the
/// marker `KEYS[1]` did not exist (set for 10 minutes), `ARGV[1]` is pushed
/// onto `KEYS[2]`. Sent with `EVAL` from the subscribed link's handler,
/// which must not wait for a script load.
pub(crate) const FANOUT_IN: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'PX', 600000) then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"#;

/// Releases the restore lock `KEYS[1]` if it still holds token `ARGV[1]`.
pub(crate) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Extends the restore lock `KEYS[1]` to `ARGV[2]` ms from now if it still
/// holds token `ARGV[1]`; 0 when it does not (the lock was lost).
pub(crate) const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Says or unsays that a process consumes an auto-delete queue:
/// `KEYS[1]` is the queue's sorted set of consuming processes, each scored
/// with the server time (ms) its lease runs out; `ARGV[1]` is the process,
/// `ARGV[2]` the lease in ms, `ARGV[3]` `1` to say (or renew) and `0` to
/// unsay. Entries whose lease ran out (their process died) go first.
/// Returns how many other processes still consume the queue.
pub(crate) const CONSUMERS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  local lease = tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[1], lease)
  return redis.call('ZCARD', KEYS[1]) - 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"#;

/// One script and its digest once loaded.
#[derive(Debug)]
pub(crate) struct Script {
    pub(crate) text: &'static str,
    pub(crate) sha: Mutex<Option<String>>,
}

impl Script {
    pub(crate) const fn new(text: &'static str) -> Script {
        Script {
            text,
            sha: Mutex::new(None),
        }
    }
}

/// The scripts of one transport.
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) pop: Script,
    pub(crate) restore: Script,
    pub(crate) unlock: Script,
    pub(crate) renew: Script,
    pub(crate) consumers: Script,
    pub(crate) purge: Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            pop: Script::new(POP),
            restore: Script::new(RESTORE),
            unlock: Script::new(UNLOCK),
            renew: Script::new(RENEW),
            consumers: Script::new(CONSUMERS),
            purge: Script::new(PURGE),
        }
    }
}
