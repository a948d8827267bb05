-- Cancels jobs by id or by run id (`step-worker cancel`, `DELETE /jobs/{id}`): a job waiting
-- anywhere (ready, the delayed set, a paused step's held list, a limited step's waiting list)
-- moves into the cancelled outbox, from which its `cancelled` result row is written; a job in a
-- worker's in-flight list (claimed or running) gets an entry in the cancel hash, which that
-- worker's next heartbeat reads, and the worker stops it.
-- KEYS[1] ready LIST   KEYS[2] delayed ZSET   KEYS[3] attempts HASH   KEYS[4] interrupts HASH
-- KEYS[5] cancel HASH (`<wid>\n<id>` -> requested at ms)   KEYS[6] cancelled LIST (outbox)
-- KEYS[7] workers ZSET   KEYS[8] paused_steps SET
-- KEYS[9..8+w] the in-flight LIST of each worker in ARGV's order
-- KEYS[9+w..] waiting LISTs: held lists of the paused steps, waiting lists of the limited steps
-- ARGV[1] the envelope field that names the jobs, 'id' | 'run_id'   ARGV[2] its value   ARGV[3] who cancels (kept in the row)
-- ARGV[4] w   ARGV[5..4+w] the registered workers, as the caller read them
-- ARGV[5+w] h   ARGV[6+w..5+w+h] the paused steps, as the caller read them
-- Returns {0} when workers or paused steps changed since the caller read them (their lists
-- were not declared: read again and retry), else {1, {outbox entries written}, {wid, id, ...}
-- of the jobs found in flight, pending} where pending is 1 when a job of that id already waits
-- in the outbox for its row (cancelled before, its row not yet written).
-- An outbox entry is 'attempts|at_ms|by|held|payload' (a plain prefix: a payload is any bytes;
-- held is 0 here: the job was waiting, not held by a worker).
-- Only jobs with a valid id match (a non-empty string of at most 200 characters without NUL,
-- as the worker requires): a malformed payload is left where it is, for the worker to
-- dead-letter with its reason, rather than removed with no row to record it.
-- Matching decodes a payload only when it may match: it contains the wanted text, or a
-- backslash (a JSON escape hides the text from a plain search). The scan is one pass over every
-- waiting job, read in chunks; matches are removed after the pass, so indexes do not shift under
-- it. Removals come first and the outbox writes after them: a full Redis (noeviction) refuses a
-- script whose first write grows memory, and lets one run to its end once it has freed some.
local w = tonumber(ARGV[4])
local h = tonumber(ARGV[5 + w])
local wanted = {KEYS[1], 'list', KEYS[2], 'zset', KEYS[3], 'hash', KEYS[4], 'hash', KEYS[5], 'hash',
                KEYS[6], 'list', KEYS[7], 'zset', KEYS[8], 'set'}
for i = 9, #KEYS do
  wanted[#wanted + 1] = KEYS[i]
  wanted[#wanted + 1] = 'list'
end
local err = guard(wanted)
if err then return err end

local function same_set(got, first, n)
  if #got ~= n then return false end
  local seen = {}
  for i = first, first + n - 1 do seen[ARGV[i]] = true end
  for _, v in ipairs(got) do
    if not seen[v] then return false end
  end
  return true
end
if not same_set(redis.call('ZRANGE', KEYS[7], 0, -1), 5, w) or
   not same_set(redis.call('SMEMBERS', KEYS[8]), 6 + w, h) then
  return {0}
end

local field = ARGV[1]
local want = ARGV[2]
-- The job's id when payload `p` is one of the wanted jobs, else nil.
local MAX_ID_CHARS = 200
local function valid_id(id)
  if type(id) ~= 'string' or id == '' or string.find(id, '\0', 1, true) then return false end
  -- Characters, not bytes: count the bytes that start a UTF-8 sequence.
  local _, chars = string.gsub(id, '[^\128-\191]', '')
  return chars <= MAX_ID_CHARS
end
local function match(p)
  if not string.find(p, want, 1, true) and not string.find(p, '\\', 1, true) then return nil end
  local ok, job = pcall(cjson.decode, p)
  if ok and type(job) == 'table' and job[field] == want and valid_id(job.id) then
    return job.id
  end
  return nil
end

local CHUNK = 1000
local function scan_list(key)
  local found = {}
  local len = redis.call('LLEN', key)
  for from = 0, len - 1, CHUNK do
    for _, p in ipairs(redis.call('LRANGE', key, from, from + CHUNK - 1)) do
      local id = match(p)
      if id then found[#found + 1] = {p, id} end
    end
  end
  return found
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed = {}
local function remove(p)
  local sha = redis.sha1hex(p)
  removed[#removed + 1] = (redis.call('HGET', KEYS[3], sha) or '0') .. '|' .. now .. '|' .. ARGV[3] .. '|0|' .. p
end
local waiting = {KEYS[1]}
for i = 9 + w, #KEYS do waiting[#waiting + 1] = KEYS[i] end
for _, key in ipairs(waiting) do
  for _, m in ipairs(scan_list(key)) do
    if redis.call('LREM', key, 1, m[1]) == 1 then remove(m[1]) end
  end
end
local delayed = {}
local zlen = redis.call('ZCARD', KEYS[2])
for from = 0, zlen - 1, CHUNK do
  for _, p in ipairs(redis.call('ZRANGE', KEYS[2], from, from + CHUNK - 1)) do
    if match(p) then delayed[#delayed + 1] = p end
  end
end
for _, p in ipairs(delayed) do
  if redis.call('ZREM', KEYS[2], p) == 1 then remove(p) end
end
for _, entry in ipairs(removed) do
  redis.call('LPUSH', KEYS[6], entry)
end
-- Their counters go with them, as a settled job's do (after the entries kept the count).
for _, entry in ipairs(removed) do
  local p = string.match(entry, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$')
  local sha = redis.sha1hex(p)
  redis.call('HDEL', KEYS[3], sha)
  redis.call('HDEL', KEYS[4], sha)
end

local running = {}
for i = 1, w do
  for _, m in ipairs(scan_list(KEYS[8 + i])) do
    redis.call('HSET', KEYS[5], ARGV[4 + i] .. '\n' .. m[2], now)
    running[#running + 1] = ARGV[4 + i]
    running[#running + 1] = m[2]
  end
end
-- A cancelled job whose row is still to be written (the canceller's write failed): asking again
-- is answered as "already cancelled", not "no such job".
local pending = 0
if #removed == 0 and #running == 0 and field == 'id' then
  local olen = redis.call('LLEN', KEYS[6])
  for from = 0, olen - 1, CHUNK do
    for _, entry in ipairs(redis.call('LRANGE', KEYS[6], from, from + CHUNK - 1)) do
      local p = string.match(entry, '^[^|]*|[^|]*|[^|]*|[^|]*|(.*)$')
      if p and match(p) then pending = 1 end
    end
    if pending == 1 then break end
  end
end
return {1, removed, running, pending}
