//! The shared library the C programs and the Python binding load. `cargo
//! test` builds this crate only as an rlib, so the tests build the cdylib
//! themselves, once per test binary, with the same cargo, into a target
//! directory of their own (`target/ffi-tests`: the outer cargo holds the
//! lock of the main one while tests run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub(crate) fn library() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target/ffi-tests");
        let o = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "dashi-ffi",
                "--lib",
                "--target-dir",
            ])
            .arg(&target)
            .current_dir(&root)
            .output()
            .expect("cargo runs");
        assert!(
            o.status.success(),
            "building libdashi_ffi.so failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let lib = target.join("debug/libdashi_ffi.so");
        assert!(lib.exists(), "{} was not built", lib.display());
        lib
    })
}
