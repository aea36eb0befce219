-- Shared by every wrk script of bench/run.sh: after the run, print one machine-readable line
-- (wrk's own --latency table has no p99.9). Latencies are in microseconds.
local threads = {}

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%d mean_us=%.1f err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
  -- Statuses, when counted (bench_count_statuses), e.g. "BENCH_STATUS 200=1234 429=5".
  local total = {}
  for _, t in ipairs(threads) do
    local c = t:get("status_counts")
    if c then
      for code, n in pairs(c) do
        total[code] = (total[code] or 0) + n
      end
    end
  end
  local parts = {}
  for code, n in pairs(total) do
    parts[#parts + 1] = code .. "=" .. n
  end
  if #parts > 0 then
    table.sort(parts)
    io.write("BENCH_STATUS " .. table.concat(parts, " ") .. "\n")
  end
end

-- Counts the response statuses (wrk then reads every body: use it where a few percent of
-- client CPU do not matter, i.e. the issuer's endpoints).
function bench_count_statuses()
  setup = function(thread)
    threads[#threads + 1] = thread
  end
  init = function(args)
    status_counts = {}
  end
  response = function(status, headers, body)
    status_counts[status] = (status_counts[status] or 0) + 1
  end
end
