-- Holds a step on every replica until a moment on the server's clock (back-pressure: the service
-- behind the step answered 429 or 503 with Retry-After). A later hold never shortens an earlier
-- one (GT). claim.lua moves the step's jobs to the delayed set until then.
-- KEYS[1] step_holds ZSET (step -> held until, ms)
-- ARGV[1] step   ARGV[2] hold ms
-- Returns the moment held until (ms).
if redis.call('TYPE', KEYS[1]).ok ~= 'none' and redis.call('TYPE', KEYS[1]).ok ~= 'zset' then
  return redis.error_reply('WRONGTYPE ' .. KEYS[1] .. ' holds a non-zset: nothing was changed')
end
local t = redis.call('TIME')
local until_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], 'GT', until_ms, ARGV[1])
return until_ms
