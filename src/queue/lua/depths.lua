-- Queue depths for /metrics, read at scrape time in one round trip.
-- KEYS[1] ready LIST   KEYS[2] delayed ZSET   KEYS[3] workers ZSET   KEYS[4] poison LIST
-- ARGV[1] the proc-list key prefix (all proc lists share the queue's hash slot)
-- Returns {ready, delayed, in_flight, live_workers, poison}
local inflight = 0
local workers = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, w in ipairs(workers) do inflight = inflight + redis.call('LLEN', ARGV[1] .. w) end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), inflight, #workers, redis.call('LLEN', KEYS[4])}
