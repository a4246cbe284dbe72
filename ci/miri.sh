#!/bin/sh
# Miri over the C ABI, the crate that holds nearly all of dashi's `unsafe`
# (pointer checks, boxed handles, views into messages): its unit tests and
# the random call sequences on memory:// (frees in any order, NULLs, strings
# that are not UTF-8); then local://'s shared-memory accessors (`mem.rs`:
# words and byte ranges, their bounds, offsets that wrap) over an anonymous
# mapping. Miri cannot run the rest: local:// maps its files shared and the
# runtime drives io_uring (`reactor.rs`), neither of which Miri emulates;
# loom checks local://'s lock-free protocol instead (README, "Other
# commands"). About 6 minutes with the default 2 cases.
set -eu
cd "$(dirname "$0")/.."
rustup component add --toolchain nightly miri rust-src >/dev/null
PROPTEST_CASES="${PROPTEST_CASES:-2}" MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}" \
  cargo +nightly miri test -p dashi-ffi --lib --test call_sequences -- \
  every_code random_call_sequences_on_memory
MIRIFLAGS="${MIRIFLAGS:--Zmiri-disable-isolation}" \
  cargo +nightly miri test -p dashi-transport-local --lib mem::
