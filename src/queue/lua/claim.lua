-- Non-blocking batch claim: moves up to n payloads from ready into this worker's in-flight list,
-- and reads the attempt counters of those payloads and of payloads already moved by BLMOVE.
-- KEYS[1] ready LIST   KEYS[2] proc LIST (this worker's)   KEYS[3] workers ZSET
-- KEYS[4] attempts HASH (sha1(payload) -> failed attempts so far)
-- KEYS[5] interrupts HASH (sha1(payload) -> times recovered from a dead worker)
-- ARGV[1] wid   ARGV[2] n   ARGV[3] suspect threshold (0: no payload is a suspect)
-- ARGV[4] alone (1: the caller runs nothing else and holds every slot)
-- ARGV[5..] sha1 hex of payloads claimed by BLMOVE
-- Returns {fenced (0|1), {payload, attempts, suspect, ...}, {attempts, suspect for ARGV[5..]},
--          suspect_waiting (0|1)}; suspect is 0|1.
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
local err = guard({KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'hash', KEYS[5], 'hash'})
if err then return err end
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {1, {}, {}, 0} end
local n = tonumber(ARGV[2])
local threshold = tonumber(ARGV[3])
local alone = ARGV[4] == '1'
local candidates = {}
if n > 0 then
  local tail = redis.call('LRANGE', KEYS[1], -n, -1)
  -- tail[#tail] is the rightmost (oldest) payload: it is claimed first.
  for i = #tail, 1, -1 do candidates[#candidates + 1] = tail[i] end
end
local sums = {}
for i, p in ipairs(candidates) do sums[i] = redis.sha1hex(p) end
for i = 5, #ARGV do sums[#sums + 1] = ARGV[i] end
local suspect = {}
if threshold > 0 and #sums > 0 then
  local counts = redis.call('HMGET', KEYS[5], unpack(sums))
  for i = 1, #sums do suspect[i] = tonumber(counts[i] or '0') >= threshold end
end
-- The BLMOVE'd payloads are the batch's first members.
local blmoved, blmoved_suspect = #sums - #candidates, false
for i = #candidates + 1, #sums do
  if suspect[i] then blmoved_suspect = true end
end
local taken, waiting = {}, 0
if not blmoved_suspect then
  for i, p in ipairs(candidates) do
    if suspect[i] then
      if alone and blmoved == 0 and #taken == 0 then
        taken[1] = p
      else
        waiting = 1
      end
      break
    end
    taken[#taken + 1] = p
  end
end
if #taken > 0 then
  redis.call('LTRIM', KEYS[1], 0, -#taken - 1)
  redis.call('LPUSH', KEYS[2], unpack(taken))
end
local fields = {}
for i = 1, #taken do fields[i] = sums[i] end
for i = #candidates + 1, #sums do fields[#fields + 1] = sums[i] end
local counts = {}
if #fields > 0 then counts = redis.call('HMGET', KEYS[4], unpack(fields)) end
local function flag(i) return suspect[i] and 1 or 0 end
local out = {}
for i, p in ipairs(taken) do
  out[#out + 1] = p
  out[#out + 1] = tonumber(counts[i] or '0')
  out[#out + 1] = flag(i)
end
local extra = {}
for i = #candidates + 1, #sums do
  extra[#extra + 1] = tonumber(counts[#taken + i - #candidates] or '0')
  extra[#extra + 1] = flag(i)
end
return {0, out, extra, waiting}
