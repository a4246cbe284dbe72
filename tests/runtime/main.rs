//! The thread-per-core io_uring runtime (`dashi::rt`): ordering, I/O, timers,
//! batching, shutdown, panics and a kernel without io_uring.

mod core_panic;
mod io_ops;
mod ordering;
mod shutdown;
mod unavailable;

use std::time::Duration;

use dashi::rt::{Runtime, RuntimeConfig};

pub fn runtime(cores: usize) -> Runtime {
    Runtime::start(
        RuntimeConfig::default()
            .with_cores(cores)
            .with_shutdown_timeout(Duration::from_millis(500)),
    )
    .expect("io_uring runtime starts on this kernel")
}

pub fn temp_file(name: &str) -> (std::path::PathBuf, std::sync::Arc<std::fs::File>) {
    let dir = std::env::temp_dir().join(format!("dashi-rt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    (dir, std::sync::Arc::new(f))
}
