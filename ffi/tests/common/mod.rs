//! What the C programs and the Python binding need built: this crate's
//! shared library and the `dashi` command-line tool. `cargo test` builds
//! this crate only as an rlib, so the tests build them, once per test
//! binary, with the same cargo, into a target directory of their own
//! (`target/ffi-tests`: the outer cargo holds the lock of the main one
//! while tests run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// `libdashi_ffi.so`.
#[allow(dead_code)] // each test binary uses what it needs
pub(crate) fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build(&["-p", "dashi-ffi", "--lib"], "libdashi_ffi.so"))
}

/// The `dashi` command-line tool.
#[allow(dead_code)] // each test binary uses what it needs
pub(crate) fn cli() -> &'static Path {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| build(&["-p", "dashi-cli", "--bin", "dashi"], "dashi"))
}

fn build(what: &[&str], artifact: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/ffi-tests");
    let o = Command::new(env!("CARGO"))
        .args(["build", "--quiet"])
        .args(what)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(&root)
        .output()
        .expect("cargo runs");
    assert!(
        o.status.success(),
        "building {artifact} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let path = target.join("debug").join(artifact);
    assert!(path.exists(), "{} was not built", path.display());
    path
}
