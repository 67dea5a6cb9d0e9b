#!/usr/bin/env bash
# The benchmark command of BENCHMARKS.md: `bash bench/run.sh [all options]`.
#
# Installs wrk if it is missing (Debian: apt-get), builds the benchmark in
# release, and runs `async-op-bench all`, which starts its own servers on
# 127.0.0.1 (pinned to core 0 with taskset where there are 2 cores or more),
# drives them with wrk and its own clients (core 1), prints every figure with
# the command lines that made it, and ends with one JSON object per figure
# per line. The whole output is also kept in target/async-op-bench/run.log,
# the JSON lines in target/async-op-bench/summary.jsonl.
#
# Figure 5 uses the Redis at 127.0.0.1:6379 (or ASYNC_OP_BENCH_REDIS_URL);
# without one it starts a private redis-server if one is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
  echo "== installing wrk"
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq wrk >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null; }
  else
    echo "wrk is missing and there is no apt-get: install wrk, then run this again" >&2
    exit 1
  fi
fi

# 10,000 held polls need 10,000 sockets in the server and in the client.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== building (cargo build --release -p async-op-bench)"
start=$(date +%s)
cargo build --release -p async-op-bench
echo "== built in $(( $(date +%s) - start )) s"

target_dir="${CARGO_TARGET_DIR:-target}"
out="$target_dir/async-op-bench"
mkdir -p "$out"
"$target_dir/release/async-op-bench" all --summary "$out/summary.jsonl" "$@" 2>&1 | tee "$out/run.log"
exit "${PIPESTATUS[0]}"
