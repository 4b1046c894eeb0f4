"""Lua run inside Redis: each script is atomic, which is what makes nodes that race for the
same new room agree on one owner."""

from __future__ import annotations

# KEYS[1] the room's key, KEYS[2] the nodes' load set; ARGV[1] the node hash prefix, ARGV[2]
# the load one placement adds until the chosen node's next heartbeat (so a burst of new rooms
# spreads instead of landing on the node that was least loaded a heartbeat ago).
# Returns {owner id, owner url}, or false when no live node accepts rooms.
PLACE = """
local owner = redis.call('GET', KEYS[1])
if owner then
  local url = redis.call('HGET', ARGV[1] .. owner, 'url')
  if url then return {owner, url} end
end
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, id in ipairs(ids) do
  local node = redis.call('HMGET', ARGV[1] .. id, 'url', 'draining')
  if not node[1] then
    redis.call('ZREM', KEYS[2], id)
  elseif node[2] ~= '1' then
    redis.call('SET', KEYS[1], id)
    redis.call('ZINCRBY', KEYS[2], ARGV[2], id)
    return {id, node[1]}
  end
end
return false
"""

# KEYS[1] the room's key; ARGV[1] this node: forget the placement only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] the room's key, ARGV[1] this node: who owns the room, claiming it when nobody does
# (a node holding a room after Redis lost its data).
CLAIM = """
redis.call('SET', KEYS[1], ARGV[1], 'NX')
return redis.call('GET', KEYS[1])
"""
