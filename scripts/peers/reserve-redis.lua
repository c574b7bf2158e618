-- Redis peer of scripts/bench-peers.sh: check-and-reserve one line, atomically
-- (a Lua script runs alone). Called as
--   EVALSHA <sha> 1 <position key> <qty> <ttl_seconds>
-- The position is a hash {on_hand, reserved} (seeded by the script). When
-- on_hand - reserved >= qty: HINCRBY reserved, a new id from INCR resv:seq and
-- the reservation stored as hash resv:<id> (its line, status, expires_at in unix
-- seconds); returns the id. Otherwise an error reply insufficient_available and
-- nothing changes. Keys other than KEYS[1] are touched (fine on a single
-- server, not on Redis Cluster).
local qty = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2] or "900")
if not qty or qty < 1 or qty > 1000000000 then
  return redis.error_reply("quantity_out_of_range")
end
local position = redis.call("HMGET", KEYS[1], "on_hand", "reserved")
local on_hand = tonumber(position[1]) or 0
local reserved = tonumber(position[2]) or 0
if on_hand - reserved < qty then
  return redis.error_reply("insufficient_available")
end
redis.call("HINCRBY", KEYS[1], "reserved", qty)
local id = redis.call("INCR", "resv:seq")
local now = redis.call("TIME")
redis.call("HSET", "resv:" .. id,
  "channel", "web", "sku", KEYS[1], "location", "wh-east", "qty", qty,
  "status", "held", "expires_at", tonumber(now[1]) + ttl)
return id
