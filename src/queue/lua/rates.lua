-- Prepended to the scripts that wake rate-limited steps (promote.lua, heartbeat.lua; see
-- scripts.rs). STEP_RATE_LIMITS is a GCRA per step: a start conforms when now >= tat - tau, and
-- then moves tat (the theoretical arrival time, ms, in the rate_tat hash) to max(tat, now) +
-- interval. tau = (burst - 1) * interval lets `burst` starts go at once. claim.lua admits and
-- moves non-conforming jobs to the step's rate list, with the step's wake time (tat: when a full
-- burst conforms) in the rate_wake zset.
-- wake_rates(tat_key, wake_key, ready, now, rates) moves, for each step whose wake time has come,
-- as many waiting jobs as conform now to the consumer end of ready (claims decide again: one that
-- no longer conforms goes back), and sets the next wake time while jobs still wait.
-- rates: step -> {interval, tau, list}. A step no longer configured keeps its wake entry.
local function wake_rates(tat_key, wake_key, ready, now, rates)
  local due = redis.call('ZRANGEBYSCORE', wake_key, '-inf', now)
  for _, step in ipairs(due) do
    local r = rates[step]
    if r then
      local tat = tonumber(redis.call('HGET', tat_key, step) or '0')
      local n = 0
      if now >= tat - r.tau then n = math.floor((now + r.tau - math.max(tat, now)) / r.interval) + 1 end
      for _ = 1, n do
        if not redis.call('LMOVE', r.list, ready, 'RIGHT', 'RIGHT') then break end
      end
      if redis.call('LLEN', r.list) > 0 then
        redis.call('ZADD', wake_key, string.format('%.3f', math.max(tat, now) + n * r.interval), step)
      else
        redis.call('ZREM', wake_key, step)
      end
    end
  end
end
