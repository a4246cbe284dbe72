#!/usr/bin/env bash
# Regenerates the `dashi bench` table of BENCHMARKS.md: builds the CLI, runs each
# workload once with --compare (dashi and its peers in the same run) and prints
# the markdown rows. Usage: scripts/bench-table.sh [URL]   (default memory://)
set -euo pipefail
cd "$(dirname "$0")/.."
url="${1:-memory://}"
cargo build --release -q -p dashi-cli
run() { target/release/dashi bench "$url" --compare --json "$@"; }
{
  run --messages 1000000
  run --messages 500000 --size 4096
  run --messages 500000 --producers 2 --consumers 2 --priorities 4
} | python3 -c '
import json, sys
def rate(x):
    return "%.2f M msgs/s" % (x / 1e6) if x >= 1e6 else "%.1f k msgs/s" % (x / 1e3)
print("| workload | dashi | peer | peer msgs/s | ratio (dashi / peer) | dashi p50 / p99 µs |")
print("|---|---|---|---|---|---|")
for line in sys.stdin:
    r = json.loads(line)
    work = "%d × %d B, %dP/%dC" % (r["messages"], r["size"], r["producers"], r["consumers"])
    lat = "%d / %d" % (r["latency_us"]["p50"], r["latency_us"]["p99"])
    for p in r.get("peers", []):
        print("| %s | %s | %s | %s | %.2f× | %s |" % (work, rate(r["msgs_per_sec"]), p["transport"], rate(p["msgs_per_sec"]), p["ratio"], lat))
    for s in r.get("skipped", []):
        print("| %s | %s | %s | skipped: %s | | %s |" % (work, rate(r["msgs_per_sec"]), s["peer"], s["reason"], lat))
'
