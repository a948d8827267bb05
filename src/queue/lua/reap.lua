-- Returns a dead worker's in-flight jobs to ready, atomically (no pop-then-push gap).
-- KEYS[1] workers ZSET   KEYS[2] reaped ZSET   KEYS[3] proc LIST of the victim   KEYS[4] ready LIST
-- KEYS[5] interrupts HASH   KEYS[6] poison LIST   KEYS[7] attempts HASH
-- KEYS[8] cap_used HASH (step -> slots held)   KEYS[9] slots HASH of the victim
-- KEYS[10] cancel HASH (`<wid>\n<job id>` -> requested at ms)   KEYS[11] cancelled LIST (outbox)
-- KEYS[12..11+k] throttled LIST of each capped step, in the order of ARGV's names
-- ARGV[1] victim wid   ARGV[2] grace ms   ARGV[3] max recoveries
-- ARGV[4] k, the number of capped steps   ARGV[5..4+k] their names
-- Returns {moved, poisoned, cancelled}, or {-1, 0, 0} when the victim heartbeated meanwhile.
-- A job an operator cancelled while the victim held it (its cancel entry the victim never
-- acted on) goes to the cancelled outbox, not back to ready: a cancellation survives the death
-- of the worker it was sent to.
-- A job recovered more than max recoveries times keeps killing its workers: it goes to the
-- poison outbox (drained into the dead-letter table) instead of cycling forever.
-- Only the reap itself counts a recovery: the victim was running those jobs when it stopped.
-- A re-drain of a tombstoned list (the victim already reaped) finds jobs that reached the list
-- afterwards and never ran there, so it just returns them.
-- The victim's cap slots are freed with its jobs, and as many waiting jobs of each step as slots
-- freed move to ready: a dead worker holds no slot past its reap. (Its slots hash is read even
-- with k = 0: a reaper without caps still frees the slots of a victim that had them.)
local wanted = {KEYS[1], 'zset', KEYS[2], 'zset', KEYS[3], 'list', KEYS[4], 'list',
                KEYS[5], 'hash', KEYS[6], 'list', KEYS[7], 'hash', KEYS[8], 'hash', KEYS[9], 'hash',
                KEYS[10], 'hash', KEYS[11], 'list'}
for i = 12, #KEYS do
  wanted[#wanted + 1] = KEYS[i]
  wanted[#wanted + 1] = 'list'
end
local err = guard(wanted)
if err then return err end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
local counted = deadline ~= false
if deadline then
  if tonumber(deadline) + tonumber(ARGV[2]) > now then return {-1, 0, 0} end
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], now, ARGV[1])
end
-- The victim's cancellations, by job id (one HLEN when there are none).
local cancels = {}
if redis.call('HLEN', KEYS[10]) > 0 then
  local prefix = ARGV[1] .. '\n'
  for _, f in ipairs(redis.call('HKEYS', KEYS[10])) do
    if string.sub(f, 1, #prefix) == prefix then cancels[string.sub(f, #prefix + 1)] = f end
  end
end
local function cancelled_id(p)
  if next(cancels) == nil then return nil end
  local ok, job = pcall(cjson.decode, p)
  if ok and type(job) == 'table' and type(job.id) == 'string' and cancels[job.id] then return job.id end
  return nil
end
local moved, poisoned, cancelled = 0, 0, 0
while true do
  local p = redis.call('RPOP', KEYS[3])
  if not p then break end
  if cancelled_id(p) then
    -- The entry is the one cancel.lua writes, 'attempts|at_ms|by|held|payload', held by the
    -- victim: its attempts count the one it was running.
    local sha = redis.sha1hex(p)
    local attempts = tonumber(redis.call('HGET', KEYS[7], sha) or '0') + 1
    redis.call('LPUSH', KEYS[11], attempts .. '|' .. now .. '|' .. ARGV[1] .. '|1|' .. p)
    redis.call('HDEL', KEYS[5], sha)
    redis.call('HDEL', KEYS[7], sha)
    cancelled = cancelled + 1
  else
    local c = 0
    if counted then c = redis.call('HINCRBY', KEYS[5], redis.sha1hex(p), 1) end
    if c > tonumber(ARGV[3]) then
      -- 'recoveries|at_ms|wid|payload': a plain prefix, because payloads may not be valid UTF-8.
      redis.call('LPUSH', KEYS[6], c .. '|' .. now .. '|' .. ARGV[1] .. '|' .. p)
      -- It leaves the queue for good: forget both of its counters, as a settled job does.
      redis.call('HDEL', KEYS[5], redis.sha1hex(p))
      redis.call('HDEL', KEYS[7], redis.sha1hex(p))
      poisoned = poisoned + 1
    else
      redis.call('RPUSH', KEYS[4], p)
      moved = moved + 1
    end
  end
end
for _, f in pairs(cancels) do redis.call('HDEL', KEYS[10], f) end
local waiting = {}
for i = 1, tonumber(ARGV[4] or '0') do waiting[ARGV[4 + i]] = KEYS[11 + i] end
local slots = redis.call('HGETALL', KEYS[9])
for i = 1, #slots, 2 do
  local held, step = string.match(slots[i + 1], '^(%d+) (.*)$')
  held = tonumber(held)
  if redis.call('HINCRBY', KEYS[8], step, -held) <= 0 then redis.call('HDEL', KEYS[8], step) end
  for _ = 1, held do
    if not waiting[step] or not redis.call('LMOVE', waiting[step], KEYS[4], 'RIGHT', 'RIGHT') then break end
  end
end
if #slots > 0 then redis.call('DEL', KEYS[9]) end
return {moved, poisoned, cancelled}
