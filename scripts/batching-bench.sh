#!/bin/bash
# Cross-request batching benchmarks (docs/benchmarks.md, issue 12): wrk
# (Debian package) against the release binary on this machine, --threads 2.
#   1. sinusoid at concurrency 1, 8, 32 and 128: GET /health, stateless
#      (10 support, 100 queries), session creation (10 support) and session
#      predict (100 queries), with the server's CPU per request;
#   2. Omniglot 5-way 1-shot stateless (5 queries) at concurrency 1 and 16,
#      batched (--batch-models all) and unbatched (--max-batch 1);
#   3. text intents: a 10-intent × 5-shot session created cold (no embedding
#      cache) and from cached sentences, and a 1-text session predict with
#      no cache at concurrency 1 and 8 (encoder calls shared across requests).
# BIN=path picks another binary; ARGS adds server flags; SECS the run length.
set -e
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/metasgd}
SECS=${SECS:-8}
P=18950
TMP=$(mktemp -d)
trap 'kill $PID 2>/dev/null; rm -rf $TMP' EXIT
start() { # extra server flags
  $BIN serve --port $P --host 127.0.0.1 --models models --threads 2 --max-sessions 1000000 --max-concurrency 512 \
    --max-sessions-per-key 1000000 ${ARGS:-} "$@" > $TMP/server.log 2>&1 &
  PID=$!
  for i in $(seq 150); do curl -sf http://127.0.0.1:$P/ready > /dev/null && return; sleep 0.2; done
  echo "server did not start"; cat $TMP/server.log; exit 1
}
stop() { kill $PID; wait $PID 2>/dev/null || true; }
post() { # name body-file
  cat > $TMP/$1.lua <<L
wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
local f = io.open("$2", "r")
wrk.body = f:read("*a")
f:close()
L
}
cpu() { awk '{print $14+$15}' /proc/$PID/stat; }
run() { # label concurrency url [lua]
  c0=$(cpu)
  out=$(wrk -t$(( $2 < 2 ? 1 : 2 )) -c$2 -d${SECS}s --latency ${4:+-s $4} $3)
  c1=$(cpu)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $5}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '/ 50%/ {print $2}')
  p99=$(echo "$out" | awk '/ 99%/ {print $2}')
  us=$(python3 -c "print(round(($c1-$c0)/$(getconf CLK_TCK)/$n*1e6,1))")
  echo "| $1 | $2 | $rps | $p50 | $p99 | $us | ${bad:-0} |"
}
python3 - "$TMP" <<'PY'
import json, math, random, sys
d = sys.argv[1]
xs = [-4.5 + i for i in range(10)]
support = {"inputs": [[x] for x in xs], "labels": [2 * math.sin(x - 0.5) for x in xs]}
queries = [[-5 + i * 0.1] for i in range(100)]
json.dump({"support": support, "inputs": queries}, open(f"{d}/stateless.json", "w"))
json.dump({"support": support}, open(f"{d}/create.json", "w"))
json.dump({"inputs": queries}, open(f"{d}/predict.json", "w"))
random.seed(1)
img = lambda: [[1.0 if random.random() < 0.15 else 0.0 for _ in range(28)] for _ in range(28)]
json.dump({"support": {"inputs": [img() for _ in range(5)], "labels": list("abcde")},
           "inputs": [img() for _ in range(5)]}, open(f"{d}/omniglot.json", "w"))
intents = ["book a flight", "check the weather", "play music", "set an alarm", "find a recipe",
           "call a taxi", "order pizza", "turn on the lights", "read the news", "send a message"]
texts = [f"could you please {t} for me, request {k}" for t in intents for k in range(5)]
json.dump({"support": {"inputs": texts, "labels": [t for t in intents for _ in range(5)]}},
          open(f"{d}/text-create.json", "w"))
json.dump({"inputs": ["i would like to hear some jazz now"]}, open(f"{d}/text-predict.json", "w"))
PY
for f in stateless create predict omniglot text-create text-predict; do post $f $TMP/$f.json; done
U=http://127.0.0.1:$P
echo "| request | concurrency | req/s | p50 | p99 | server CPU µs/request | non-2xx |"
echo "|---|---|---|---|---|---|---|"
start
id=$(curl -sf -H 'content-type: application/json' -d @$TMP/create.json $U/v1/models/sinusoid/sessions | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
for c in 1 8 32 128; do
  run "GET /health" $c $U/health
  run "sinusoid stateless" $c $U/v1/models/sinusoid/predict $TMP/stateless.lua
  run "sinusoid create session" $c $U/v1/models/sinusoid/sessions $TMP/create.lua
  run "sinusoid session predict" $c $U/v1/sessions/$id/predict $TMP/predict.lua
done
stop
for mode in batched unbatched; do
  if [ $mode = batched ]; then start --batch-models all; else start --max-batch 1; fi
  for c in 1 16; do run "omniglot 5-way 1-shot, $mode" $c $U/v1/models/omniglot/predict $TMP/omniglot.lua; done
  stop
done
for cache in 0 64; do
  start --embedding-cache-mb $cache
  if [ $cache = 0 ]; then
    run "intents create 10 × 5, cold (no cache)" 1 $U/v1/models/intents/sessions $TMP/text-create.lua
    id=$(curl -sf -H 'content-type: application/json' -d @$TMP/text-create.json $U/v1/models/intents/sessions | python3 -c 'import json,sys; print(json.load(sys.stdin)["session_id"])')
    for c in 1 8; do run "intents session predict, 1 text, no cache" $c $U/v1/sessions/$id/predict $TMP/text-predict.lua; done
  else
    for c in 1 8; do run "intents create 10 × 5, cached sentences" $c $U/v1/models/intents/sessions $TMP/text-create.lua; done
  fi
  stop
done
