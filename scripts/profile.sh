#!/usr/bin/env bash
# Profile one side of one larder-bench workload and write a flame graph.
#
#   scripts/profile.sh <larder|raw> <sqlite|postgres> <workload> [extra larder-bench args…]
#   scripts/profile.sh larder postgres w1
#   scripts/profile.sh raw sqlite w5 --w5-ops 5000
#
# Output: target/profile/<side>-<backend>-<workload>.svg (a flame graph, when `inferno` is
# installed: `cargo install inferno`) and .txt (perf's call-graph report, always).
# Needs `perf` (Debian: linux-perf). The bench binary is built in release mode with debug
# symbols (CARGO_PROFILE_RELEASE_DEBUG=true) so frames have names. The server side
# (PostgreSQL) is not in the profile: compare with the other side's profile, or use
# `EXPLAIN (ANALYZE, BUFFERS)` / pg_stat_statements for the server's share.
set -euo pipefail
side=${1:?side: larder or raw}
backend=${2:?backend: sqlite or postgres}
workload=${3:?workload: w1 … w8e, migrations}
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
out="$target/profile"
mkdir -p "$out"
name="$side-$backend-$workload"
export LARDER_BENCH_POSTGRES_URL=${LARDER_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p larder-bench --manifest-path "$root/Cargo.toml"
bin="$target/release/larder-bench"
perf record -F 999 -g --call-graph dwarf,16384 -o "$out/$name.perf" -- \
  "$bin" --backend "$backend" --workload "$workload" --runs 1 --only "$side" "$@"
perf report -i "$out/$name.perf" --stdio --no-children --percent-limit 1 > "$out/$name.txt" 2>/dev/null
if command -v inferno-collapse-perf >/dev/null && command -v inferno-flamegraph >/dev/null; then
  perf script -i "$out/$name.perf" 2>/dev/null | inferno-collapse-perf | inferno-flamegraph > "$out/$name.svg"
  echo "flame graph: $out/$name.svg"
else
  echo "no inferno on PATH (cargo install inferno): call graph only"
fi
echo "call graph: $out/$name.txt"
