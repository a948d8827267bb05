-- Prepended to every script that moves payloads between keys (see scripts.rs). Redis runs a
-- script without rollback: a command that fails halfway (a key of the wrong type, left by an
-- operator or another application) leaves the writes before it in place, so a payload removed
-- from one key and refused by the next would be lost. Every script therefore checks the types of
-- the keys it writes before its first write, and changes nothing when one is wrong.
-- guard({key, type, key, type, ...}) returns an error reply to return at once, or nil.
local function guard(wanted)
  for i = 1, #wanted, 2 do
    local t = redis.call('TYPE', wanted[i]).ok
    if t ~= 'none' and t ~= wanted[i + 1] then
      return redis.error_reply('WRONGTYPE ' .. wanted[i] .. ' holds a ' .. t .. ' where a ' ..
        wanted[i + 1] .. ' belongs: nothing was changed')
    end
  end
end
