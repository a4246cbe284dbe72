#!/bin/sh
# Every fuzz target for a bounded time each (default 60 s; FUZZ_SECONDS=600
# for a longer run). A crash stops the run with the input in
# fuzz/artifacts/<target>/; turn it into a regression test (each target's
# entry point has a unit test over seeds) before fixing it.
set -eu
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
secs="${FUZZ_SECONDS:-60}"
for t in $(RUSTC_BOOTSTRAP=1 cargo fuzz list); do
  echo "== $t ($secs s)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run -O "$t" -- -max_total_time="$secs" 2>&1 |
    grep -a -E '^#[0-9]+ +DONE|Done [0-9]+ runs|ERROR|SUMMARY' | tail -2
done
