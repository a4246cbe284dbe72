//! The Lua scripts dashi runs on Redis: each is one atomic step that kombu
//! does in several round trips (or not at all). Loaded once per server
//! with `SCRIPT LOAD` and run with `EVALSHA`; after a `NOSCRIPT` (a `SCRIPT
//! FLUSH`, a restart, a failover) the call runs again as `EVAL` with the
//! script's text, which no flush can fail, and the next call loads it
//! again: `NOSCRIPT` means the script did not run, so the retry cannot run
//! it twice.

use parking_lot::Mutex;

/// Pops up to `ARGV[1]` envelopes from the lists `KEYS[1..n]` in order
/// (kombu's most urgent step first; `RPOP` with a count, Redis ≥ 6.2) and
/// records each as unacked in the same step, with one `ZADD` and one `HSET`
/// for the whole batch: `unacked_index` gets the seconds `ARGV[2]`, `unacked`
/// gets `[envelope, "", <queue>]` (`ARGV[3]` is the queue as a JSON
/// string) built by concatenation, so the envelope's bytes are kept. A
/// field already in `unacked` (kombu gives every queue copy of a publish
/// the same tag) gets a suffix made unique with `ARGV[4]`, so two copies
/// held at once never share one entry. An envelope that cannot be recorded
/// (not JSON, no `properties`, no tag, `headers: null`, which kombu's
/// restore would drop) goes to the garbage list `KEYS[n+3]`.
///
/// Returns `{garbage_count, field1, env1, field2, env2, ...}`.
pub(crate) const POP: &str = r#"
local n = #KEYS - 3
local h, z, g = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local max = tonumber(ARGV[1])
local out = {0}
local fields, envs = {}, {}
local garbage = {}
for i = 1, n do
  local want = max - #envs
  if want <= 0 then break end
  local got = redis.call('RPOP', KEYS[i], want)
  if got then
    for _, m in ipairs(got) do
      -- kombu and dashi end every envelope with the tag: read it there
      -- without decoding the whole envelope; anything else is decoded.
      local tag = nil
      if not string.find(m, '"headers": null', 1, true) then
        local from = #m - 96
        if from < 1 then from = 1 end
        local at = string.find(m, '"delivery_tag": ', from, true)
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
      else
        garbage[#garbage + 1] = m
      end
    end
  end
end
if #garbage > 0 then
  redis.call('LPUSH', g, unpack(garbage))
  out[1] = #garbage
end
if #envs == 0 then return out end
-- A field already in unacked (or twice in this pop) gets a unique suffix.
local taken = redis.call('HMGET', h, unpack(fields))
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
local zargs, hargs = {}, {}
for k = 1, #envs do
  zargs[#zargs + 1] = ARGV[2]
  zargs[#zargs + 1] = fields[k]
  hargs[#hargs + 1] = fields[k]
  hargs[#hargs + 1] = '[' .. envs[k] .. ', "", ' .. ARGV[3] .. ']'
  out[#out + 1] = fields[k]
  out[#out + 1] = envs[k]
end
redis.call('ZADD', z, unpack(zargs))
redis.call('HSET', h, unpack(hargs))
return out
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
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            pop: Script::new(POP),
            restore: Script::new(RESTORE),
            unlock: Script::new(UNLOCK),
            renew: Script::new(RENEW),
            consumers: Script::new(CONSUMERS),
        }
    }
}
