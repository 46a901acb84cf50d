#!/usr/bin/env bash
# The "one core" view of larder-bench (issue 10): the bench client and the PostgreSQL
# server pinned to the same CPU with taskset, tokio's current-thread runtime, so client
# CPU per operation adds to latency as on a busy host. SQLite runs in-process (its worker
# thread is pinned with the client).
#
#   scripts/bench-pinned.sh [larder-bench args…]     e.g. --backend all --workload w1,w3,w5
#
# Restores the server's CPU affinity afterwards. Needs taskset (util-linux) and the right
# to change the server processes' affinity (root, or the postgres user).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
cpu=${LARDER_PIN_CPU:-0}
export LARDER_BENCH_POSTGRES_URL=${LARDER_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
cargo build --release -p larder-bench --manifest-path "$root/Cargo.toml"
pids=$(pgrep -x postgres || pgrep -f 'postgres: ' || true)
saved=()
for p in $pids; do
  saved+=("$p:$(taskset -p "$p" | awk '{print $NF}')")
  taskset -p "$(printf '%x' $((1 << cpu)))" "$p" >/dev/null || true
done
restore() {
  for s in "${saved[@]}"; do taskset -p "${s#*:}" "${s%%:*}" >/dev/null 2>&1 || true; done
}
trap restore EXIT
# New backends fork from the postmaster and inherit its (pinned) affinity.
taskset -c "$cpu" "$target/release/larder-bench" --current-thread "$@"
