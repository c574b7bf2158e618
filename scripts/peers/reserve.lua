-- wrk script for scripts/bench-peers.sh: POST /v1/reservations with one located
-- line of 1, the same body for stockwire and peer-actix. The body is made per
-- request (so uniform and hot cost the client the same). Settings, from the
-- environment:
--   PEER_WORKLOAD  uniform (a random SKU of PEER_SKUS per request) | hot (sku-1)
--   PEER_SKUS      SKUs of the uniform workload (default 10000): sku-1..sku-N
--   PEER_TOKEN     sent as Authorization: Bearer (omitted when empty)
--   PEER_LINE      located (default: "location":"wh-east") | sourced (no location:
--                  stockwire sources it from the channel's locations; stockwire only)
--   PEER_KEYED     1: a new Idempotency-Key on every request (stockwire only)
-- Only 200/201 answers count as throughput: response() counts the others per
-- status, and done() prints one line for the script to parse:
--   PEER_RESULT ok=N non2xx=N seconds=S rps=R p50_us=U p99_us=U socket_errors=N statuses=409:3,429:1

local workload = os.getenv("PEER_WORKLOAD") or "uniform"
local skus = tonumber(os.getenv("PEER_SKUS") or "10000")
local token = os.getenv("PEER_TOKEN") or ""
local line = os.getenv("PEER_LINE") or "located"
local keyed = os.getenv("PEER_KEYED") == "1"

if line ~= "located" and line ~= "sourced" then
  error("PEER_LINE must be located or sourced, not " .. line)
end

if workload ~= "uniform" and workload ~= "hot" then
  error("PEER_WORKLOAD must be uniform or hot, not " .. workload)
end

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_id", thread_count)
  table.insert(threads, thread)
end

function init(args)
  ok = 0
  non2xx = 0
  statuses = {}
  -- Each thread has its own Lua state: seed each one differently.
  math.randomseed(os.time() * 1000 + thread_id)
  headers = { ["Content-Type"] = "application/json" }
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
end

local body_format =
  '{"channel":"web","lines":[{"sku":"sku-%d","location":"wh-east","qty":1}],"ttl_seconds":3600}'
if line == "sourced" then
  body_format = '{"channel":"web","lines":[{"sku":"sku-%d","qty":1}],"ttl_seconds":3600}'
end
local sent = 0

function request()
  local n = 1
  if workload == "uniform" then
    n = math.random(skus)
  end
  if keyed then
    sent = sent + 1
    headers["Idempotency-Key"] = string.format("k-%d-%d-%d", os.time(), thread_id, sent)
  end
  return wrk.format("POST", "/v1/reservations", headers, string.format(body_format, n))
end

function response(status, headers, body)
  if status == 200 or status == 201 then
    ok = ok + 1
  else
    non2xx = non2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local total_ok, total_bad, by_status = 0, 0, {}
  for _, thread in ipairs(threads) do
    total_ok = total_ok + thread:get("ok")
    total_bad = total_bad + thread:get("non2xx")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local list = {}
  for status, count in pairs(by_status) do
    table.insert(list, string.format("%d:%d", status, count))
  end
  table.sort(list)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "PEER_RESULT ok=%d non2xx=%d seconds=%.3f rps=%.1f p50_us=%d p99_us=%d socket_errors=%d statuses=%s\n",
    total_ok, total_bad, seconds, total_ok / seconds,
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout,
    #list > 0 and table.concat(list, ",") or "-"))
end
