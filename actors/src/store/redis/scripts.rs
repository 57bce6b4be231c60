//! The Lua scripts of the Redis backend. Redis runs a script alone (no other command runs
//! meanwhile), so every check-then-write below is atomic across all the instances that share
//! the server. `redis::Script` sends them by SHA (`EVALSHA`) and loads them on `NOSCRIPT`.
//!
//! Conventions: `ARGV[1]` is the namespace's key prefix (`"<namespace>:"`) wherever a script
//! computes key names; numbers that become keys, members or scores are formatted with `%.0f`
//! (exact for integers below 2^53), never with Lua's `tostring` (14 significant digits).

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the task scripts: reading a task's indexed fields, and removing or adding
/// a task and all its index entries. The hash `t:<id>` keeps a copy of every field an index
/// depends on, so a script can unindex the old version without parsing JSON.
const TASK_LIB: &str = r#"
local P = ARGV[1]
-- Seqs per priority band of the run-order score: (10 - priority) * BAND + seq stays below
-- 2^53 (exact in a double) for every priority while seq < BAND.
local BAND = 562949953421312
local function int(n) return string.format('%.0f', n) end
local function owner_key(owner)
  if owner then return P .. 't-owner:' .. owner end
  return P .. 't-anon'
end
local function stored(key)
  local v = redis.call('HMGET', key, 'seq', 'rev', 'status', 'prio', 'sess', 'owner', 'costn', 'fin')
  if not v[1] then return nil end
  return {seq = v[1], rev = v[2], status = v[3], prio = v[4], sess = v[5], owner = v[6],
          costn = v[7], fin = v[8]}
end
-- The new version a write brings in ARGV[4..11]; '' (and the owner flag) stand for "none".
local function given(seq, rev)
  local f = {seq = seq, rev = rev, doc = ARGV[4], status = ARGV[5], prio = ARGV[6],
             sess = false, owner = false, costn = ARGV[10], fin = false}
  if ARGV[7] ~= '' then f.sess = ARGV[7] end
  if ARGV[8] == '1' then f.owner = ARGV[9] end
  if ARGV[11] ~= '' then f.fin = ARGV[11] end
  return f
end
local function unindex(id, f)
  redis.call('ZREM', P .. 't-all', id)
  redis.call('ZREM', P .. 't-status:' .. f.status, id)
  redis.call('ZREM', P .. 't-run', id)
  redis.call('ZREM', P .. 't-finished', id)
  redis.call('ZREM', owner_key(f.owner), id)
  if f.sess then redis.call('ZREM', P .. 't-session:' .. f.sess, id) end
  if f.costn and f.costn ~= '0' then redis.call('DECRBY', P .. 't-cost', f.costn) end
end
local function put(id, key, f)
  redis.call('DEL', key)
  local h = {'doc', f.doc, 'seq', f.seq, 'rev', f.rev, 'status', f.status, 'prio', f.prio,
             'costn', f.costn}
  if f.sess then h[#h + 1] = 'sess'; h[#h + 1] = f.sess end
  if f.owner then h[#h + 1] = 'owner'; h[#h + 1] = f.owner end
  if f.fin then h[#h + 1] = 'fin'; h[#h + 1] = f.fin end
  redis.call('HSET', key, unpack(h))
  redis.call('ZADD', P .. 't-all', f.seq, id)
  redis.call('ZADD', P .. 't-status:' .. f.status, f.seq, id)
  redis.call('ZADD', owner_key(f.owner), f.seq, id)
  if f.sess then redis.call('ZADD', P .. 't-session:' .. f.sess, f.seq, id) end
  if f.status == 'pending' then
    local score = (10 - tonumber(f.prio)) * BAND + tonumber(f.seq)
    redis.call('ZADD', P .. 't-run', int(score), id)
  end
  if f.fin then redis.call('ZADD', P .. 't-finished', f.fin, id) end
  if f.costn ~= '0' then redis.call('INCRBY', P .. 't-cost', f.costn) end
end
"#;

/// Insert a task: refuse an existing id, take the next seq, write the hash and every index.
/// ARGV: prefix, id, (unused), then the fields of [`TASK_LIB`]'s `given`.
/// Returns the seq, `"exists"`, or `"exhausted"` (no seq left below the band size).
pub(super) static INSERT_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{TASK_LIB}{}",
        r#"
local id = ARGV[2]
local key = P .. 't:' .. id
if redis.call('EXISTS', key) == 1 then return 'exists' end
local last = tonumber(redis.call('GET', P .. 'seq') or '0')
if last + 1 >= BAND then return 'exhausted' end
local seq = int(redis.call('INCR', P .. 'seq'))
put(id, key, given(seq, '1'))
return seq
"#
    ))
});

/// Replace a task if its revision is still `ARGV[3]` (compare-and-set): the caller read it,
/// decided the change (start, finish, priority, interrupt) and writes it only over what it read.
/// Keeps the stored seq. Returns 1 when written, 0 when the task changed or vanished meanwhile.
pub(super) static CAS_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{TASK_LIB}{}",
        r#"
local id = ARGV[2]
local key = P .. 't:' .. id
local old = stored(key)
if not old or old.rev ~= ARGV[3] then return 0 end
unindex(id, old)
put(id, key, given(old.seq, int(tonumber(old.rev) + 1)))
return 1
"#
    ))
});

/// Delete up to `ARGV[3]` final tasks finished before `ARGV[2]` (ms) with their index entries.
/// Returns {entries looked at, tasks deleted}: the caller repeats while a batch was full.
pub(super) static DELETE_FINISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{TASK_LIB}{}",
        r#"
local ids = redis.call('ZRANGEBYSCORE', P .. 't-finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local deleted = 0
for _, id in ipairs(ids) do
  local key = P .. 't:' .. id
  local old = stored(key)
  if old then
    unindex(id, old)
    redis.call('DEL', key)
    deleted = deleted + 1
  else
    redis.call('ZREM', P .. 't-finished', id)
  end
end
return {#ids, deleted}
"#
    ))
});

/// One page of records from sorted-set indexes, with the total, in one consistent snapshot.
///
/// ARGV: record key prefix (`<p>t:` or `<p>s:`), the order set, `asc`/`desc`, offset, limit
/// (0: all), a needle (`''`: none) matched against the record's `search` field, then the
/// filter sets (a record must be in each).
///
/// Without filters and needle the order set is paged directly: O(log n + page). Otherwise the
/// smallest of the sets is scanned, the others are membership tests (`ZSCORE`, O(1)), and the
/// survivors are sorted by their score in the order set (ties: by id, in the same direction).
///
/// Returns {total, id, doc, seq, id, doc, seq, ...} (seq is nil for sessions).
pub(super) static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local kp, order, asc = ARGV[1], ARGV[2], ARGV[3] == 'asc'
local offset, limit, needle = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local filters = {}
for i = 7, #ARGV do filters[#filters + 1] = ARGV[i] end
local total, page
if #filters == 0 and needle == '' then
  total = redis.call('ZCARD', order)
  local stop = -1
  if limit > 0 then stop = offset + limit - 1 end
  if asc then
    page = redis.call('ZRANGE', order, offset, stop)
  else
    page = redis.call('ZREVRANGE', order, offset, stop)
  end
else
  local scan, n = order, redis.call('ZCARD', order)
  for _, k in ipairs(filters) do
    local c = redis.call('ZCARD', k)
    if c < n then scan, n = k, c end
  end
  local flat = redis.call('ZRANGE', scan, 0, -1, 'WITHSCORES')
  local kept = {}
  for i = 1, #flat, 2 do
    local id, score = flat[i], flat[i + 1]
    local ok = true
    for _, k in ipairs(filters) do
      if k ~= scan and not redis.call('ZSCORE', k, id) then ok = false; break end
    end
    if ok and scan ~= order then
      score = redis.call('ZSCORE', order, id)
      ok = score ~= false
    end
    if ok and needle ~= '' then
      local text = redis.call('HGET', kp .. id, 'search')
      ok = text ~= false and string.find(text, needle, 1, true) ~= nil
    end
    if ok then kept[#kept + 1] = {tonumber(score), id} end
  end
  table.sort(kept, function(a, b)
    if a[1] ~= b[1] then
      if asc then return a[1] < b[1] end
      return a[1] > b[1]
    end
    if asc then return a[2] < b[2] end
    return a[2] > b[2]
  end)
  total = #kept
  page = {}
  local last = #kept
  if limit > 0 and offset + limit < last then last = offset + limit end
  for i = offset + 1, last do page[#page + 1] = kept[i][2] end
end
local out = {string.format('%.0f', total)}
for _, id in ipairs(page) do
  local v = redis.call('HMGET', kp .. id, 'doc', 'seq')
  out[#out + 1] = id
  out[#out + 1] = v[1]
  out[#out + 1] = v[2]
end
return out
"#,
    )
});

/// Helpers of the session scripts, like [`TASK_LIB`] for tasks. Every index scores a session by
/// `created` (ms) except `s-updated`, which serves idle-session deletion.
const SESSION_LIB: &str = r#"
local P = ARGV[1]
local function owner_key(owner)
  if owner then return P .. 's-owner:' .. owner end
  return P .. 's-anon'
end
local function stored(key)
  local v = redis.call('HMGET', key, 'created', 'status', 'path', 'owner')
  if not v[1] then return nil end
  return {created = v[1], status = v[2], path = v[3], owner = v[4]}
end
local function unindex(id, f)
  redis.call('ZREM', P .. 's-all', id)
  redis.call('ZREM', P .. 's-updated', id)
  redis.call('ZREM', P .. 's-status:' .. f.status, id)
  redis.call('ZREM', P .. 's-path:' .. f.path, id)
  redis.call('ZREM', owner_key(f.owner), id)
end
"#;

/// Insert (`ARGV[3] = 'insert'`: refused when it exists) or replace (`'update'`: refused when
/// missing) a session. ARGV: prefix, id, mode, doc, created, updated, status, path, owner
/// flag, owner, search text. Returns 1 when written.
pub(super) static PUT_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SESSION_LIB}{}",
        r#"
local id, mode = ARGV[2], ARGV[3]
local key = P .. 's:' .. id
local old = stored(key)
if (mode == 'insert' and old) or (mode == 'update' and not old) then return 0 end
if old then unindex(id, old) end
redis.call('DEL', key)
local owner = false
if ARGV[9] == '1' then owner = ARGV[10] end
local h = {'doc', ARGV[4], 'created', ARGV[5], 'updated', ARGV[6], 'status', ARGV[7],
           'path', ARGV[8], 'search', ARGV[11]}
if owner then h[#h + 1] = 'owner'; h[#h + 1] = owner end
redis.call('HSET', key, unpack(h))
local created = ARGV[5]
redis.call('ZADD', P .. 's-all', created, id)
redis.call('ZADD', P .. 's-updated', ARGV[6], id)
redis.call('ZADD', P .. 's-status:' .. ARGV[7], created, id)
redis.call('ZADD', P .. 's-path:' .. ARGV[8], created, id)
redis.call('ZADD', owner_key(owner), created, id)
return 1
"#
    ))
});

/// Delete session `ARGV[2]` and its index entries. Returns 1 when it existed.
pub(super) static DELETE_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SESSION_LIB}{}",
        r#"
local key = P .. 's:' .. ARGV[2]
local old = stored(key)
if not old then return 0 end
unindex(ARGV[2], old)
redis.call('DEL', key)
return 1
"#
    ))
});

/// Delete up to `ARGV[3]` sessions updated before `ARGV[2]` (ms). Returns {looked at, deleted}.
pub(super) static DELETE_IDLE_SESSIONS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SESSION_LIB}{}",
        r#"
local ids = redis.call('ZRANGEBYSCORE', P .. 's-updated', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local deleted = 0
for _, id in ipairs(ids) do
  local key = P .. 's:' .. id
  local old = stored(key)
  if old then
    unindex(id, old)
    redis.call('DEL', key)
    deleted = deleted + 1
  else
    redis.call('ZREM', P .. 's-updated', id)
  end
end
return {#ids, deleted}
"#
    ))
});

/// Members of sorted set `KEYS[1]` with scores in `ARGV[1]..=ARGV[2]` (in score order, ties by
/// member) and their values in hash `KEYS[2]`: {member, value, ...}.
pub(super) static READ_RANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])
local out = {}
for _, x in ipairs(m) do
  out[#out + 1] = x
  out[#out + 1] = redis.call('HGET', KEYS[2], x)
end
return out
"#,
    )
});

/// Remove the members of sorted set `KEYS[1]` scored below `ARGV[1]` and their fields in hash
/// `KEYS[2]`. Returns how many.
pub(super) static PRUNE_RANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local m = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, x in ipairs(m) do redis.call('HDEL', KEYS[2], x) end
if #m > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1]) end
return #m
"#,
    )
});

/// Claim an idempotency key. KEYS[1]: the claim; ARGV: value, now (ms), expires at (ms), TTL
/// (ms). The caller's `now` decides whether an earlier claim is live (the trait's contract);
/// the TTL only lets Redis drop dead claims. Returns the live earlier value, or nil when this
/// call made the claim.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local cur = redis.call('HMGET', KEYS[1], 'value', 'until')
if cur[1] and cur[2] and tonumber(cur[2]) > tonumber(ARGV[2]) then return cur[1] end
redis.call('HSET', KEYS[1], 'value', ARGV[1], 'until', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return false
"#,
    )
});

/// Record a webhook attempt. KEYS: attempt counter, docs hash, the task's set, the by-time
/// set. ARGV: doc, time (ms), task id. Returns the attempt's number.
pub(super) static RECORD_ATTEMPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = string.format('%.0f', redis.call('INCR', KEYS[1]))
redis.call('HSET', KEYS[2], n, ARGV[1])
redis.call('ZADD', KEYS[3], n, n)
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[3] .. ':' .. n)
return n
"#,
    )
});

/// Delete up to `ARGV[3]` webhook attempts made before `ARGV[2]` (ms). Returns how many
/// by-time entries were looked at (the caller repeats while a batch was full).
pub(super) static PRUNE_ATTEMPTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local P = ARGV[1]
local m = redis.call('ZRANGEBYSCORE', P .. 'wh-att-at', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
for _, x in ipairs(m) do
  local task, n = string.match(x, '^(.*):(%d+)$')
  if task then
    redis.call('ZREM', P .. 'wh-att:' .. task, n)
    redis.call('HDEL', P .. 'wh-att-docs', n)
  end
  redis.call('ZREM', P .. 'wh-att-at', x)
end
return #m
"#,
    )
});

/// Claim (or renew) a webhook delivery for an instance. KEYS: the claim, the outbox hash.
/// ARGV: owner, TTL (ms), webhook id. Returns the stored delivery when the claim is the
/// owner's now; nil when the delivery left the outbox or another owner's claim is live.
pub(super) static CLAIM_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local doc = redis.call('HGET', KEYS[2], ARGV[3])
if not doc then return false end
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return doc
"#,
    )
});

/// End an instance's claim on a webhook delivery. KEYS[1]: the claim; ARGV[1]: owner.
/// Returns 1 when a claim was removed.
pub(super) static RELEASE_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#,
    )
});
