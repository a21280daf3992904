-- wrk script for the webhook burst: replays the pre-signed Slack events in $BENCH_SLACK_FILE
-- (one per line: timestamp TAB v0-signature TAB body; every event_id unique) to $BENCH_HOOK_PATH,
-- each connection waiting $BENCH_DELAY_MS between requests to hold the rate. done() prints JSON.
local requests = {}
local n = 0

function init(args)
  local path = os.getenv("BENCH_HOOK_PATH")
  for line in io.lines(os.getenv("BENCH_SLACK_FILE")) do
    local ts, sig, body = string.match(line, "^(%d+)\t([^\t]+)\t(.*)$")
    if ts then
      requests[#requests + 1] = wrk.format("POST", path, {
        ["Content-Type"] = "application/json",
        ["X-Slack-Request-Timestamp"] = ts,
        ["X-Slack-Signature"] = sig,
      }, body)
    end
  end
end

function request()
  n = n + 1
  if n > #requests then n = 1 end
  return requests[n]
end

function delay()
  return tonumber(os.getenv("BENCH_DELAY_MS") or "0")
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
