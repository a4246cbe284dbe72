//! A fresh segment file in a per-test temporary directory.
#![allow(dead_code)] // each test file uses its own subset

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use dashi_transport_local::segment::Segment;

/// Creates `<tmp>/dashi-<tag>-<pid>/0.seg` of `size` bytes, formatted.
/// Returns the directory (remove it at the end) and the segment.
pub(crate) fn fresh_segment(tag: &str, size: u64) -> (PathBuf, Segment) {
    let dir = std::env::temp_dir().join(format!("dashi-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("0.seg");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.set_len(size).unwrap();
    let seg = Segment::format(&path, f, 0, 0).unwrap();
    (dir, seg)
}

/// Opens an existing segment again (as another user of the store would).
pub(crate) fn reopen(path: &Path) -> Segment {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Segment::open(path, f).unwrap()
}

/// This test binary, run again as a child process that executes only its
/// ignored `child_role` test, with `spec` in the environment variable `var`.
pub(crate) fn child_role(var: &str, spec: String) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "child_role",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(var, spec);
    c
}
