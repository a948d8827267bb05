-- Non-blocking batch claim: moves up to n payloads from ready into this worker's in-flight list,
-- and reads the attempt counters of those payloads and of payloads already moved by BLMOVE.
-- KEYS[1] ready LIST   KEYS[2] proc LIST (this worker's)   KEYS[3] workers ZSET
-- KEYS[4] attempts HASH (sha1(payload) -> failed attempts so far)
-- ARGV[1] wid   ARGV[2] n   ARGV[3..] sha1 hex of payloads claimed by BLMOVE
-- Returns {fenced (0|1), {payload, attempts, payload, attempts, ...}, {attempts for ARGV[3..]}}
-- A reaped worker (no longer registered) claims nothing: fencing at the door.
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then return {1, {}, {}} end
local out = {}
for _ = 1, tonumber(ARGV[2]) do
  -- RPOP then LPUSH, not LMOVE: the same atomic move inside a script, but the first write frees
  -- memory, so a full Redis still lets workers drain (see heartbeat.lua).
  local p = redis.call('RPOP', KEYS[1])
  if not p then break end
  redis.call('LPUSH', KEYS[2], p)
  out[#out + 1] = p
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[4], redis.sha1hex(p)) or '0')
end
local extra = {}
for i = 3, #ARGV do
  extra[#extra + 1] = tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0')
end
return {0, out, extra}
