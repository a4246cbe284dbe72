//! Tests of the store's internals (segments, lanes, recovery, allocation),
//! one file per behaviour; the tests that drive the transport only through
//! its public API are in `transport-local/tests/`.

mod allocation;
mod common;
mod cut_short;
mod lane_claims;
mod log_protocol;
mod power_cuts;
mod segment_append;
mod segment_processes;
mod segment_recovery;
mod store_recovery;
