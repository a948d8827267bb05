-- Non-blocking batch claim: moves up to n payloads from ready into this worker's in-flight list,
-- and reads the attempt counters of those payloads and of payloads already moved by BLMOVE.
-- KEYS[1] ready LIST   KEYS[2] proc LIST (this worker's)   KEYS[3] workers ZSET
-- KEYS[4] attempts HASH (sha1(payload) -> failed attempts so far)
-- KEYS[5] interrupts HASH (sha1(payload) -> times recovered from a dead worker)
-- KEYS[6] cap_used HASH (step -> cap slots held by every replica)
-- KEYS[7] slots HASH (this worker's cap slots: sha1(payload) -> '<count> <step>')
-- KEYS[8..7+k] throttled LIST of each capped step, in the order of ARGV's pairs
-- KEYS[8+k] rate_tat HASH (step -> GCRA theoretical arrival time, ms)
-- KEYS[9+k] rate_wake ZSET (step -> when its waiting jobs are woken, ms)
-- KEYS[10+k..9+k+r] rate LIST of each rate-limited step, in the order of ARGV's triples
-- KEYS[10+k+r] step_holds ZSET (step -> held until, ms)   KEYS[11+k+r] delayed ZSET
-- ARGV[1] wid   ARGV[2] n   ARGV[3] suspect threshold (0: no payload is a suspect)
-- ARGV[4] alone (1: the caller runs nothing else and holds every slot)
-- ARGV[5] k, the number of capped steps   ARGV[6..5+2k] (step, cap) pairs
-- ARGV[6+2k] r, the number of rate-limited steps   ARGV[7+2k..6+2k+3r] (step, interval ms, burst)
-- ARGV[7+2k+3r..] the payloads claimed by BLMOVE (their step decides whether they may run)
-- Returns {fenced (0|1), {payload, attempts, suspect, ...}, {attempts, suspect, throttled for each
--          BLMOVE'd payload}, suspect_waiting (0|1), {step, reason, ...} of each job moved aside
--          (reason: concurrency | rate | backpressure), wake-up in ms (-1: none)}; suspect and
--          throttled are 0|1.
-- A reaped worker (no longer registered) claims nothing: fencing at the door.
--
-- Suspects. A payload recovered from dead workers at least `threshold` times is a suspect: it may
-- be a poison pill. The reaper returns every job of a dead worker to ready together, so a batch
-- claim would put them on one worker again, and a pill would keep taking the same bystanders down
-- with it until they too pass MAX_RECOVERIES and are dead-lettered. So a batch stops before the
-- first suspect, and a suspect is taken only as the first and only job of a caller that claims
-- alone; the reply says when one is waiting (suspect_waiting), so the caller can drain its other
-- jobs and come back alone. A payload already moved by BLMOVE that is a suspect gets no company:
-- nothing is taken after it.
--
-- The move is one LRANGE + LTRIM + LPUSH instead of n LMOVEs (same result: the oldest payloads,
-- taken from the right, pushed on our list's left in the order LMOVE would push them). LTRIM
-- runs first: its write frees memory, and Redis lets a script whose first write frees memory run
-- to its end, so a full Redis still lets workers drain (see heartbeat.lua). The suspect check
-- only reads (one HMGET for the candidates and the BLMOVE'd payloads), so it comes before the
-- trim. The script is atomic, so nothing can see the payloads between the trim and the push.
-- The attempt counters are read with one HMGET for the whole batch.
--
-- Caps (STEP_CONCURRENCY). With k = 0 nothing below reads or checks a cap key: the claim costs
-- what it did before caps existed. With caps, a candidate's step is read with cjson only when
-- the payload could be of a limited step: it holds one of their names in quotes, or a backslash
-- (a name written with JSON escapes); any other payload is of no limited step and costs a few
-- plain substring searches, so a limit on one step costs the others almost nothing. A payload
-- that does not decode has no step and so no limit: the runner dead-letters it. A job of a
-- capped step whose slots are all held is not claimed and is not an attempt: it moves to its
-- step's throttled list, and the batch goes on past it, so other steps keep flowing. A slot
-- taken is recorded under the payload's sha1 in this worker's slots hash: settle.lua frees it
-- (and moves one waiting job of the step back to ready) when the job leaves our list, reap.lua
-- frees all of a dead worker's slots. When jobs were moved aside and the batch is not full, the
-- scan looks up to SCAN_EXTRA candidates further (once), so a backlog of waiting jobs ahead of
-- other work is moved aside in a few claims, not one per claim; a claim that moved nothing aside
-- reads no more than n.
-- A BLMOVE'd payload over its cap leaves our list for the throttled list (reply: throttled = 1).
--
-- Rates (STEP_RATE_LIMITS) follow the same path: a GCRA per step (see rates.lua). A job whose
-- start does not conform moves to its step's rate list, and the step's wake time (when a burst
-- conforms) goes into rate_wake; the promoter and the heartbeat wake it. A job must pass both
-- its cap and its rate: the cap is checked first, so a rate start is never spent on a job that
-- then waits for a slot.
--
-- Back-pressure (hold_step.lua): a step held until a moment (the service behind it answered 429
-- or 503 with Retry-After) has its jobs moved to the delayed set until then, on every replica:
-- not attempts, and no call reaches the service meanwhile. Without holds this costs one EXISTS.
local SCAN_EXTRA = 256
local k = tonumber(ARGV[5])
local r = tonumber(ARGV[6 + 2 * k])
local hold_key, delayed_key = KEYS[10 + k + r], KEYS[11 + k + r]
local any_hold = redis.call('EXISTS', hold_key) == 1
local wanted = {KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'hash', KEYS[5], 'hash'}
if r > 0 then
  wanted[#wanted + 1] = KEYS[8 + k]
  wanted[#wanted + 1] = 'hash'
  wanted[#wanted + 1] = KEYS[9 + k]
  wanted[#wanted + 1] = 'zset'
  for i = 1, r do
    wanted[#wanted + 1] = KEYS[9 + k + i]
    wanted[#wanted + 1] = 'list'
  end
end
if any_hold then
  wanted[#wanted + 1] = hold_key
  wanted[#wanted + 1] = 'zset'
  wanted[#wanted + 1] = delayed_key
  wanted[#wanted + 1] = 'zset'
end
if k > 0 then
  wanted[#wanted + 1] = KEYS[6]
  wanted[#wanted + 1] = 'hash'
  wanted[#wanted + 1] = KEYS[7]
  wanted[#wanted + 1] = 'hash'
  for i = 1, k do
    wanted[#wanted + 1] = KEYS[7 + i]
    wanted[#wanted + 1] = 'list'
  end
end
local err = guard(wanted)
if err then return err end
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {1, {}, {}, 0, {}, -1} end
local n = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local alone = ARGV[4] == '1'
local caps = {}
for i = 1, k do
  caps[ARGV[4 + 2 * i]] = {cap = tonumber(ARGV[5 + 2 * i]), list = KEYS[7 + i]}
end
local rates = {}
for i = 1, r do
  local a = 6 + 2 * k + 3 * (i - 1)
  local interval = tonumber(ARGV[a + 2])
  rates[ARGV[a + 1]] = {interval = interval, tau = (tonumber(ARGV[a + 3]) - 1) * interval,
                        list = KEYS[9 + k + i]}
end
local now
if r > 0 or any_hold then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local holds, held = {}, false
if any_hold then
  redis.call('ZREMRANGEBYSCORE', hold_key, '-inf', now)
  local h = redis.call('ZRANGEBYSCORE', hold_key, '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #h, 2 do
    holds[h[i]] = tonumber(h[i + 1])
    held = true
  end
end
local limited = k > 0 or r > 0 or held
-- Quoted names of every limited or held step: a payload holding none of them (and no backslash)
-- is of no limited step, and is not decoded.
local names = {}
local function name(step) names[#names + 1] = '"' .. step .. '"' end
for step in pairs(caps) do name(step) end
for step in pairs(rates) do name(step) end
for step in pairs(holds) do name(step) end
local function may_be_limited(p)
  if string.find(p, '\\', 1, true) then return true end
  for _, q in ipairs(names) do
    if string.find(p, q, 1, true) then return true end
  end
  return false
end
-- The limits of a payload's step: {step, cap, rate}, or nil (no limit, or no step to read).
local function limits_of(p)
  if not limited or not may_be_limited(p) then return nil end
  local ok, job = pcall(cjson.decode, p)
  if not (ok and type(job) == 'table' and type(job.step) == 'string') then return nil end
  local c, rt, hold = caps[job.step], rates[job.step], holds[job.step]
  if not c and not rt and not hold then return nil end
  if c and not c.used then c.used = tonumber(redis.call('HGET', KEYS[6], job.step) or '0') end
  if rt and not rt.tat then rt.tat = tonumber(redis.call('HGET', KEYS[8 + k], job.step) or '0') end
  return {step = job.step, cap = c, rate = rt, hold = hold}
end
-- nil when the payload may run now (the slot and the start it takes are counted), else the reason
-- it waits.
local function admit(l)
  if not l then return nil end
  local c, rt = l.cap, l.rate
  if l.hold then return 'backpressure' end
  if c and c.used >= c.cap then return 'concurrency' end
  if rt then
    if rt.tat - rt.tau > now then return 'rate' end
    rt.tat = math.max(rt.tat, now) + rt.interval
    rt.spent = true
  end
  if c then c.used = c.used + 1 end
  return nil
end
-- Where a job waits, by reason.
local function wait_list(l, reason)
  if reason == 'rate' then return l.rate.list end
  return l.cap.list
end
-- Candidates from ready, oldest first, with their sha1 and suspect flag; read in chunks.
local candidates, sums, suspect = {}, {}, {}
local function fetch(count)
  local from = #candidates
  local tail = redis.call('LRANGE', KEYS[1], -(from + count), -(from + 1))
  -- tail[#tail] is the rightmost (oldest) payload: it is claimed first.
  for i = #tail, 1, -1 do
    candidates[#candidates + 1] = tail[i]
    sums[#sums + 1] = redis.sha1hex(tail[i])
  end
  if threshold > 0 and #sums > from then
    local counts = redis.call('HMGET', KEYS[5], unpack(sums, from + 1, #sums))
    for i = from + 1, #sums do suspect[i] = tonumber(counts[i - from] or '0') >= threshold end
  end
  return #tail
end
-- The BLMOVE'd payloads are the batch's first members.
local first_extra = 7 + 2 * k + 3 * r
local bl, bsums, bsuspect = {}, {}, {}
for i = first_extra, #ARGV do
  bl[#bl + 1] = ARGV[i]
  bsums[#bsums + 1] = redis.sha1hex(ARGV[i])
end
if threshold > 0 and #bsums > 0 then
  local counts = redis.call('HMGET', KEYS[5], unpack(bsums))
  for j = 1, #bsums do bsuspect[j] = tonumber(counts[j] or '0') >= threshold end
end
local blmoved_suspect = false
local slotted, waits, bl_waits = {}, {}, {}
for j, p in ipairs(bl) do
  if bsuspect[j] then blmoved_suspect = true end
  local l = limits_of(p)
  local reason = admit(l)
  if not reason then
    if l and l.cap then slotted[#slotted + 1] = {bsums[j], l} end
  elseif l then
    bl_waits[j] = true
    waits[#waits + 1] = {p, l, reason}
  end
end
-- taken: candidate indexes, oldest first; consumed: candidates leaving ready (taken or waiting).
local taken, consumed, waiting, aside = {}, 0, 0, 0
if not blmoved_suspect and n > 0 then
  local full = fetch(n) == n
  local i = 1
  while #taken < n do
    if i > #candidates then
      -- Jobs moved aside left the batch short: look further once, as far as SCAN_EXTRA.
      if not (full and aside > 0) then break end
      full = false
      if fetch(SCAN_EXTRA) == 0 then break end
    end
    local p = candidates[i]
    local l = limits_of(p)
    if suspect[i] then
      if alone and #bl == 0 and #taken == 0 then
        local reason = admit(l)
        if not reason then
          taken[1] = i
          if l and l.cap then slotted[#slotted + 1] = {sums[i], l} end
        else
          waits[#waits + 1] = {p, l, reason}
        end
        consumed = i
      else
        waiting = 1
      end
      break
    end
    local reason = admit(l)
    if not reason then
      taken[#taken + 1] = i
      if l and l.cap then slotted[#slotted + 1] = {sums[i], l} end
    else
      waits[#waits + 1] = {p, l, reason}
      aside = aside + 1
    end
    consumed = i
    i = i + 1
  end
end
for j in pairs(bl_waits) do redis.call('LREM', KEYS[2], 1, bl[j]) end
if consumed > 0 then redis.call('LTRIM', KEYS[1], 0, -consumed - 1) end
if #taken > 0 then
  local payloads = {}
  for j, i in ipairs(taken) do payloads[j] = candidates[i] end
  redis.call('LPUSH', KEYS[2], unpack(payloads))
end
local throttled, wake = {}, -1
for _, w in ipairs(waits) do
  if w[3] == 'backpressure' then
    redis.call('ZADD', delayed_key, w[2].hold, w[1])
    local ms = math.max(0, math.ceil(w[2].hold - now))
    if wake < 0 or ms < wake then wake = ms end
  else
    redis.call('LPUSH', wait_list(w[2], w[3]), w[1])
  end
  throttled[#throttled + 1] = w[2].step
  throttled[#throttled + 1] = w[3]
end
for step, rt in pairs(rates) do
  if rt.spent then redis.call('HSET', KEYS[8 + k], step, string.format('%.3f', rt.tat)) end
end
for _, w in ipairs(waits) do
  local rt = w[2].rate
  if w[3] == 'rate' and not rt.woken then
    -- A full burst conforms at tat: wake then, unless an earlier wake-up is set.
    rt.woken = true
    redis.call('ZADD', KEYS[9 + k], 'LT', string.format('%.3f', rt.tat), w[2].step)
    local ms = math.max(0, math.ceil(rt.tat - now))
    if wake < 0 or ms < wake then wake = ms end
  end
end
for _, s in ipairs(slotted) do
  local sum, step = s[1], s[2].step
  redis.call('HINCRBY', KEYS[6], step, 1)
  local held = tonumber(string.match(redis.call('HGET', KEYS[7], sum) or '0', '^%d+') or '0')
  redis.call('HSET', KEYS[7], sum, (held + 1) .. ' ' .. step)
end
local fields = {}
for j, i in ipairs(taken) do fields[j] = sums[i] end
for j = 1, #bsums do fields[#fields + 1] = bsums[j] end
local counts = {}
if #fields > 0 then counts = redis.call('HMGET', KEYS[4], unpack(fields)) end
local out = {}
for j, i in ipairs(taken) do
  out[#out + 1] = candidates[i]
  out[#out + 1] = tonumber(counts[j] or '0')
  out[#out + 1] = suspect[i] and 1 or 0
end
local extra = {}
for j = 1, #bsums do
  extra[#extra + 1] = tonumber(counts[#taken + j] or '0')
  extra[#extra + 1] = bsuspect[j] and 1 or 0
  extra[#extra + 1] = bl_waits[j] and 1 or 0
end
return {0, out, extra, waiting, throttled, wake}
