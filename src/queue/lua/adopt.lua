-- Re-asserts claims after Redis lost this worker's registration (a restart without persistence
-- or a failover): payloads still executing here are put back in our list if they are missing,
-- so their settle finds them.
-- KEYS[1] proc LIST   ARGV: payloads
-- Returns the number re-added.
local err = guard({KEYS[1], 'list'})
if err then return err end
local added = 0
for _, p in ipairs(ARGV) do
  if not redis.call('LPOS', KEYS[1], p) then
    redis.call('LPUSH', KEYS[1], p)
    added = added + 1
  end
end
return added
