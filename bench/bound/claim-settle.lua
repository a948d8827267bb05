-- redis-benchmark script: the Redis side of the machine's bound, without the worker. One call
-- does, for ARGV[1] jobs, what the producer, the claim and the settle do to the lists per job:
-- a push of a noop job onto the ready list (KEYS[1]), a move from it into the in-flight list
-- (KEYS[2]) and a removal from there. The worker's settle removes from the tail of its in-flight
-- list, where the oldest claim is, so its removal mostly finds the job at once, as here. Three
-- list commands a job: more than the worker's own ~1.5 a job run inside scripts, since the
-- producer's push is counted too; so the bound errs low, and the worker's fraction of it high.
--   redis-benchmark -n 20000 -c 2 -P 4 EVAL "$(cat bench/bound/claim-settle.lua)" 2 ready proc 64
local batch = tonumber(ARGV[1])
for i = 1, batch do
  local job = '{"id":"bound-' .. i .. '","step":"builtin.noop","input":{"i":' .. i .. '}}'
  redis.call('LPUSH', KEYS[1], job)
  local moved = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  redis.call('LREM', KEYS[2], -1, moved)
end
return batch
