-- API-key logins whose refresh tokens are saved (BENCH_HARVEST.<thread>), one per line: the
-- starting pool of refresh.lua. Not a measurement.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

wrk.method = "POST"
wrk.headers["Authorization"] = "ApiKey " .. os.getenv("BENCH_APIKEY")

local next_id = 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
end

function init(args)
  out = io.open(os.getenv("BENCH_HARVEST") .. "." .. id, "w")
end

function response(status, headers, body)
  if status == 200 then
    local t = body:match('"refresh_token"%s*:%s*"([^"]+)"')
    if t then
      out:write(t, "\n")
      out:flush()
    end
  end
end
