"""Every Lua script the bridge runs in Redis, each with what it takes and what it answers.

A script is one atomic step: no other client's command runs between its reads and its writes.
The modules that run them (named beside each) register them on their connection, and run them
with ``run`` where a pipeline may carry them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.client import Pipeline
from redis.commands.core import Script


def run(script: Script, client: Redis | Pipeline, keys: Sequence[Any],
        args: Sequence[Any]) -> Any:
    """``script`` run by ``client``; on a pipeline, by its text: redis-py asks Redis whether each
    registered script of a pipeline is loaded (SCRIPT EXISTS, a round trip) every time it is
    executed, while a script sent as text costs only its bytes (Redis keeps it compiled under
    its hash)."""
    if isinstance(client, Pipeline):
        return client.eval(script.script, len(keys), *keys, *args)
    return script(keys=keys, args=args, client=client)

# -- the receiver (bridge.queue) ----------------------------------------------------------------

# Replicas that are online (not still syncing): ROLE is not allowed in scripts, INFO is.
_ONLINE_REPLICAS = """
local function online_replicas(wanted)
  if wanted == '' then return -1 end
  local _, online = string.gsub(redis.call('INFO', 'replication'), 'state=online', '')
  return online
end
"""

# Makes a write for /readyz to try. KEYS: 1 the probe key. ARGV: 1 its ttl (ms), 2 as ACCEPT's 8.
# Returns the online replicas (-1: not counted).
PROBE = _ONLINE_REPLICAS + """
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
return online_replicas(ARGV[2])
"""

# A webhook accepted (bridge.store.accept writes its arguments).
# KEYS: 1 seen marker, 2 stored webhook, 3 the rq queue, 4 rq's set of queues, 5 the activity
# list; then per notification: its job, its thread root ('' for none), its backlog ('' for none).
# ARGV: 1 dedupe window (0: none), 2 webhook record ('' : none), 3 its ttl, 4 activity entry
# ('' : none), 5 activity length, 6 notifications, 7 the root's "expected" marker, 8 '1' to
# count the online replicas ('' : don't); then per notification: job id, root ttl, backlog
# score (raised past the line's last, so a line is in queue order), number of job fields, fields
# and values.
# Then, after the notifications', the summaries' totals (bridge.summaries_totals): KEYS per
# summary: its totals, its products; ARGV: the totals' field cap, the products' cap, the number
# of summaries, then per summary: its fields, each field and increment, its products, each
# name and quantity. Added unless every job of the webhook was there already (a re-delivery
# the dedupe window did not catch); a new field past the cap counts in 'dropped' instead.
# Last, KEYS: the source's last-heard record ('' : none); ARGV: when it was received.
# Returns {0, replicas} for a delivery seen before, else {1, replicas, then 1 (written) or 0
# (job already there) per notification}; replicas is -1 when not counted.
# A job is written as rq's own unique enqueue writes one (rq.scripts): its hash if none is
# there, its id pushed on the queue, the queue in rq's set of queues.
ACCEPT = _ONLINE_REPLICAS + """
local window = tonumber(ARGV[1])
if window > 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  -- Written again as it is: a write to WAIT for, which reaches a replica only after the
  -- first accept's, so a re-delivery is acknowledged only once those are replicated too.
  redis.call('SET', KEYS[1], 1, 'KEEPTTL')
  return {0, online_replicas(ARGV[8])}
end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
local written = {1, online_replicas(ARGV[8])}
local fresh = tonumber(ARGV[6]) == 0  -- a webhook without notifications is new here
local at = 9
for i = 0, tonumber(ARGV[6]) - 1 do
  local job, root, backlog = KEYS[6 + 3 * i], KEYS[7 + 3 * i], KEYS[8 + 3 * i]
  local id, root_ttl, score = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local first = at + 4
  at = first + 2 * tonumber(ARGV[at + 3])
  if redis.call('EXISTS', job) == 1 then
    written[#written + 1] = 0
  else
    redis.call('HSET', job, unpack(ARGV, first, at - 1))
    redis.call('RPUSH', KEYS[3], id)
    redis.call('SADD', KEYS[4], KEYS[3])
    if root ~= '' then redis.call('SET', root, ARGV[7], 'EX', root_ttl, 'NX') end
    if backlog ~= '' then
      -- A line is in the order its jobs were queued (as the queue itself is): one accepted
      -- after another never goes before it, whatever their receivers' clocks said.
      local last = redis.call('ZRANGE', backlog, -1, -1, 'WITHSCORES')[2]
      if last and tonumber(last) >= tonumber(score) then score = tonumber(last) + 0.000001 end
      redis.call('ZADD', backlog, score, id)
    end
    written[#written + 1] = 1
    fresh = true
  end
end
local k = 6 + 3 * tonumber(ARGV[6])
local max_fields, max_products = tonumber(ARGV[at]), tonumber(ARGV[at + 1])
local summaries = tonumber(ARGV[at + 2])
at = at + 3
for _ = 1, summaries do
  local totals, products = KEYS[k], KEYS[k + 1]
  k = k + 2
  for _ = 1, tonumber(ARGV[at]) do
    local field, by = ARGV[at + 1], ARGV[at + 2]
    at = at + 2
    if fresh then
      if redis.call('HLEN', totals) >= max_fields and redis.call('HEXISTS', totals, field) == 0
          then field, by = 'dropped', 1 end
      redis.call('HINCRBY', totals, field, by)
    end
  end
  at = at + 1
  for _ = 1, tonumber(ARGV[at]) do
    if fresh then redis.call('ZINCRBY', products, ARGV[at + 2], ARGV[at + 1]) end
    at = at + 2
  end
  at = at + 1
  -- Capped: the products ordered least go first (their counts are lost, said in docs).
  if fresh then redis.call('ZREMRANGEBYRANK', products, 0, -max_products - 1) end
end
if KEYS[k] ~= '' then redis.call('HSET', KEYS[k], 'at', ARGV[at], 'heard', 1) end
if window > 0 then redis.call('SET', KEYS[1], 1, 'EX', window) end
if ARGV[4] ~= '' then
  redis.call('LPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
return written
"""

# -- summaries (bridge.summaries_totals) ------------------------------------------------------

# A period claimed: exactly one worker (or command) gets it. KEYS: 1 the totals, 2 the products,
# 3 the state, 4 the claimed totals, 5 the claimed products. ARGV: 1 the period's end (epoch
# seconds), 2 '1' when late, 3 where a summary with no state starts. A period already posted
# (ending at or before the state's 'ends') or one claimed and not yet queued answers 0. Else the
# totals become the claimed ones (the next event counts in the next period), the state records
# the claim ('claimed_since', 'claimed_ends', 'claimed_late') and the new end; answers 1.
CLAIM_SUMMARY = """
local ends = redis.call('HGET', KEYS[3], 'ends') or ARGV[3]
if tonumber(ends) >= tonumber(ARGV[1]) or redis.call('HEXISTS', KEYS[3], 'claimed_ends') == 1
    then return 0 end
redis.call('DEL', KEYS[4], KEYS[5])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('RENAME', KEYS[1], KEYS[4]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('RENAME', KEYS[2], KEYS[5]) end
redis.call('HSET', KEYS[3], 'ends', ARGV[1], 'claimed_since', ends, 'claimed_ends', ARGV[1],
           'claimed_late', ARGV[2])
return 1
"""

# The claimed period's message is queued: its totals go. KEYS: as CLAIM_SUMMARY's. ARGV: 1 the
# period's end. Answers 1, or 0 when that period is no longer the one claimed.
SETTLE_SUMMARY = """
if redis.call('HGET', KEYS[3], 'claimed_ends') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('HDEL', KEYS[3], 'claimed_since', 'claimed_ends', 'claimed_late')
return 1
"""

# -- the activity record (bridge.activity) ------------------------------------------------------

# KEYS: 1 the activity list. ARGV: 1 the search text lowercased ('' : any), 2 as typed, 3 source,
# 4 type, 5 event id (its line and its replays'), 6 first line to look at, 7 matches wanted,
# 8 lines to look at, at most, 9 rq's job key prefix. Returns {next line to look at (-1: the
# end), matching lines…}. The jobs' keys are read by name (not in KEYS): fine on a single Redis
# (or Sentinel's master), which is what the bridge runs on. A job's meta is JSON as rq's
# JSONSerializer writes it, with delivery's ``"sent": {"id": "<message id>", …}``.
SEARCH_ACTIVITY = """
local q, typed, source, etype, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local first, want, span = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lines = redis.call('LRANGE', KEYS[1], first, first + span - 1)
local function sent_as(entry)
  for _, n in ipairs(entry.notifications) do
    local meta = redis.call('HGET', ARGV[9] .. n.job_id, 'meta')
    if meta and string.find(meta, '"id": "' .. typed .. '"', 1, true) then return true end
  end
  return false
end
local found = {-1}
for i, line in ipairs(lines) do
  local entry = cjson.decode(line)
  if (source == '' or entry.source == source) and (etype == '' or entry.type == etype)
      and (id == '' or entry.event_id == id or entry.replay_of == id)
      and (q == '' or string.find(entry.terms or '', q, 1, true) or sent_as(entry)) then
    found[#found + 1] = line
    if #found - 1 >= want then
      found[1] = first + i
      return found
    end
  end
end
if #lines == span then found[1] = first + span end
return found
"""

# -- digests (bridge.digest) --------------------------------------------------------------------

# KEYS: 1 the job's line, 2 its digest. ARGV: 1 the job id, 2 the threshold, 3 how many to take,
# 4 the claims' ttl, 5 the in-digest key prefix, 6 the digest key prefix.
# A claim once made (KEYS[2]) is answered again: {"owner", ids-json} ("[]": alone). A job taken
# into another's digest is {"taken", owner}. Else, if at least ARGV[2] others wait behind it in
# its line, it takes up to ARGV[3] of the next ones out of the line: {"owner", ids-json}; or
# {"alone"}. It takes a contiguous run, and never a job that claimed itself (it is sending). The
# line's head stays in it until its post is recorded (``LEAVE_LINE``, which drops an alone
# claim), so nothing behind it or its digest goes first; a job sending from further back (out of
# turn) leaves it now.
CLAIM_DIGEST = """
local mine = redis.call('GET', KEYS[2])
if mine then return {'owner', mine} end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
if not rank then
  local owner = redis.call('GET', ARGV[5] .. ARGV[1])
  if owner then return {'taken', owner} end
  return {'alone'}
end
local behind = redis.call('ZCARD', KEYS[1]) - rank - 1
local from = rank + 1
if rank > 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  from = rank
end
local popped = {}
if behind >= tonumber(ARGV[2]) and tonumber(ARGV[3]) >= 1 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], from, from + tonumber(ARGV[3]) - 1)) do
    if redis.call('EXISTS', ARGV[6] .. id) == 1 then break end
    popped[#popped + 1] = id
  end
end
if #popped == 0 then
  redis.call('SET', KEYS[2], '[]', 'EX', ARGV[4])
  return {'alone'}
end
redis.call('ZREM', KEYS[1], unpack(popped))
for _, id in ipairs(popped) do redis.call('SET', ARGV[5] .. id, ARGV[1], 'EX', ARGV[4]) end
local ids = cjson.encode(popped)
redis.call('SET', KEYS[2], ids, 'EX', ARGV[4])
return {'owner', ids}
"""

# Jobs leave a line of new messages (posted, dead-lettered, gone) and hand over: the line's new
# head, and the jobs of a digest just posted, if *parked* (in rq's scheduled registry, waiting
# their turn), go to the front of the queue at once instead of when their fallback is due.
# KEYS: 1 the line, 2 rq's scheduled registry of the queue, 3 the queue.
# ARGV: 1 rq's job key prefix, 2 the enqueue time as rq writes it, 3 seconds: a job due sooner
# is left to rq's scheduler, 4 the digest key prefix (a leaving job's claim to send alone is
# dropped: a retry from the dead letters claims afresh), 5 how many leave; then those job ids;
# then the ids to wake; last, the in-run key prefix (a job a run took is never woken: the run
# posts it). Returns how many jobs were moved.
# rq's scheduler reads the due jobs, then moves them in a transaction of its own, not atomic with
# that read: a job due by then may be on its way already. So only a job due more than ARGV[3]
# seconds from now (Redis's clock; rq's scores are Unix seconds) is moved here, as rq's
# scheduler moves one (status "queued", ``enqueued_at``, its id on the queue): never twice.
LEAVE_LINE = """
pcall(redis.replicate_commands)  -- writes after TIME (see ACQUIRE_SLOT)
local leaving = tonumber(ARGV[5])
for i = 6, 5 + leaving do
  redis.call('ZREM', KEYS[1], ARGV[i])
  if redis.call('GET', ARGV[4] .. ARGV[i]) == '[]' then redis.call('DEL', ARGV[4] .. ARGV[i]) end
end
local now = tonumber(redis.call('TIME')[1])
local moved = 0
local in_run = ARGV[#ARGV]
local function wake(id)
  local due = redis.call('ZSCORE', KEYS[2], id)
  if not due or tonumber(due) <= now + tonumber(ARGV[3]) then return end
  if redis.call('EXISTS', in_run .. id) == 1 then return end
  redis.call('ZREM', KEYS[2], id)
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then return end
  redis.call('HSET', ARGV[1] .. id, 'status', 'queued', 'enqueued_at', ARGV[2])
  redis.call('LPUSH', KEYS[3], id)
  moved = moved + 1
end
for i = 6 + leaving, #ARGV - 1 do wake(ARGV[i]) end
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if head then wake(head) end
return moved
"""

# -- runs (bridge.delivery.run) ----------------------------------------------------------------

# A run takes the jobs right behind its own in a line of new messages (from the front if its own
# is not there), in order, as long as each waits in the queue or is parked (due later than
# ARGV[6] s from now: see LEAVE_LINE), and only while fewer than ARGV[7] others wait in the line
# (as many make a digest, which a run never does). Each is parked (rq's scheduled registry)
# for ARGV[3] s, its fallback should the run's worker die, and marked as the run's.
# KEYS: 1 the line, 2 the queue, 3 rq's scheduled registry.
# ARGV: 1 the run's job, 2 at most how many, 3 the fallback (s from now), 4 the in-run key
# prefix, 5 the mark's ttl (s), 6 the margin (s), 7 the digest threshold, 8 rq's job
# key prefix. Returns how many waited behind the run's job, then, for each job taken in line
# order, its id and its record's data and meta (false for a job gone): what the run reads of it
# (bridge.store.runs.decode).
CLAIM_RUN = """
pcall(redis.replicate_commands)  -- writes after TIME (see ACQUIRE_SLOT)
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
local from = rank and rank + 1 or 0
local behind = redis.call('ZCARD', KEYS[1]) - from
if behind >= tonumber(ARGV[7]) then return {behind} end
local now = tonumber(redis.call('TIME')[1])
local taken = {behind}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], from, from + tonumber(ARGV[2]) - 1)) do
  if redis.call('EXISTS', ARGV[4] .. id) == 1 then break end
  if redis.call('LREM', KEYS[2], 1, id) == 0 then
    local due = redis.call('ZSCORE', KEYS[3], id)
    if not due or tonumber(due) <= now + tonumber(ARGV[6]) then break end
  end
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
  redis.call('HSET', ARGV[8] .. id, 'status', 'scheduled')
  redis.call('SET', ARGV[4] .. id, ARGV[1], 'EX', ARGV[5])
  local record = redis.call('HMGET', ARGV[8] .. id, 'data', 'meta')
  taken[#taken + 1] = id
  taken[#taken + 1] = record[1]
  taken[#taken + 1] = record[2]
end
return taken
"""

# A job a run posted, finished as rq's worker finishes one (bridge.store.runs), out of the run's
# parking and of its line. KEYS: 1 the job, 2 rq's scheduled registry, 3 rq's finished registry,
# 4 the line, 5 its in-run mark. ARGV: 1 the job id, 2 its meta, 3 started_at and 4 ended_at as
# rq writes them, 5 the result ttl (s), 6 its score in the finished registry (when it expires).
FINISH_IN_RUN = """
redis.call('HSET', KEYS[1], 'status', 'finished', 'meta', ARGV[2], 'started_at', ARGV[3],
           'ended_at', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[5])
return 1
"""

# The jobs of a digest just posted, finished by the job that posted it as rq's worker would
# finish them (bridge.store.runs), but for one another worker is running already (it ends it
# itself). KEYS: 1 the queue, 2 rq's scheduled registry, 3 rq's finished registry. ARGV: 1 the
# digest's job, 2 the in-digest key prefix, 3 rq's job key prefix, 4 ended_at as rq writes it,
# 5 the result ttl (s), 6 the finished registry's score; then the ids. Returns those finished.
FINISH_IN_DIGEST = """
local done = {}
for i = 7, #ARGV do
  local id = ARGV[i]
  if redis.call('GET', ARGV[2] .. id) == ARGV[1]
      and (redis.call('LREM', KEYS[1], 1, id) == 1 or redis.call('ZREM', KEYS[2], id) == 1) then
    redis.call('HSET', ARGV[3] .. id, 'status', 'finished', 'ended_at', ARGV[4])
    redis.call('EXPIRE', ARGV[3] .. id, ARGV[5])
    redis.call('ZADD', KEYS[3], ARGV[6], id)
    done[#done + 1] = id
  end
end
return done
"""

# The jobs a run took and did not post go back to the front of the queue, in line order, as
# rq's scheduler moves one; a job whose mark is no longer the run's (expired: rq's scheduler
# may have moved it already) is left alone. KEYS: 1 the queue, 2 rq's scheduled registry.
# ARGV: 1 the run's job, 2 the in-run key prefix, 3 rq's job key prefix, 4 the enqueue time as
# rq writes it; then the ids, in line order. Returns how many went back.
HAND_BACK = """
local back = 0
for i = #ARGV, 5, -1 do
  local id = ARGV[i]
  if redis.call('GET', ARGV[2] .. id) == ARGV[1] then
    redis.call('DEL', ARGV[2] .. id)
    if redis.call('ZREM', KEYS[2], id) == 1 and redis.call('EXISTS', ARGV[3] .. id) == 1 then
      redis.call('HSET', ARGV[3] .. id, 'status', 'queued', 'enqueued_at', ARGV[4])
      redis.call('LPUSH', KEYS[1], id)
      back = back + 1
    end
  end
end
return back
"""

# -- thread roots (bridge.threads) --------------------------------------------------------------

# Compare-and-set in one step, so two workers never both take the root. KEYS: 1 the root.
# ARGV: 1 the new root, 2 its ttl, 3 the "expected" marker, 4 '1' when this message may take an
# expected root's place, 5 the "abandoned" marker. Returns 1 when it became the root.
CLAIM_ROOT = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[5] then current = false end
if current and (current ~= ARGV[3] or ARGV[4] ~= '1') then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
# KEYS: 1 the root. ARGV: 1 the "expected" marker, 2 the "abandoned" one, which replaces it.
GIVE_UP_ROOT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') end
return 0
"""

# -- rate limits (bridge.ratelimit) -------------------------------------------------------------

# Redis < 7 needs effects replication to write after TIME; on 7 replicate_commands is a no-op
# (and may be removed one day), hence the pcall.
ACQUIRE_SLOT = """
-- KEYS: the buckets to take one slot from (the kind's, then the overall one unless it is the
-- kind). ARGV: for each key its limit and its window in microseconds; then the clock's offset
-- in microseconds; then a random suffix.
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[#ARGV - 1])
local wait = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local span = tonumber(ARGV[2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('%.0f', now - span))
  local used = redis.call('ZCARD', key)
  if used >= limit then
    -- the slot that must leave the window for one to be free
    local oldest = redis.call('ZRANGE', key, used - limit, used - limit, 'WITHSCORES')
    local free_in = tonumber(oldest[2]) + span - now
    if free_in < 1 then free_in = 1 end
    if free_in > wait then wait = free_in end
  end
end
if wait > 0 then
  return wait
end
local score = string.format('%.0f', now)
local member = t[1] .. string.format('%06d', tonumber(t[2])) .. '-' .. ARGV[#ARGV]
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, score, member)
  redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[2 * i]) / 1000))
end
return 0
"""

SLOTS_STATE = """
-- KEYS: buckets; ARGV: for each key its limit and window in microseconds; then the clock's
-- offset in microseconds; then a span in microseconds. Read-only. Answers, for each key, the
-- slots used in its window, the microseconds until one is free, and the slots used in the span.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2]) + tonumber(ARGV[#ARGV - 1])
local recent_after = '(' .. string.format('%.0f', now - tonumber(ARGV[#ARGV]))
local out = {}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local span = tonumber(ARGV[2 * i])
  local after = '(' .. string.format('%.0f', now - span)
  local used = redis.call('ZCOUNT', key, after, '+inf')
  local wait = 0
  if used >= limit then
    local oldest = redis.call('ZRANGEBYSCORE', key, after, '+inf', 'WITHSCORES',
                              'LIMIT', used - limit, 1)
    wait = tonumber(oldest[2]) + span - now
    if wait < 1 then wait = 1 end
  end
  out[#out + 1] = used
  out[#out + 1] = wait
  out[#out + 1] = redis.call('ZCOUNT', key, recent_after, '+inf')
end
return out
"""

# -- the worker (bridge.worker) -----------------------------------------------------------------

# Move a job id from rq's intermediate list back to the head of its queue, if it is still there.
# KEYS: 1 rq's intermediate list, 2 the queue. ARGV: 1 the job id.
REQUEUE_UNSTARTED = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
return redis.call('LPUSH', KEYS[2], ARGV[1])
"""

# Delete the lock only if it still names the dead scheduler (another may have taken it since).
# KEYS: 1 rq's scheduler lock. ARGV: 1 the dead scheduler's name.
RELEASE_SCHEDULER_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
