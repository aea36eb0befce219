-- One fixed request (method, headers and body from the command line / environment).
-- BENCH_METHOD, BENCH_BODY, BENCH_CONTENT_TYPE are optional.
dofile(os.getenv("BENCH_WRK_DIR") .. "/common.lua")

local method = os.getenv("BENCH_METHOD")
if method and method ~= "" then
  wrk.method = method
end
local body = os.getenv("BENCH_BODY")
if body and body ~= "" then
  wrk.body = body
end
local ctype = os.getenv("BENCH_CONTENT_TYPE")
if ctype and ctype ~= "" then
  wrk.headers["Content-Type"] = ctype
end
if os.getenv("BENCH_COUNT_STATUS") == "1" then
  bench_count_statuses()
end
