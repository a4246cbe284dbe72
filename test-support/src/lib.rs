//! Helpers shared by dashi's test suites (a dev-dependency only).
//!
//! - [`TestDir`]: a fresh temporary directory, removed when dropped, also
//!   when the test panics.
//! - [`child_role`]: runs this test binary again as a child process that
//!   executes one ignored test, for tests that kill or stop real processes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh, empty temporary directory, removed with everything in it when
/// dropped. Derefs to its [`Path`].
#[derive(Debug)]
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    /// A new directory under the system temporary directory.
    pub fn new() -> TestDir {
        TestDir(
            tempfile::Builder::new()
                .prefix("dashi-test-")
                .tempdir()
                .expect("a temporary directory can be created"),
        )
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// A path inside it (not created).
    pub fn child(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.path()
    }
}

/// This test binary, run again as a child process that executes only the
/// ignored test `test` (its full path, e.g. `child_role` in an integration
/// test or `tests::lane_claims::child_role` in a library's unit tests), with
/// `spec` in the environment variable `var`.
pub fn child_role(test: &str, var: &str, spec: String) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("the test binary's path"));
    c.args([
        test,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(var, spec);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_test_dir_is_fresh_and_goes_when_dropped() {
        let d = TestDir::new();
        let p = d.to_path_buf();
        assert!(p.is_dir());
        assert_eq!(std::fs::read_dir(&p).unwrap().count(), 0);
        std::fs::write(d.child("f"), b"x").unwrap();
        drop(d);
        assert!(!p.exists());
    }

    #[test]
    fn a_child_role_names_one_ignored_test() {
        let c = child_role("m::child_role", "DASHI_X", "a,b".into());
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "m::child_role");
        assert!(args.contains(&"--exact".to_string()) && args.contains(&"--ignored".to_string()));
        let env: Vec<_> = c.get_envs().collect();
        assert_eq!(env[0].0, "DASHI_X");
    }
}
