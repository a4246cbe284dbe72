//! Helpers shared by dashi's test suites (a dev-dependency only).
//!
//! - [`TestDir`]: a fresh temporary directory, removed when dropped, also
//!   when the test panics.
//! - [`child_role`]: runs this test binary again as a child process that
//!   executes one ignored test, for tests that kill or stop real processes;
//!   [`say`] (a child's line to its parent), [`ChildLines`] (the parent
//!   reading them) and [`kill`].
//! - [`RedisServer`]: a real `redis-server` on a free port.
//! - [`files_under`]: the files below a directory that a test looks for
//!   (segments, state pages).
//! - [`Tmpfs`]: a small real filesystem that fills up (needs root).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod redis;

pub use redis::RedisServer;

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

/// Whether this process can make a PID namespace (`unshare --pid`: root,
/// and `unshare` installed); when not, says the test is skipped and why.
pub fn pid_namespaces_here() -> bool {
    let made = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!("skipped: cannot make a PID namespace here (unshare --pid needs root)");
    }
    made
}

/// True when this process may make a time namespace with a shifted
/// monotonic clock (`unshare --time`: root, and a kernel from 5.6); says
/// why not on stderr otherwise.
pub fn time_namespaces_here() -> bool {
    let made = Command::new("unshare")
        .args(["--time", "--fork", "--monotonic", "86400", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        eprintln!(
            "skipped: cannot make a time namespace here (unshare --time needs root and Linux 5.6)"
        );
    }
    made
}

/// Prints one line on stdout and flushes it, so a parent reading the pipe
/// sees it even if this process is killed right after (one locked write:
/// lines of several threads never interleave).
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").expect("stdout is writable");
    out.flush().expect("stdout is writable");
}

/// A child's stdout, read line by line. libtest may print its own text
/// before the child's first line, so lines are matched by what they contain.
#[derive(Debug)]
pub struct ChildLines(std::io::Lines<std::io::BufReader<std::process::ChildStdout>>);

impl ChildLines {
    /// Takes the child's stdout (spawned with `Stdio::piped()`).
    pub fn of(child: &mut std::process::Child) -> ChildLines {
        use std::io::BufRead;
        let out = child.stdout.take().expect("the child's stdout is piped");
        ChildLines(std::io::BufReader::new(out).lines())
    }

    /// Every line up to the first containing `marker` (which is last).
    pub fn until(&mut self, marker: &str) -> Vec<String> {
        self.until_any(&[marker])
    }

    /// Every line up to the first containing one of `markers`; panics if
    /// the child ends first.
    pub fn until_any(&mut self, markers: &[&str]) -> Vec<String> {
        let mut seen = Vec::new();
        for line in self.0.by_ref().map_while(Result::ok) {
            let done = markers.iter().any(|m| line.contains(m));
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("the child ended before saying one of {markers:?}: {seen:?}");
    }

    /// Every line left, until the child closes its stdout.
    pub fn rest(self) -> impl Iterator<Item = String> {
        self.0.map_while(Result::ok)
    }
}

/// The first of `lines` containing `what`; panics, naming them all, when
/// none does.
pub fn line_with(lines: &[String], what: &str) -> String {
    lines
        .iter()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("no line with {what:?} in {lines:?}"))
        .clone()
}

/// Kills a child with SIGKILL and reaps it (already gone is fine).
pub fn kill(child: &mut std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Every file below `root` (recursively) whose path `pick` accepts, sorted;
/// none when `root` does not exist.
pub fn files_under(root: &Path, pick: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                todo.push(path);
            } else if pick(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted when
/// dropped: a real filesystem that fills up.
#[derive(Debug)]
pub struct Tmpfs {
    /// Where it is mounted.
    pub mount: PathBuf,
    _dir: TestDir,
}

impl Tmpfs {
    /// A tmpfs of `kb` KiB; `None` where it cannot be mounted (not root).
    pub fn make(kb: u64) -> Option<Tmpfs> {
        Tmpfs::make_with(kb, "")
    }

    /// A tmpfs of `kb` KiB mounted with more options (e.g. `nr_inodes=64`).
    pub fn make_with(kb: u64, options: &str) -> Option<Tmpfs> {
        let dir = TestDir::new();
        let mount = dir.child("mnt");
        std::fs::create_dir(&mount).ok()?;
        let mut o = format!("size={kb}k");
        if !options.is_empty() {
            o.push(',');
            o.push_str(options);
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &o, "tmpfs"])
            .arg(&mount)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { mount, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.mount)
            .status();
    }
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

    #[test]
    fn files_under_finds_nested_files_sorted_and_nothing_for_a_missing_root() {
        let d = TestDir::new();
        std::fs::create_dir_all(d.child("a/b")).unwrap();
        for f in ["a/b/2.seg", "a/1.seg", "a/state"] {
            std::fs::write(d.child(f), b"").unwrap();
        }
        let segs = files_under(&d, |p| p.extension().is_some_and(|x| x == "seg"));
        assert_eq!(segs, [d.child("a/1.seg"), d.child("a/b/2.seg")]);
        assert!(files_under(&d.child("none"), |_| true).is_empty());
    }

    #[test]
    fn child_lines_stop_at_a_marker_and_fail_when_the_child_ends() {
        let mut c = Command::new("printf")
            .arg("x\\nready 1\\nafter\\n")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = ChildLines::of(&mut c);
        assert_eq!(lines.until("ready"), ["x", "ready 1"]);
        let missing =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lines.until("never")));
        assert!(missing.is_err());
        kill(&mut c);
    }
}
