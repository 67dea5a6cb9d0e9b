#!/usr/bin/env bash
# The `cluster` example: two quickstart instances on two ports sharing one
# Redis and one secret. A report begun on the first is followed, and its
# result fetched, on the second.
#
#   bash examples/cluster.sh            # uses the Redis at 127.0.0.1:6379
#   REDIS_URL=redis://host:port bash examples/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export ASYNC_OP_REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
export ASYNC_OP_SECRET="${ASYNC_OP_SECRET:-$(head -c 32 /dev/urandom | base64)}"
export ASYNC_OP_EARLY_POLL=reject ASYNC_OP_LONG_POLL=0 RUST_LOG=warn

cargo build -q --bin quickstart
ASYNC_OP_BIND=127.0.0.1:8081 target/debug/quickstart > /dev/null &
a=$!
ASYNC_OP_BIND=127.0.0.1:8082 target/debug/quickstart > /dev/null &
b=$!
trap 'kill $a $b 2>/dev/null' EXIT
for port in 8081 8082; do
  for _ in $(seq 100); do curl -s -o /dev/null "127.0.0.1:$port/" && break; sleep 0.1; done
done

echo "\$ curl -si -d '{\"seconds\":2}' -H 'content-type: application/json' 127.0.0.1:8081/reports   # instance A"
begin=$(curl -si -d '{"seconds":2}' -H 'content-type: application/json' 127.0.0.1:8081/reports)
echo "$begin" | grep -iE '^(HTTP|location|retry-after)'
location=$(echo "$begin" | grep -i '^location:' | cut -d' ' -f2 | tr -d '\r')
sleep 3
echo
echo "\$ sleep 3; curl -si '127.0.0.1:8082${location:0:40}...'   # instance B"
curl -si "127.0.0.1:8082$location" | grep -vi '^date:'
echo
