//! Helpers for running the real `dashi` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

pub(crate) fn dashi(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args(args)
        .output()
        .expect("the dashi binary runs")
}

pub(crate) fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failure with exactly one line on stderr, starting with "dashi:",
/// and no panic.
pub(crate) fn one_line_error(o: &Output) -> String {
    assert!(!o.status.success(), "expected failure, got {:?}", o.status);
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panicked: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got: {err:?}");
    assert!(lines[0].starts_with("dashi: "), "{err}");
    lines[0].to_owned()
}
