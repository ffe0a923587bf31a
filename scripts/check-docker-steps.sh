#!/usr/bin/env bash
# Runs the Dockerfile's steps without a Docker engine: copies the build
# context the Dockerfile COPYs into a clean folder, runs its build script
# there, lays out the runtime image's files, starts the server with the
# image's ENV and entrypoint, and runs its HEALTHCHECK command.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

# 1. The build stage: exactly the COPY lines of the Dockerfile.
mkdir -p "$work/src"
grep -E '^COPY [^-]' "$repo/Dockerfile" | while read -r _ srcs; do
  set -- $srcs
  dest=${!#}
  for ((i = 1; i < $#; i++)); do
    s=${!i}
    mkdir -p "$work/src/$(dirname "$s")"
    cp -r "$repo/$s" "$work/src/$s"
  done
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target}
variant=$(sed -n 's/^ARG VARIANT=//p' "$repo/Dockerfile")
(cd "$work/src" && bash scripts/docker-build.sh "$variant" "$work/out")

# 2. The runtime stage: its ENV, its files, its entrypoint and health check.
test -x "$work/out/bin/metasgd"
test -f "$work/out/app/models/sinusoid/manifest.json"
test -d "$work/out/app/data"
test -n "$(find "$work/out/app/cache" -name 'libonnxruntime.so*')"
! find "$work/out/app/models" -name '*checkpoint.*' | grep -q .
port=$(( 20000 + RANDOM % 20000 ))
env_args=$(awk '/^ENV /{f=1} f{print} f && !/\\$/{f=0}' "$repo/Dockerfile" | sed 's/^ENV //; s/\\$//' | tr -s ' \n' '\n' | grep '=')
cd "$work/out/app"
# No network for the server: everything it needs must be in the image.
env $env_args METASGD_HOST=127.0.0.1 METASGD_PORT=$port METASGD_MODELS="$work/out/app/models" \
  METASGD_CACHE="$work/out/app/cache" METASGD_SESSIONS="redb:$work/out/app/data/sessions.redb" HTTPS_PROXY=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 \
  METASGD_HEALTHCHECK_URL=http://127.0.0.1:$port/health "$work/out/bin/metasgd" serve &
pid=$!
for _ in $(seq 1 100); do
  if METASGD_HEALTHCHECK_URL=http://127.0.0.1:$port/health "$work/out/bin/metasgd" healthcheck 2>/dev/null; then
    test -f "$work/out/app/data/sessions.redb"
    echo "docker steps: image layout built, server healthy on :$port (sessions in /app/data)"
    exit 0
  fi
  sleep 0.2
done
echo "docker steps: server never became healthy" >&2
exit 1
