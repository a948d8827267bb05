-- Heartbeat, registration and delayed-job promotion in one round trip (the idle worker's only
-- periodic command besides its blocking claim).
-- KEYS[1] workers ZSET (wid -> deadline ms)   KEYS[2] reaped ZSET (tombstones)
-- KEYS[3] delayed ZSET (payload -> due ms)    KEYS[4] ready LIST    KEYS[5] poison LIST
-- KEYS[6] paused STRING (exists: the whole queue is paused)   KEYS[7] paused_steps SET
-- KEYS[8] epoch STRING (a random value written once; see below)
-- KEYS[9] cap_used HASH (step -> slots held)   KEYS[10..9+k] throttled LIST of each capped step
-- KEYS[10+k] rate_tat HASH   KEYS[11+k] rate_wake ZSET   KEYS[12+k..11+k+r] rate LIST of each
--   rate-limited step
-- ARGV[1] wid   ARGV[2] deadline ms   ARGV[3] 'register' | 'beat'   ARGV[4] reap grace ms
-- ARGV[5] promote limit   ARGV[6] the epoch the caller last saw ('' if none)
-- ARGV[7] a fresh random value, written as the epoch if there is none
-- ARGV[8] k, the number of capped steps   ARGV[9..8+2k] (step, cap) pairs, as KEYS[10..]
-- ARGV[9+2k] r, the number of rate-limited steps   ARGV[10+2k..9+2k+3r] (step, interval ms,
--   burst) triples
-- KEYS[#KEYS - 1] cancel HASH (`<wid>\n<job id>` -> requested at ms)   KEYS[#KEYS] cancelled LIST
-- Returns {status, next_due_in_ms (-1: none), reap_needed (0|1), poison_pending, paused (0|1),
--          {paused step names}, epoch, {ids of this worker's jobs an operator cancelled},
--          cancelled_pending, {cancel entries of workers that are gone (`<wid>\n<id>`)}}
--   status 1: beat recorded; 0: this wid was reaped (fence: stop and re-register);
--   2: Redis lost data, this wid with it: re-registered.
--
-- Proof, not inference. A wid missing from the registry was either removed on purpose (reaped;
-- its tombstone may since have been trimmed) or lost with Redis's data (a restart without
-- persistence, a failover to an empty replica, FLUSHALL). The epoch tells them apart: it is
-- written once and never removed, so only data loss removes or replaces it. Same epoch as the
-- caller saw: nothing was lost, so the wid was removed on purpose, whatever the time away, and
-- the caller is fenced. A wid reaped with no tombstone left gets one again, so any job that
-- reaches its list late is re-drained by the reapers. A missing or different epoch: the data
-- was lost, and the caller may restore what it still runs.
-- A full Redis (maxmemory, noeviction) refuses a script whose *first* write may grow memory
-- (ZADD, LPUSH, LMOVE...), and lets a script that has already written run to its end. Heartbeats
-- must go on when Redis is full, or every worker fences and nothing drains the queue: so the
-- deadline is written as ZREM then ZADD, and ZREM cannot grow memory.
-- Caps: a settle or a reap that frees a slot moves a waiting job to ready at once. The beat is
-- the safety net behind them: a step with free slots and waiting jobs (a cap raised by a
-- restart, a write lost in a failover) gets that many jobs moved back. More moved than slots
-- free costs nothing but a claim: the claim decides, and moves extras aside again.
-- Rates: the beat wakes rate-limited steps whose time has come (rates.lua), as the promoter
-- does; the promoters of the replicas that moved jobs aside wake on time, the beat is the net
-- behind them should those replicas die. With k = 0 and r = 0 nothing of this runs.
local cancel, cancelled = KEYS[#KEYS - 1], KEYS[#KEYS]
local err = guard({KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'zset', KEYS[4], 'list', KEYS[5], 'list',
                   KEYS[7], 'set', KEYS[8], 'string', cancel, 'hash', cancelled, 'list'})
if err then return err end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('GET', KEYS[8])
local status = 1
if ARGV[3] ~= 'register' and not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return {0, -1, 0, 0, 0, {}, epoch or '', {}, 0, {}} end
  if epoch and (ARGV[6] == '' or epoch == ARGV[6]) then
    redis.call('ZADD', KEYS[2], now, ARGV[1])
    return {0, -1, 0, 0, 0, {}, epoch, {}, 0, {}}
  end
  status = 2
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
if not epoch then
  epoch = ARGV[7]
  redis.call('SET', KEYS[8], epoch)
end
-- Retries go to the producer end: they wait behind jobs already queued.
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
for _, p in ipairs(due) do
  redis.call('ZREM', KEYS[3], p)
  redis.call('LPUSH', KEYS[4], p)
end
local next_due = -1
local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
for i = 1, tonumber(ARGV[8] or '0') do
  local list = KEYS[9 + i]
  if redis.call('TYPE', list).ok == 'list' then
    local free = tonumber(ARGV[8 + 2 * i]) - tonumber(redis.call('HGET', KEYS[9], ARGV[7 + 2 * i]) or '0')
    for _ = 1, free do
      if not redis.call('LMOVE', list, KEYS[4], 'RIGHT', 'RIGHT') then break end
    end
  end
end
local k = tonumber(ARGV[8] or '0')
local r = tonumber(ARGV[9 + 2 * k] or '0')
if r > 0 and redis.call('TYPE', KEYS[11 + k]).ok == 'zset' then
  local rates = {}
  for i = 1, r do
    local a = 9 + 2 * k + 3 * (i - 1)
    local interval = tonumber(ARGV[a + 2])
    rates[ARGV[a + 1]] = {interval = interval, tau = (tonumber(ARGV[a + 3]) - 1) * interval, list = KEYS[11 + k + i]}
  end
  wake_rates(KEYS[10 + k], KEYS[11 + k], KEYS[4], tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000, rates)
end
local reap = 0
if redis.call('ZCARD', KEYS[2]) > 0 or
   #redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[4]), 'LIMIT', 0, 1) > 0 then
  reap = 1
end
-- Cancellations: one HLEN while there are none, the usual case. This worker's are returned by
-- job id; those of a worker that is neither registered nor reaped (it deregistered at shutdown,
-- handing its jobs back) are orphans, returned whole for any worker to follow.
local cancels, orphans = {}, {}
if redis.call('HLEN', cancel) > 0 then
  local prefix = ARGV[1] .. '\n'
  for _, f in ipairs(redis.call('HKEYS', cancel)) do
    if string.sub(f, 1, #prefix) == prefix then
      cancels[#cancels + 1] = string.sub(f, #prefix + 1)
    else
      local w = string.match(f, '^([^\n]*)\n')
      if w and not redis.call('ZSCORE', KEYS[1], w) and not redis.call('ZSCORE', KEYS[2], w) then
        orphans[#orphans + 1] = f
      end
    end
  end
end
return {status, next_due, reap, redis.call('LLEN', KEYS[5]), redis.call('EXISTS', KEYS[6]),
        redis.call('SMEMBERS', KEYS[7]), epoch, cancels, redis.call('LLEN', cancelled), orphans}
