//! The thread-per-core io_uring runtime (`dashi_rt`): ordering, I/O, timers,
//! batching, shutdown, panics and a kernel without io_uring.

mod core_panic;
mod forked;
mod io_ops;
mod ordering;
mod shutdown;
mod unavailable;

use std::time::Duration;

use dashi_rt::{Runtime, RuntimeConfig};

pub fn runtime(cores: usize) -> Runtime {
    Runtime::start(
        RuntimeConfig::default()
            .with_cores(cores)
            .with_shutdown_timeout(Duration::from_millis(500)),
    )
    .expect("io_uring runtime starts on this kernel")
}

/// A temporary directory holding one file, `data`, opened read-write; the
/// directory goes when the `TempDir` is dropped (also when a test panics).
pub fn temp_file() -> (tempfile::TempDir, std::sync::Arc<std::fs::File>) {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.path().join("data"))
        .unwrap();
    (dir, std::sync::Arc::new(f))
}
