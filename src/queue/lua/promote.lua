-- Moves due retries from the delayed set back to ready (producer end), and wakes rate-limited
-- steps whose time has come (see rates.lua).
-- KEYS[1] delayed ZSET   KEYS[2] ready LIST   KEYS[3] rate_tat HASH   KEYS[4] rate_wake ZSET
-- KEYS[5..4+r] rate LIST of each rate-limited step, in the order of ARGV's triples
-- ARGV[1] limit   ARGV[2] r, the number of rate-limited steps
-- ARGV[3..2+3r] (step, interval ms, burst) triples
-- Returns {moved, next_due_in_ms (-1: none)}: the next retry or rate wake-up, whichever is first.
-- With r = 0 nothing of the rates runs.
local r = tonumber(ARGV[2] or '0')
local wanted = {KEYS[1], 'zset', KEYS[2], 'list'}
if r > 0 then
  wanted[#wanted + 1] = KEYS[3]
  wanted[#wanted + 1] = 'hash'
  wanted[#wanted + 1] = KEYS[4]
  wanted[#wanted + 1] = 'zset'
  for i = 1, r do
    wanted[#wanted + 1] = KEYS[4 + i]
    wanted[#wanted + 1] = 'list'
  end
end
local err = guard(wanted)
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
if r > 0 then
  local rates = {}
  for i = 1, r do
    local interval = tonumber(ARGV[3 * i + 1])
    rates[ARGV[3 * i]] = {interval = interval, tau = (tonumber(ARGV[3 * i + 2]) - 1) * interval, list = KEYS[4 + i]}
  end
  local precise = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  wake_rates(KEYS[3], KEYS[4], KEYS[2], precise, rates)
  local wake = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
  if wake[2] then
    local ms = math.max(0, math.ceil(tonumber(wake[2]) - precise))
    if next_due < 0 or ms < next_due then next_due = ms end
  end
end
return {#due, next_due}
