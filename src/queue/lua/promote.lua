-- Moves due retries from the delayed set back to ready (producer end).
-- KEYS[1] delayed ZSET   KEYS[2] ready LIST   ARGV[1] limit
-- Returns {moved, next_due_in_ms (-1: none)}
local err = guard({KEYS[1], 'zset', KEYS[2], 'list'})
if err then return err end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, p in ipairs(due) do
  redis.call('ZREM', KEYS[1], p)
  redis.call('LPUSH', KEYS[2], p)
end
local next_due = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then next_due = math.max(0, tonumber(first[2]) - now) end
return {#due, next_due}
