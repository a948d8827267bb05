-- Settles a batch of finished jobs after their outcome is durable. Each op first removes the
-- payload from this worker's own list: a 0 from LREM means the job is no longer ours (already
-- settled by an earlier try whose reply was lost, or rescued by the reaper), and then nothing
-- else is touched. LREM first also frees memory, so settling works when Redis is full. Every key
-- an op may write is type-checked before the first LREM (the guard): a write that would fail
-- after its payload was removed would lose the payload.
-- KEYS[1] proc LIST   KEYS[2] delayed ZSET   KEYS[3] attempts HASH   KEYS[4] interrupts HASH
-- KEYS[5] ready LIST   KEYS[6] paused_steps SET   KEYS[7] active HASH   KEYS[8] cap_used HASH
-- (step -> slots held)   KEYS[9] slots HASH (this worker's cap slots: sha1(payload) -> '<count> <step>')
-- KEYS[10..] held LISTs of the ops' steps and throttled LISTs of the capped steps, named by index
-- ARGV[1] k, the number of capped steps   ARGV[2..1+2k] (step, KEYS index of its throttled list)
-- ARGV[2+2k..]: triples (op, payload, arg), but a 'delay' op is four long:
--   'done'    outcome committed to Postgres (succeeded or dead): forget its counters
--   'retry'   count a failed attempt, schedule the payload arg ms from now
--   'delay'   (op, payload, arg, scheduled) claimed before its due time: schedule `scheduled` (the
--             payload, or a copy stamped with its enqueue time) arg ms from now, as a retry
--             without counting an attempt: nothing ran. A stamped copy starts with no counters,
--             and those of the claimed bytes are forgotten as a done op's are.
--   'requeue' hand back unfinished (shutdown): consumer end, runs next, not an attempt
--   'hold'    its step is paused: park it in the held list KEYS[arg] (`{queue}:held:<step>`), not
--             an attempt. If the step was resumed meanwhile, it goes back to ready instead:
--             nothing would ever drain the held list.
--   'release' (op, job id), two long, right after the op of the job it concerns: that copy of
--             the id is no longer running (active.lua). Applied only if that op found the job in
--             our list: then the mark is still this worker's (marks are taken over only from a
--             worker that was reaped, and reaping empties its list). It adds nothing to the reply.
-- KEYS[#KEYS - 1] cancel HASH (`<wid>\n<job id>` -> requested at ms)   KEYS[#KEYS] cancelled LIST
-- Returns one integer per op but 'release': 1 settled, 0 not ours.
-- Cancels: while any cancellation is pending (one HLEN per call otherwise), a job leaving our
-- list whose id an operator cancelled while we held it has that cancellation removed; if the op
-- would have it wait again (retry, delay, requeue, hold: it failed, was handed back or held
-- before our heartbeat fired its cancellation), it goes to the cancelled outbox instead, as
-- 'attempts|at_ms|wid|1|payload', and never runs again.
-- Caps: whatever the op, a job that leaves our list frees the cap slot it held (if it held one),
-- and one job waiting for a slot of that step moves to the consumer end of ready, so it is
-- claimed next. With k = 0, or while this worker holds no slot (a cap on a step it is not
-- running), nothing is looked up per job.
-- LREM counts from the right (-1): our list grows on the left, so the jobs that finish first,
-- the oldest, sit at the right end and are found after a short scan. The counters of done jobs
-- are deleted with one HDEL per hash for the whole batch (chunked: Lua's unpack has a limit).
local CHUNK = 1000
local k = tonumber(ARGV[1])
local wanted = {KEYS[1], 'list', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'list',
                KEYS[6], 'set', KEYS[7], 'hash'}
if k > 0 then
  wanted[#wanted + 1] = KEYS[8]
  wanted[#wanted + 1] = 'hash'
  wanted[#wanted + 1] = KEYS[9]
  wanted[#wanted + 1] = 'hash'
end
local CANCEL, CANCELLED = KEYS[#KEYS - 1], KEYS[#KEYS]
for i = 10, #KEYS - 2 do
  wanted[#wanted + 1] = KEYS[i]
  wanted[#wanted + 1] = 'list'
end
wanted[#wanted + 1] = CANCEL
wanted[#wanted + 1] = 'hash'
wanted[#wanted + 1] = CANCELLED
wanted[#wanted + 1] = 'list'
local err = guard(wanted)
if err then return err end
local waiting = {}
for i = 1, k do waiting[ARGV[2 * i]] = KEYS[tonumber(ARGV[1 + 2 * i])] end
-- Frees the cap slot the payload held, if any, and lets one waiting job of its step go.
local function release(p)
  local sum = redis.sha1hex(p)
  local v = redis.call('HGET', KEYS[9], sum)
  if not v then return end
  local held, step = string.match(v, '^(%d+) (.*)$')
  held = tonumber(held)
  if held > 1 then
    redis.call('HSET', KEYS[9], sum, (held - 1) .. ' ' .. step)
  else
    redis.call('HDEL', KEYS[9], sum)
  end
  if redis.call('HINCRBY', KEYS[8], step, -1) <= 0 then redis.call('HDEL', KEYS[8], step) end
  if waiting[step] then redis.call('LMOVE', waiting[step], KEYS[5], 'RIGHT', 'RIGHT') end
end
local holding = k > 0 and redis.call('EXISTS', KEYS[9]) == 1
local cancels = redis.call('HLEN', CANCEL) > 0
-- The worker id: KEYS[1] is `{queue}:proc:<wid>`, and a wid holds no ':proc:'.
local wid = string.match(KEYS[1], '^.*:proc:(.*)$') or KEYS[1]
-- The cancel field of payload p if an operator cancelled it while we held it, else nil.
local function cancelled_field(p)
  local ok, job = pcall(cjson.decode, p)
  if ok and type(job) == 'table' and type(job.id) == 'string' then
    local f = wid .. '\n' .. job.id
    if redis.call('HEXISTS', CANCEL, f) == 1 then return f end
  end
  return nil
end
local now
local res, done = {}, {}
local i = 2 + 2 * k
local last = 0
while i <= #ARGV do
  local op, p = ARGV[i], ARGV[i + 1]
  local width = op == 'delay' and 4 or 3
  if op == 'release' then width = 2 end
  local r = 0
  if op == 'release' then
    if last == 1 then redis.call('HDEL', KEYS[7], p) end
  else
    r = redis.call('LREM', KEYS[1], -1, p)
    last = r
    res[#res + 1] = r
  end
  local field = nil
  if r == 1 and cancels then field = cancelled_field(p) end
  if field then
    redis.call('HDEL', CANCEL, field)
    if op ~= 'done' then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local attempts = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(p)) or '0')
      if op == 'retry' then attempts = attempts + 1 end
      redis.call('LPUSH', CANCELLED, attempts .. '|' .. now .. '|' .. wid .. '|1|' .. p)
      if holding then release(p) end
      done[#done + 1] = redis.sha1hex(p)
      r = 2
    end
  end
  if r == 1 then
    if holding then release(p) end
    if op == 'done' then
      done[#done + 1] = redis.sha1hex(p)
    elseif op == 'retry' or op == 'delay' then
      if not now then
        local t = redis.call('TIME')
        now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      end
      local scheduled = p
      if op == 'retry' then
        redis.call('HINCRBY', KEYS[3], redis.sha1hex(p), 1)
      else
        scheduled = ARGV[i + 3]
        -- A stamped copy is a new payload with counters of its own: the claimed bytes' counters
        -- would never be read or deleted again.
        if scheduled ~= p then done[#done + 1] = redis.sha1hex(p) end
      end
      redis.call('ZADD', KEYS[2], now + tonumber(ARGV[i + 2]), scheduled)
    elseif op == 'hold' then
      local held = KEYS[tonumber(ARGV[i + 2])]
      local step = string.sub(held, string.find(held, '}:held:', 1, true) + 7)
      if redis.call('SISMEMBER', KEYS[6], step) == 1 then
        redis.call('LPUSH', held, p)
      else
        redis.call('RPUSH', KEYS[5], p)
      end
    else
      redis.call('RPUSH', KEYS[5], p)
    end
  end
  i = i + width
end
for from = 1, #done, CHUNK do
  local to = math.min(from + CHUNK - 1, #done)
  redis.call('HDEL', KEYS[3], unpack(done, from, to))
  redis.call('HDEL', KEYS[4], unpack(done, from, to))
end
return res
