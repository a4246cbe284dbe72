//! Helpers for running the real `dashi` binary.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

/// Runs `dashi` and collects its output; a run that takes over two minutes is
/// killed and fails the test (a hang must not stall the suite).
pub(crate) fn dashi(args: &[&str]) -> Output {
    dashi_under(&[], args)
}

/// [`dashi`] started by the command `wrapper` (e.g. `unshare --pid ...`),
/// which is given the binary and `args`; none: started directly.
pub(crate) fn dashi_under(wrapper: &[&str], args: &[&str]) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let exe = env!("CARGO_BIN_EXE_dashi");
    let mut cmd = match wrapper.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the dashi binary runs");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (otx, orx) = std::sync::mpsc::channel();
    let (etx, erx) = std::sync::mpsc::channel();
    // Kept as it comes, so a run killed for taking too long still shows
    // what it said.
    let so_far = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = so_far.clone();
    std::thread::spawn(move || {
        let mut o = Vec::new();
        let _ = out.read_to_end(&mut o);
        let _ = otx.send(o);
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = etx.send(std::mem::take(&mut *sink.lock().unwrap()));
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for dashi") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            // What every process of the run is doing, before it goes.
            let doing = diagnose(child.id());
            let _ = child.kill();
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(200));
            let said = String::from_utf8_lossy(&so_far.lock().unwrap()).into_owned();
            panic!(
                "dashi {args:?} did not finish within 120 s; its stderr:\n{said}\nits processes:\n{doing}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: orx.recv().unwrap_or_default(),
        stderr: erx.recv().unwrap_or_default(),
    }
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

/// Whether the tests run as root (mounts, other users).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// A copy of the `dashi` binary in `dir` (made world-readable and
/// searchable) that another user can run, and a command running it as
/// `nobody`.
pub(crate) fn dashi_as_nobody(dir: &std::path::Path) -> impl Fn(&[&str]) -> Command {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = dir.join("dashi");
    std::fs::copy(env!("CARGO_BIN_EXE_dashi"), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    move |args: &[&str]| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&exe)
            .args(args);
        c
    }
}

/// `pid` and its descendants: each thread's state and kernel wait channel
/// and stack, and (where gdb is installed) each process's user-space
/// backtraces. For a run that hangs once in many: the failure says where.
pub(crate) fn diagnose(pid: u32) -> String {
    use std::fmt::Write;
    let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
    // Parent of each process, from /proc/<pid>/stat (after the command).
    let mut parents = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = read(format!("/proc/{p}/stat"));
        if let Some(pp) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u32>().ok())
        {
            parents.push((p, pp));
        }
    }
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let at = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == at).map(|(p, _)| *p));
        i += 1;
    }
    let mut out = String::new();
    for p in tree {
        let cmd = read(format!("/proc/{p}/cmdline")).replace('\0', " ");
        let parent = parents
            .iter()
            .find(|(c, _)| *c == p)
            .map_or(0, |(_, pp)| *pp);
        let _ = writeln!(out, "process {p} (parent {parent}): {cmd}");
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let tid = t.file_name().to_string_lossy().into_owned();
            let base = format!("/proc/{p}/task/{tid}");
            let stat = read(format!("{base}/stat"));
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            let _ = writeln!(
                out,
                "  thread {tid} {} state {state} wchan {}\n{}",
                read(format!("{base}/comm")).trim(),
                read(format!("{base}/wchan")),
                read(format!("{base}/stack"))
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            );
        }
        if let Ok(bt) = Command::new("timeout")
            .args([
                "20",
                "gdb",
                "-p",
                &p.to_string(),
                "-batch",
                "-ex",
                "thread apply all bt",
            ])
            .output()
        {
            let _ = writeln!(out, "{}", String::from_utf8_lossy(&bt.stdout));
        }
    }
    out
}
