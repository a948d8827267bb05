-- Non-blocking batch claim: moves up to n payloads from ready into this worker's in-flight list,
-- and reads the attempt counters of those payloads and of payloads already moved by BLMOVE.
-- KEYS[1] ready LIST   KEYS[2] proc LIST (this worker's)   KEYS[3] workers ZSET
-- KEYS[4] attempts HASH (sha1(payload) -> failed attempts so far)
-- ARGV[1] wid   ARGV[2] n   ARGV[3..] sha1 hex of payloads claimed by BLMOVE
-- Returns {fenced (0|1), {payload, attempts, payload, attempts, ...}, {attempts for ARGV[3..]}}
-- A reaped worker (no longer registered) claims nothing: fencing at the door.
-- The move is one LRANGE + LTRIM + LPUSH instead of n LMOVEs (same result: the oldest payloads,
-- taken from the right, pushed on our list's left in the order LMOVE would push them). LTRIM
-- runs first: its write frees memory, and Redis lets a script whose first write frees memory run
-- to its end, so a full Redis still lets workers drain (see heartbeat.lua). The script is atomic,
-- so nothing can see the payloads between the trim and the push.
-- The counters are read with one HMGET for the whole batch.
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {1, {}, {}} end
local n = tonumber(ARGV[2])
local taken = {}
if n > 0 then
  local tail = redis.call('LRANGE', KEYS[1], -n, -1)
  -- tail[#tail] is the rightmost (oldest) payload: it is claimed first.
  for i = #tail, 1, -1 do taken[#taken + 1] = tail[i] end
  if #taken > 0 then
    redis.call('LTRIM', KEYS[1], 0, -#taken - 1)
    redis.call('LPUSH', KEYS[2], unpack(taken))
  end
end
local fields = {}
for i, p in ipairs(taken) do fields[i] = redis.sha1hex(p) end
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local counts = {}
if #fields > 0 then counts = redis.call('HMGET', KEYS[4], unpack(fields)) end
local out = {}
for i, p in ipairs(taken) do
  out[#out + 1] = p
  out[#out + 1] = tonumber(counts[i] or '0')
end
local extra = {}
for i = #taken + 1, #fields do extra[#extra + 1] = tonumber(counts[i] or '0') end
return {0, out, extra}
