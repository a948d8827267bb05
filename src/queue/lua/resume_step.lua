-- Resumes a paused step: its held jobs go back to ready, oldest first at the consumer end, so they
-- run before newer work, in the order they were held.
-- KEYS[1] paused_steps SET   KEYS[2] held LIST of the step   KEYS[3] ready LIST
-- ARGV[1] step name
-- Returns the number of jobs moved back.
redis.call('SREM', KEYS[1], ARGV[1])
local moved = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
