-- GET BENCH_PATH with a different bearer token on every request, rotating through the tokens
-- of BENCH_TOKEN_FILE (one per line). Each wrk thread starts at its own offset. The requests are
-- formatted once, up front, so the rotation costs wrk nothing per request.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  local path = os.getenv("BENCH_PATH") or "/"
  local threads = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  reqs = {}
  for line in io.lines(os.getenv("BENCH_TOKEN_FILE")) do
    if #line > 0 then
      reqs[#reqs + 1] = wrk.format("GET", path, { ["Authorization"] = "Bearer " .. line })
    end
  end
  n = #reqs
  if n == 0 then
    error("no tokens in " .. os.getenv("BENCH_TOKEN_FILE"))
  end
  i = math.floor((id or 0) * n / threads)
end

function request()
  i = i % n + 1
  return reqs[i]
end
