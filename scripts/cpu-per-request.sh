#!/bin/bash
# The server's CPU per request (utime+stime over a wrk run, divided by the
# requests), for GET /health and a stateless sinusoid request; see
# docs/benchmarks.md. Needs wrk (Debian package) and the release binary;
# BIN=path picks another binary; ARGS="--max-batch 1" adds server flags.
set -e
BIN=${BIN:-./target/release/metasgd}
P=18940
$BIN serve --port $P --host 127.0.0.1 --models models --threads 2 ${ARGS:-} > /tmp/wrk-server.log 2>&1 &
PID=$!
for i in $(seq 100); do curl -sf http://127.0.0.1:$P/ready > /dev/null && break; sleep 0.2; done
cat > /tmp/stateless.lua <<'L'
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local xs = {}
local ys = {}
for i = 0, 9 do xs[#xs+1] = string.format("[%f]", -4.5 + i) ys[#ys+1] = string.format("%f", 2*math.sin(-5 + i)) end
local qs = {}
for i = 0, 99 do qs[#qs+1] = string.format("[%f]", -5 + i * 0.1) end
wrk.body = '{"support":{"inputs":[' .. table.concat(xs, ",") .. '],"labels":[' .. table.concat(ys, ",") .. ']},"inputs":[' .. table.concat(qs, ",") .. ']}'
L
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
run() { # name url [script]
  c0=$(cpu)
  out=$(wrk -t2 -c32 -d10s --latency ${3:+-s $3} $2)
  c1=$(cpu)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(echo "$out" | awk '/ 99%/ {print $2}')
  tck=$(getconf CLK_TCK)
  echo "| $1 | $rps | $p99 | $(python3 -c "print(round(($c1-$c0)/$tck/$n*1e6,1))") |"
}
echo "| request | req/s | p99 | server CPU µs/request |"
echo "|---|---|---|---|"
run "GET /health" http://127.0.0.1:$P/health
run "stateless sinusoid (10 support, 100 queries)" http://127.0.0.1:$P/v1/models/sinusoid/predict /tmp/stateless.lua
kill $PID
