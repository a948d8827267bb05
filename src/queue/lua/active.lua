-- Marks the ids of a claimed batch as running on this worker, so two copies of one id (a
-- producer's retried push) never run at once on any replicas. The caller runs only the copies
-- this grants; the others go to the delayed set and are claimed again later. Entries are
-- removed by the holder's settle ('release' op of settle.lua). A holder that is no longer a
-- registered worker (reaped, or exited) has handed its jobs on: its entries are taken over.
-- KEYS[1] active HASH (job id → worker id)   KEYS[2] workers ZSET
-- ARGV[1] this worker's id   ARGV[2..] job ids, in claim order (an id may appear twice)
-- Returns one integer per id: 1 granted (run it), 0 a copy is running (a later copy of the same
-- id in one call is refused too: the first took it).
local err = guard({KEYS[1], 'hash', KEYS[2], 'zset'})
if err then return err end
local res = {}
for i = 2, #ARGV do
  -- HSETNX first: a fresh id (the usual case) costs one call.
  local free = redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[1]) == 1
  if not free then
    local holder = redis.call('HGET', KEYS[1], ARGV[i])
    if holder ~= ARGV[1] and redis.call('ZSCORE', KEYS[2], holder) == false then
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
      free = true
    end
  end
  res[#res + 1] = free and 1 or 0
end
return res
