//! The Lua scripts of the Redis backend. Redis runs a script alone (no other command runs
//! meanwhile), so every check-then-write below is atomic across all the instances that share
//! the server. `redis::Script` sends them by SHA (`EVALSHA`) and loads them on `NOSCRIPT`.
//!
//! Conventions: `ARGV[1]` is the namespace's key prefix (`"<namespace>:"`) wherever a script
//! computes key names; numbers that become keys, members or scores are formatted with `%.0f`
//! (exact for integers below 2^53), never with Lua's `tostring` (14 significant digits).

use std::sync::LazyLock;

use redis::Script;

/// What every script that computes key names starts with: the namespace's key prefix, and the
/// formatting of numbers that become keys, members or scores.
const PREFIX_LIB: &str = r#"
local P = ARGV[1]
local function int(n) return string.format('%.0f', n) end
"#;

/// Helpers shared by the task scripts: reading a task's indexed fields, and removing, adding or
/// replacing a task and its index entries. The hash `t:<id>` keeps a copy of every field an
/// index depends on, so a script can unindex the old version without parsing JSON.
const TASK_LIB: &str = r#"
-- Seqs per priority band of the run-order score: (10 - priority) * BAND + seq stays below
-- 2^53 (exact in a double) for every priority while seq < BAND.
local BAND = 562949953421312
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
-- The shared queue (see the store's data model): `q-ready` holds the tasks an instance may
-- claim now, `t-lane:<session>` a session's live (pending or processing) turns by seq, and
-- `q-lease` the claimed tasks by lease expiry. A session's turns run one at a time in
-- submission order, so only its earliest live turn can be ready, and only while pending and
-- not claimed.
local function run_score(prio, seq)
  return int((10 - tonumber(prio)) * BAND + tonumber(seq))
end
local function leased(id)
  return redis.call('ZSCORE', P .. 'q-lease', id) ~= false
end
local function relane(sess)
  local head = redis.call('ZRANGE', P .. 't-lane:' .. sess, 0, 0)[1]
  if not head then return end
  local h = redis.call('HMGET', P .. 't:' .. head, 'status', 'prio', 'seq')
  if h[1] == 'pending' and not leased(head) then
    redis.call('ZADD', P .. 'q-ready', run_score(h[2], h[3]), head)
  end
end
-- A pending task back in the queue (its claim was released or expired before it started).
local function requeue(id)
  local h = redis.call('HMGET', P .. 't:' .. id, 'status', 'prio', 'seq', 'sess')
  if h[1] ~= 'pending' then return end
  if h[4] then relane(h[4]) else redis.call('ZADD', P .. 'q-ready', run_score(h[2], h[3]), id) end
end
local function unindex(id, f)
  redis.call('ZREM', P .. 'q-ready', id)
  if f.sess then redis.call('ZREM', P .. 't-lane:' .. f.sess, id) end
  redis.call('ZREM', P .. 't-all', id)
  redis.call('ZREM', P .. 't-status:' .. f.status, id)
  redis.call('ZREM', P .. 't-run', id)
  redis.call('ZREM', P .. 't-finished', id)
  redis.call('ZREM', owner_key(f.owner), id)
  if f.sess then redis.call('ZREM', P .. 't-session:' .. f.sess, id) end
  if f.costn and f.costn ~= '0' then redis.call('DECRBY', P .. 't-cost', f.costn) end
end
-- The sorted-set entries of version `f` that follow from its fields alone (`q-ready` also
-- depends on leases and lanes): key -> score.
local function entries(f)
  local e = {[P .. 't-all'] = f.seq, [P .. 't-status:' .. f.status] = f.seq,
             [owner_key(f.owner)] = f.seq}
  if f.sess then e[P .. 't-session:' .. f.sess] = f.seq end
  if f.status == 'pending' then e[P .. 't-run'] = run_score(f.prio, f.seq) end
  if f.sess and (f.status == 'pending' or f.status == 'processing') then
    e[P .. 't-lane:' .. f.sess] = f.seq
  end
  if f.fin then e[P .. 't-finished'] = f.fin end
  return e
end
-- Write version `f` of task `id` over `old` (nil: a new task): the hash, the index entries
-- that differ, readiness, the session's lane and the cost total.
local function write(id, key, old, f)
  local h = {'doc', f.doc, 'seq', f.seq, 'rev', f.rev, 'status', f.status, 'prio', f.prio,
             'costn', f.costn}
  if f.sess then h[#h + 1] = 'sess'; h[#h + 1] = f.sess end
  if f.owner then h[#h + 1] = 'owner'; h[#h + 1] = f.owner end
  if f.fin then h[#h + 1] = 'fin'; h[#h + 1] = f.fin end
  redis.call('HSET', key, unpack(h))
  local before = {}
  if old then
    local gone = {}
    if old.sess and not f.sess then gone[#gone + 1] = 'sess' end
    if old.owner and not f.owner then gone[#gone + 1] = 'owner' end
    if old.fin and not f.fin then gone[#gone + 1] = 'fin' end
    if #gone > 0 then redis.call('HDEL', key, unpack(gone)) end
    before = entries(old)
    if old.status == 'pending' then redis.call('ZREM', P .. 'q-ready', id) end
  end
  local after = entries(f)
  for k in pairs(before) do
    if after[k] == nil then redis.call('ZREM', k, id) end
  end
  for k, score in pairs(after) do
    if before[k] ~= score then redis.call('ZADD', k, score, id) end
  end
  if f.status == 'pending' and not f.sess and not leased(id) then
    redis.call('ZADD', P .. 'q-ready', run_score(f.prio, f.seq), id)
  end
  if f.sess then relane(f.sess) end
  local cost = tonumber(f.costn) - tonumber((old and old.costn) or '0')
  if cost ~= 0 then redis.call('INCRBY', P .. 't-cost', int(cost)) end
end
local function put(id, key, f)
  redis.call('DEL', key)
  write(id, key, nil, f)
end
-- Compare-and-set: replace task ARGV[2] by the version in ARGV[4..11] if its revision is still
-- ARGV[3]; the seq stays, the revision goes up by one. Returns whether it wrote.
local function cas()
  local id = ARGV[2]
  local key = P .. 't:' .. id
  local old = stored(key)
  if not old or old.rev ~= ARGV[3] then return false end
  write(id, key, old, given(old.seq, int(tonumber(old.rev) + 1)))
  return true
end
"#;

/// Insert a task: refuse an existing id, take the next seq, write the hash and every index.
/// ARGV: prefix, id, (unused), then the fields of [`TASK_LIB`]'s `given`, then two optional
/// admission checks of the shared queue: `ARGV[12] = '1'` refuses a session turn while the
/// session has a live turn, `ARGV[13]` (a number > 0) refuses when that many tasks are pending.
/// Returns the seq, `"exists"`, `"exhausted"` (no seq left below the band size), `"busy"`, or
/// `"full:<pending>"`.
pub(super) static INSERT_TASK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{}",
        r#"
local id = ARGV[2]
local key = P .. 't:' .. id
if redis.call('EXISTS', key) == 1 then return 'exists' end
if ARGV[12] == '1' and ARGV[7] ~= '' and redis.call('ZCARD', P .. 't-lane:' .. ARGV[7]) > 0 then
  return 'busy'
end
local max_pending = tonumber(ARGV[13] or '0') or 0
if max_pending > 0 then
  local pending = redis.call('ZCARD', P .. 't-run')
  if pending >= max_pending then return 'full:' .. pending end
end
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
        "{PREFIX_LIB}{TASK_LIB}{}",
        r#"
if cas() then return 1 end
return 0
"#
    ))
});

/// Delete up to `ARGV[3]` final tasks finished before `ARGV[2]` (ms) with their index entries.
/// Returns {entries looked at, tasks deleted}: the caller repeats while a batch was full.
pub(super) static DELETE_FINISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{}",
        r#"
local ids = redis.call('ZRANGEBYSCORE', P .. 't-finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local deleted = 0
for _, id in ipairs(ids) do
  local key = P .. 't:' .. id
  local old = stored(key)
  if old then
    unindex(id, old)
    redis.call('DEL', key)
    -- The task's approvals go with it.
    local ak = P .. 'ap:' .. id
    for _, m in ipairs(redis.call('ZRANGE', ak, 0, -1)) do
      redis.call('HDEL', P .. 'ap-docs', m)
      redis.call('ZREM', P .. 'ap-all', m)
      redis.call('ZREM', P .. 'ap-pending', m)
    end
    redis.call('DEL', ak)
    deleted = deleted + 1
  else
    redis.call('ZREM', P .. 't-finished', id)
  end
end
return {#ids, deleted}
"#
    ))
});

/// Decide a pending approval (compare-and-set on its status). KEYS: `ap-docs`, `ap-pending`;
/// ARGV: the member (`<task>:<id>`), the decided doc. Pending docs never change, so the caller
/// computed the new doc from exactly what is stored if it is still pending. Returns {0} when
/// missing, {1, stored doc} when already decided, {2, new doc} when written.
pub(super) static DECIDE_APPROVAL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local doc = redis.call('HGET', KEYS[1], ARGV[1])
if not doc then return {0} end
if cjson.decode(doc).status ~= 'pending' then return {1, doc} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return {2, ARGV[2]}
"#,
    )
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

/// Helpers of the session scripts, like [`TASK_LIB`] for tasks (their names start with
/// `session_`, so that a script can use both libraries). Every index scores a session by
/// `created` (ms) except `s-updated`, which serves idle-session deletion.
const SESSION_LIB: &str = r#"
local function session_owner_key(owner)
  if owner then return P .. 's-owner:' .. owner end
  return P .. 's-anon'
end
local function session_stored(key)
  local v = redis.call('HMGET', key, 'created', 'status', 'path', 'owner', 'updated')
  if not v[1] then return nil end
  return {created = v[1], status = v[2], path = v[3], owner = v[4], updated = v[5]}
end
local function session_unindex(id, f)
  redis.call('ZREM', P .. 's-all', id)
  redis.call('ZREM', P .. 's-updated', id)
  redis.call('ZREM', P .. 's-status:' .. f.status, id)
  redis.call('ZREM', P .. 's-path:' .. f.path, id)
  redis.call('ZREM', session_owner_key(f.owner), id)
end
-- Insert or replace a session from ARGV[b + 2 ..= b + 11]: id, mode ('insert': refused when it
-- exists, 'update': refused when missing), doc, created, updated, status, path, owner flag,
-- owner, search text. Returns 1 when written.
-- The sorted-set entries of a session version: key -> score.
local function session_entries(f)
  return {[P .. 's-all'] = f.created, [P .. 's-updated'] = f.updated,
          [P .. 's-status:' .. f.status] = f.created, [P .. 's-path:' .. f.path] = f.created,
          [session_owner_key(f.owner)] = f.created}
end
local function session_put(b)
  local id, mode = ARGV[b + 2], ARGV[b + 3]
  local key = P .. 's:' .. id
  local old = session_stored(key)
  if (mode == 'insert' and old) or (mode == 'update' and not old) then return 0 end
  local f = {created = ARGV[b + 5], updated = ARGV[b + 6], status = ARGV[b + 7],
             path = ARGV[b + 8], owner = false}
  if ARGV[b + 9] == '1' then f.owner = ARGV[b + 10] end
  local h = {'doc', ARGV[b + 4], 'created', f.created, 'updated', f.updated,
             'status', f.status, 'path', f.path, 'search', ARGV[b + 11]}
  if f.owner then h[#h + 1] = 'owner'; h[#h + 1] = f.owner end
  -- Nothing of a record without its fields is kept (as for tasks, `put`).
  if not old then redis.call('DEL', key) end
  redis.call('HSET', key, unpack(h))
  -- Only the index entries that differ from the stored version's.
  local before = {}
  if old then
    if old.owner and not f.owner then redis.call('HDEL', key, 'owner') end
    before = session_entries(old)
  end
  local after = session_entries(f)
  for k in pairs(before) do
    if after[k] == nil then redis.call('ZREM', k, id) end
  end
  for k, score in pairs(after) do
    if before[k] ~= score then redis.call('ZADD', k, score, id) end
  end
  return 1
end
"#;

/// Insert or replace a session: ARGV: prefix, then the fields of [`SESSION_LIB`]'s
/// `session_put`. Returns 1 when written.
pub(super) static PUT_SESSION: LazyLock<Script> =
    LazyLock::new(|| Script::new(&format!("{PREFIX_LIB}{SESSION_LIB}return session_put(0)")));

/// Helpers of the transcript scripts (see `cluster::transcripts`).
const TRANSCRIPT_LIB: &str = r#"
-- Store a session's CLI transcript from ARGV[b + 2 ..= b + 9]: session id, base sha ('' =
-- nothing stored), sha, len, instance, at (ms), has data ('1'/'0'), data; unless the session
-- is gone or another save replaced the version the turn started from. Returns 'saved',
-- 'same', 'moved' or 'deleted'.
local function transcript_save(b)
  local id = ARGV[b + 2]
  if redis.call('EXISTS', P .. 's:' .. id) == 0 then return 'deleted' end
  local key = P .. 'tr:' .. id
  local cur = redis.call('HGET', key, 'sha')
  if not cur then cur = '' end
  if cur == ARGV[b + 4] then return 'same' end
  if cur ~= ARGV[b + 3] then return 'moved' end
  redis.call('DEL', key)
  redis.call('HSET', key, 'sha', ARGV[b + 4], 'len', ARGV[b + 5], 'by', ARGV[b + 6], 'at', ARGV[b + 7])
  if ARGV[b + 8] == '1' then redis.call('HSET', key, 'data', ARGV[b + 9]) end
  return 'saved'
end
"#;

/// Store a session's transcript: ARGV: prefix, then the fields of [`TRANSCRIPT_LIB`]'s
/// `transcript_save`. Returns its answer.
pub(super) static SAVE_TRANSCRIPT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TRANSCRIPT_LIB}return transcript_save(0)"
    ))
});

/// Delete session `ARGV[2]`, its index entries and its stored CLI transcript (`tr:<id>`, see
/// `cluster::transcripts`: a deleted conversation must not stay readable, and the transcript
/// is written only while `s:<id>` exists, so it cannot come back). Returns 1 when it existed.
pub(super) static DELETE_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{SESSION_LIB}{}",
        r#"
local key = P .. 's:' .. ARGV[2]
local old = session_stored(key)
if not old then return 0 end
session_unindex(ARGV[2], old)
redis.call('DEL', key, P .. 'tr:' .. ARGV[2])
return 1
"#
    ))
});

/// Delete up to `ARGV[3]` sessions updated before `ARGV[2]` (ms), with their stored transcripts
/// (as [`DELETE_SESSION`]). Returns {looked at, deleted}.
pub(super) static DELETE_IDLE_SESSIONS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{SESSION_LIB}{}",
        r#"
local ids = redis.call('ZRANGEBYSCORE', P .. 's-updated', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local deleted = 0
for _, id in ipairs(ids) do
  local key = P .. 's:' .. id
  local old = session_stored(key)
  if old then
    session_unindex(id, old)
    redis.call('DEL', key, P .. 'tr:' .. id)
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

/// Give an idempotency claim back. KEYS[1]: the claim; ARGV[1]: the value it must still hold.
/// Returns 1 when deleted, 0 when it held another value (or was gone).
pub(super) static RELEASE_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('HGET', KEYS[1], 'value') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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

/// The shared queue's lease helpers: Redis's clock (`TIME`), so that the instances' clocks
/// never decide whose lease has expired.
const LEASE_LIB: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function take_lease(id, instance, until_ms)
  redis.call('ZADD', P .. 'q-lease', int(until_ms), id)
  redis.call('HSET', P .. 'q-owner', id, instance)
end
local function drop_lease(id)
  redis.call('ZREM', P .. 'q-lease', id)
  redis.call('HDEL', P .. 'q-owner', id)
end
-- Claim up to `want` ready tasks in run order for `instance`, leased until `until_ms`, while
-- fewer than `cap` tasks are leased across all instances (0: no cap). Appends each one's id,
-- doc, seq and rev to `out` (its record as the claim read it, so that its start needs no read).
local function claim_ready(out, instance, until_ms, cap, want)
  for _ = 1, want do
    if cap > 0 and redis.call('ZCARD', P .. 'q-lease') >= cap then return end
    local first = redis.call('ZPOPMIN', P .. 'q-ready')
    local id = first[1]
    if not id then return end
    local h = redis.call('HMGET', P .. 't:' .. id, 'doc', 'seq', 'rev')
    -- Indexes never outlive their record (every write and delete goes through a script); a
    -- ready id without one is skipped rather than handed out.
    if h[1] and h[2] and h[3] then
      take_lease(id, instance, until_ms)
      out[#out + 1] = id
      out[#out + 1] = h[1]
      out[#out + 1] = h[2]
      out[#out + 1] = h[3]
    end
  end
end
"#;

/// Claim up to `ARGV[5]` ready tasks for instance `ARGV[2]`, each with a lease of `ARGV[3]` ms,
/// while fewer than `ARGV[4]` tasks are leased across all instances (0: no global cap). The
/// claimed tasks are still `pending`; the claimant starts them (`start_task`) or releases them.
/// Returns {pending tasks in the namespace, then id, doc, seq, rev of each claimed task} in run
/// order.
pub(super) static CLAIM_TASKS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{LEASE_LIB}{}",
        r#"
local instance, lease, cap, want = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local out = {redis.call('ZCARD', P .. 't-run')}
claim_ready(out, instance, now_ms() + lease, cap, want)
return out
"#
    ))
});

/// The end of a run on the shared queue, in one step. ARGV:
///
/// * 1..=11: the final record of task `ARGV[2]`, written over the revision its start wrote
///   (`ARGV[3]`; the compare-and-set of [`CAS_TASK`]);
/// * 12..=15: instance, lease (ms), global cap, tasks wanted: the instance's lease on the task
///   is dropped, and up to that many next tasks are claimed for the freed slot (as
///   [`CLAIM_TASKS`]);
/// * 16 = `'1'`: the session's accounting for the turn, 17: the session's record as read
///   before the run, 18..=27: its new version (`session_put`); written only if the record is
///   still the one read (else the caller reads it again and writes the accounting itself);
/// * 28 = `'1'`: the turn's transcript, 29..=36 (`transcript_save`).
///
/// Atomic: the session's next turn, which the final record lets into the queue (on any
/// instance), never finds the session without this turn's accounting or transcript, and the
/// freed slot's lease goes to the next task under the same cap.
///
/// Returns {0} when the task changed since its start (a cancel or a reaper ended it): nothing
/// is written. Else {1, pending tasks in the namespace, the transcript save's answer ('' when
/// none), 1 when the accounting was written, then id, doc, seq, rev of each claimed task}.
pub(super) static FINISH_RUN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{LEASE_LIB}{SESSION_LIB}{TRANSCRIPT_LIB}{}",
        r#"
if not cas() then return {0} end
local id, instance = ARGV[2], ARGV[12]
if redis.call('HGET', P .. 'q-owner', id) == instance then drop_lease(id) end
local saved = ''
if ARGV[28] == '1' then saved = transcript_save(27) end
local accounted = 0
if ARGV[16] == '1' and redis.call('HGET', P .. 's:' .. ARGV[18], 'doc') == ARGV[17] then
  accounted = session_put(16)
end
local out = {1, redis.call('ZCARD', P .. 't-run'), saved, accounted}
local want = tonumber(ARGV[15])
if want > 0 then claim_ready(out, instance, now_ms() + tonumber(ARGV[13]), tonumber(ARGV[14]), want) end
return out
"#
    ))
});

/// Renew instance `ARGV[2]`'s leases on the tasks `ARGV[4..]` by `ARGV[3]` ms. Returns the ids
/// it must stop running: the lease is no longer its own (expired and taken over), or the task
/// is final or gone (cancelled or ended by another instance).
pub(super) static RENEW_LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{LEASE_LIB}{}",
        r#"
local instance, lease = ARGV[2], tonumber(ARGV[3])
local until_ms = now_ms() + lease
local stop = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local status = redis.call('HGET', P .. 't:' .. id, 'status')
  if redis.call('HGET', P .. 'q-owner', id) ~= instance then
    stop[#stop + 1] = id
  else
    redis.call('ZADD', P .. 'q-lease', 'XX', int(until_ms), id)
    if status ~= 'pending' and status ~= 'processing' then stop[#stop + 1] = id end
  end
end
return stop
"#
    ))
});

/// Instance `ARGV[2]` is done with task `ARGV[3]`: drop its lease (only its own), and put the
/// task back in the queue if it never started. Returns 1 when the lease was its own.
pub(super) static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{LEASE_LIB}{}",
        r#"
local instance, id = ARGV[2], ARGV[3]
if redis.call('HGET', P .. 'q-owner', id) ~= instance then return 0 end
drop_lease(id)
requeue(id)
return 1
"#
    ))
});

/// Take over up to `ARGV[4]` leases that expired (their instance stopped renewing them) for
/// instance `ARGV[2]`, each for `ARGV[3]` ms. A task that never started goes back to the queue
/// (it never ran, so running it elsewhere runs it once); the others stay leased by the caller,
/// which ends a `processing` one `failed`/`interrupted` and then releases it.
/// Also takes over `processing` tasks without a lease (left by a build without the shared queue).
/// Returns {id, status, id, status, ...} of the leases taken over.
pub(super) static REAP_LEASES: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{LEASE_LIB}{}",
        r#"
local instance, lease, batch = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', P .. 'q-lease', '-inf', int(now), 'LIMIT', 0, batch)
local out = {}
for _, id in ipairs(expired) do
  local status = redis.call('HGET', P .. 't:' .. id, 'status')
  if status == 'pending' then
    drop_lease(id)
    requeue(id)
  elseif not status then
    drop_lease(id)
  else
    take_lease(id, instance, now + lease)
    out[#out + 1] = id
    out[#out + 1] = status
  end
end
-- A task running without any lease was left by a build without the shared queue (or its
-- lease was lost): no instance renews it, so it is taken over the same way.
for _, id in ipairs(redis.call('ZRANGE', P .. 't-status:processing', 0, batch - 1)) do
  if not leased(id) then
    take_lease(id, instance, now + lease)
    out[#out + 1] = id
    out[#out + 1] = 'processing'
  end
end
return out
"#
    ))
});

/// Schema 1 → 2: build the shared queue's sets (`q-ready`, `t-lane:<session>`) from the
/// pending and processing tasks. Idempotent; runs once per namespace, atomically.
pub(super) static MIGRATE_QUEUE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PREFIX_LIB}{TASK_LIB}{}",
        r#"
local sessions = {}
for _, status in ipairs({'pending', 'processing'}) do
  for _, id in ipairs(redis.call('ZRANGE', P .. 't-status:' .. status, 0, -1)) do
    local f = stored(P .. 't:' .. id)
    if f then
      if f.sess then
        redis.call('ZADD', P .. 't-lane:' .. f.sess, f.seq, id)
        sessions[f.sess] = true
      elseif status == 'pending' and not leased(id) then
        redis.call('ZADD', P .. 'q-ready', run_score(f.prio, f.seq), id)
      end
    end
  end
end
for sess in pairs(sessions) do relane(sess) end
redis.call('SET', P .. 'schema', ARGV[2])
return 1
"#
    ))
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
