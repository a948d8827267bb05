-- Queue depths for /metrics and `step-worker stats`, read in one round trip.
-- KEYS[1] ready LIST   KEYS[2] delayed ZSET   KEYS[3] workers ZSET   KEYS[4] poison LIST
-- KEYS[5] paused_steps SET   KEYS[6] paused STRING
-- ARGV[1] the proc-list key prefix, ARGV[2] the held-list key prefix (all these lists share the
-- queue's hash slot, so reading them is legal on Redis Cluster)
-- Returns {ready, delayed, in_flight, live_workers, poison, held, paused (0|1)}
local inflight = 0
local workers = redis.call('ZRANGE', KEYS[3], 0, -1)
for _, w in ipairs(workers) do inflight = inflight + redis.call('LLEN', ARGV[1] .. w) end
local held = 0
for _, s in ipairs(redis.call('SMEMBERS', KEYS[5])) do held = held + redis.call('LLEN', ARGV[2] .. s) end
return {redis.call('LLEN', KEYS[1]), redis.call('ZCARD', KEYS[2]), inflight, #workers, redis.call('LLEN', KEYS[4]),
        held, redis.call('EXISTS', KEYS[6])}
