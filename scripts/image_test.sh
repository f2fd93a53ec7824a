#!/usr/bin/env bash
# `make image-test`: build the image and run tests/image against containers of it.
#
# Needs a Linux Docker engine. When none answers, it installs Debian's docker.io (as
# root, if missing) and starts dockerd itself with no bridge network (containers use
# --network host, so every connection stays on loopback), and stops it afterwards.
# An engine that was already running is used and left running.
# Without Docker the tests are skipped with a reason; with CI=true that is a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-neto-token-broker:image-test}
export BROKER_IMAGE_DATABASE_URL=${BROKER_IMAGE_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/broker_image}

say() { printf 'image-test: %s\n' "$*"; }
unavailable() {
  if [ "${CI:-}" = "true" ]; then
    say "FAILED: $1"
    exit 1
  fi
  say "SKIPPED: $1 (the image tests need a Linux Docker engine)"
  exit 0
}

started=$SECONDS
if ! command -v dockerd >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  say "installing docker.io"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io) >/dev/null
fi
command -v docker >/dev/null || unavailable "no docker command"

dockerd_pid=
log=
stop_dockerd() {
  local status=$?
  if [ -n "$dockerd_pid" ]; then
    say "stopping the dockerd this run started (pid $dockerd_pid)"
    kill -TERM "$dockerd_pid" 2>/dev/null || true
    for _ in $(seq 1 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    # Its log is kept only when something failed.
    if [ "$status" = 0 ]; then rm -f "$log"; fi
  fi
}
trap stop_dockerd EXIT

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null || [ "$(id -u)" != 0 ]; then
    unavailable "no Docker engine answers and this user cannot start one"
  fi
  log=$(mktemp /tmp/broker-dockerd.XXXXXX.log)
  say "starting dockerd (log: $log)"
  dockerd --bridge=none --iptables=false >"$log" 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$log"; unavailable "dockerd did not start"; }
fi
engine_ready=$SECONDS

make --no-print-directory image IMAGE="$IMAGE"
built=$SECONDS
size=$(docker image inspect -f '{{.Size}}' "$IMAGE")

status=0
BROKER_IMAGE="$IMAGE" .venv/bin/python -m pytest tests/image -p no:cacheprovider -q || status=$?
tested=$SECONDS

say "image $IMAGE: $size bytes ($(( size / 1000000 )) MB)"
say "timings: engine $((engine_ready - started)) s, base and image build $((built - engine_ready)) s, tests $((tested - built)) s, total $((tested - started)) s"
exit "$status"
