#!/bin/sh
# ThreadSanitizer over the unit tests of the engine, the runtime and
# local:// (their lock-free structures and the threads around them), with the
# standard library rebuilt under TSan (nightly, -Zbuild-std). A race stops
# the run with both stacks. Takes a while: std and every dependency are built
# again with instrumentation into target/tsan.
set -eu
cd "$(dirname "$0")/.."
rustup component add rust-src --toolchain nightly >/dev/null
export RUSTFLAGS="-Zsanitizer=thread"
export RUSTDOCFLAGS="-Zsanitizer=thread"
export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
exec cargo +nightly test -Zbuild-std --target x86_64-unknown-linux-gnu \
  --target-dir target/tsan -p dashi-engine -p dashi-rt -p dashi-transport-local \
  --lib "$@"
