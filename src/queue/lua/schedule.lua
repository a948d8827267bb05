-- Schedules a payload to enter ready after a delay (`step-worker enqueue --delay`), using the
-- server's clock like every other due time.
-- KEYS[1] delayed ZSET   ARGV[1] delay ms   ARGV[2] payload
-- Returns the due time (ms).
local t = redis.call('TIME')
local due = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
redis.call('ZADD', KEYS[1], due, ARGV[2])
return due
