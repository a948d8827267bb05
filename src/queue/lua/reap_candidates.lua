-- Lists workers to reap, under a short lock so replicas do not repeat each other's work.
-- KEYS[1] workers ZSET   KEYS[2] reaped ZSET   KEYS[3] reaper lock STRING
-- ARGV[1] grace ms   ARGV[2] lock ms   ARGV[3] tombstone keep ms   ARGV[4] lock owner
-- Returns the expired wids followed by the tombstoned ones ({} when another replica holds the lock).
-- Tombstones are kept for a while because a reaped worker's last BLMOVE may land after the reap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Trimming first makes the first write one that frees memory, so a full Redis still runs this
-- (see heartbeat.lua).
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
if not redis.call('SET', KEYS[3], ARGV[4], 'NX', 'PX', tonumber(ARGV[2])) then return {} end
local out = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]), 'LIMIT', 0, 100)
for _, w in ipairs(redis.call('ZRANGE', KEYS[2], 0, 99)) do out[#out + 1] = w end
return out
