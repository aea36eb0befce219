-- Refresh-token rotation: every request presents a refresh token never used before. Each
-- thread starts with its share of a pool of fresh tokens (BENCH_TOKEN_FILE, from harvest.lua) and
-- queues the new refresh token of every 200 answer, so the chain never reuses a token (a reuse
-- would revoke the session). A thread whose queue ran dry sends an unknown token (a 401,
-- counted as an error).
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local threads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  queue, head, tail = {}, 1, 0
  local k = 0
  for line in io.lines(os.getenv("BENCH_TOKEN_FILE")) do
    if #line > 0 then
      if k % threads == (id or 0) then
        tail = tail + 1
        queue[tail] = line
      end
      k = k + 1
    end
  end
end

function request()
  local token = "exhausted"
  if head <= tail then
    token = queue[head]
    queue[head] = nil
    head = head + 1
  end
  return wrk.format("POST", "/v1/auth/refresh", { ["Content-Type"] = "application/json" },
    '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
  if status == 200 then
    local t = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if t then
      tail = tail + 1
      queue[tail] = t
    end
  end
end
