//! A fresh segment file in a per-test temporary directory, and child roles.

use std::fs::OpenOptions;
use std::path::Path;

use dashi_test_support::TestDir;

use crate::segment::Segment;

/// Creates `<tmp>/0.seg` of `size` bytes, formatted; the directory goes when
/// the returned `TestDir` is dropped.
pub(crate) fn fresh_segment(size: u64) -> (TestDir, Segment) {
    let dir = TestDir::new();
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

/// This test binary, run again as a child process that executes only the
/// ignored `child_role` test of `module` (under `tests::`), with `spec` in
/// the environment variable `var`.
pub(crate) fn child_role(module: &str, var: &str, spec: String) -> std::process::Command {
    dashi_test_support::child_role(&format!("tests::{module}::child_role"), var, spec)
}

/// How many segment files (`*.seg`) directory `d` holds.
pub(crate) fn segment_files(d: &Path) -> usize {
    std::fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg")
        })
        .count()
}
