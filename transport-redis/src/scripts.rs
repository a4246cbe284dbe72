//! The Lua scripts dashi runs on Redis: each is one atomic step that kombu
//! does in several round trips (or not at all). Loaded once per server
//! with `SCRIPT LOAD`, run with `EVALSHA`, loaded again after `NOSCRIPT`
//! (a `SCRIPT FLUSH`, a restart, a failover): `NOSCRIPT` means the script
//! did not run, so the retry cannot run it twice.

use parking_lot::Mutex;

/// Pops up to `ARGV[1]` envelopes from the lists `KEYS[1..n]` in order
/// (kombu's most urgent step first) and records each as unacked in the
/// same step: `unacked_index` gets the float seconds `ARGV[2]`, `unacked`
/// gets `[envelope, "", <queue>]` (`ARGV[3]` is the queue as a JSON
/// string) built by concatenation, so the envelope's bytes are kept. A
/// field already in `unacked` (kombu gives every queue copy of a publish
/// the same tag) gets a suffix made unique with `ARGV[4]`, so two copies
/// held at once never share one entry. An envelope that cannot be recorded
/// (not JSON, no `properties`, no tag, `headers: null`, which kombu's
/// restore would drop) goes to the garbage list `KEYS[n+3]`.
///
/// Returns `{garbage_count, i1, field1, env1, i2, ...}`.
pub(crate) const POP: &str = r#"
local n = #KEYS - 3
local h, z, g = KEYS[n + 1], KEYS[n + 2], KEYS[n + 3]
local max = tonumber(ARGV[1])
local out = {0}
local taken, seq = 0, 0
for i = 1, n do
  while taken < max do
    local m = redis.call('RPOP', KEYS[i])
    if not m then break end
    local ok, env = pcall(cjson.decode, m)
    local tag = nil
    if ok and type(env) == 'table' and type(env.properties) == 'table'
        and type(env.headers) ~= 'userdata' then
      local t = env.properties.delivery_tag
      if type(t) == 'string' then
        tag = t
      elseif type(t) == 'number' and t == math.floor(t) then
        tag = string.format('%d', t)
      end
    end
    if tag then
      local field = tag
      while redis.call('HEXISTS', h, field) == 1 do
        seq = seq + 1
        field = tag .. '.' .. ARGV[4] .. '.' .. seq
      end
      redis.call('ZADD', z, ARGV[2], field)
      redis.call('HSET', h, field, '[' .. m .. ', "", ' .. ARGV[3] .. ']')
      out[#out + 1] = i
      out[#out + 1] = field
      out[#out + 1] = m
      taken = taken + 1
    else
      redis.call('LPUSH', g, m)
      out[1] = out[1] + 1
    end
  end
  if taken >= max then break end
end
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

/// Releases the restore lock `KEYS[1]` if it still holds token `ARGV[1]`.
pub(crate) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
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
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            pop: Script::new(POP),
            restore: Script::new(RESTORE),
            unlock: Script::new(UNLOCK),
        }
    }
}
