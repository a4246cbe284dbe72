//! Every error is one clear line on stderr and a non-zero exit; bad URLs,
//! unknown flags and bad values never panic.

mod common;
use common::*;
use dashi_test_support::TestDir;

#[test]
fn bad_urls_are_one_line_errors() {
    for url in [
        "nope://x",
        "memory",
        "memory://a/b/c",
        "memory://x?bogus=1",
        "memory://?confirm_window=0",
        "memory://?confirm_window_bytes=1e30",
        "",
    ] {
        for cmd in [
            vec!["stat", url],
            vec!["purge", url, "--queue", "q"],
            vec!["publish", url, "--queue", "q"],
            vec!["consume", url, "--queue", "q", "--timeout", "0"],
            vec!["bench", url, "--messages", "10"],
        ] {
            let o = dashi(&cmd);
            let line = one_line_error(&o);
            assert_eq!(o.status.code(), Some(1), "{cmd:?}: {line}");
        }
    }
}

/// A local:// URL naming a directory that is not a store and holds other
/// files (a mistyped `local:///`, a home directory) is one line, and no
/// store file is written there: every command refuses it.
#[test]
fn a_directory_that_is_not_a_store_is_refused_and_left_alone() {
    let dir = TestDir::new();
    std::fs::write(dir.child("mine.txt"), b"mine").unwrap();
    let url = format!("local://{}", dir.display());
    for cmd in [
        vec!["publish", &url, "--queue", "q"],
        vec!["consume", &url, "--queue", "q", "--timeout", "0"],
        vec!["bench", &url, "--messages", "10"],
    ] {
        let line = one_line_error(&dashi(&cmd));
        assert!(
            line.contains("is not a dashi store and is not empty") && line.contains("mine.txt"),
            "{cmd:?}: {line}"
        );
        let names: Vec<_> = std::fs::read_dir(&*dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["mine.txt"], "{cmd:?}");
    }
}

#[test]
fn passwords_never_reach_the_terminal() {
    for url in [
        "nope://user:hunter2@host",
        "local:///proc/dashi-none/x;redis://user:hunter2@host",
        "redis://user:hunter2@host;local:///proc/dashi-none/x",
    ] {
        let o = dashi(&["stat", url]);
        let line = one_line_error(&o);
        assert!(!line.contains("hunter2"), "{line}");
    }
}

#[test]
fn unknown_flags_and_bad_values_exit_2_with_one_line() {
    for cmd in [
        vec!["stat", "memory://", "--frobnicate"],
        vec!["bench", "memory://", "--messages", "lots"],
        vec!["publish", "memory://", "--type", "topic"],
        vec!["publish", "memory://", "--priority", "300"],
        vec!["consume", "memory://"],
        vec!["consume", "memory://", "--queue", "q", "--ack", "--no-ack"],
        vec!["publish", "memory://", "--body", "a", "--size", "3"],
        vec!["publish", "memory://", "--queue", "q", "--pipeline", "0"],
        vec![
            "publish",
            "memory://",
            "--queue",
            "q",
            "--pipeline",
            "99999999999",
        ],
        vec!["bench", "memory://", "--pipeline", "0"],
        vec!["no-such-command"],
    ] {
        let o = dashi(&cmd);
        one_line_error(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}");
    }
}

#[test]
fn invalid_numbers_are_refused_by_the_command() {
    for (cmd, needle) in [
        (vec!["bench", "memory://", "--size", "4"], "--size"),
        (vec!["bench", "memory://", "--messages", "0"], "--messages"),
        (
            vec!["bench", "memory://", "--producers", "0"],
            "--producers",
        ),
        (
            vec!["bench", "memory://", "--priorities", "300"],
            "--priorities",
        ),
        (
            vec!["consume", "memory://", "--queue", "q", "--prefetch", "0"],
            "--prefetch",
        ),
        (
            vec!["consume", "memory://", "--queue", "q", "--timeout=-1"],
            "--timeout",
        ),
        (
            vec!["publish", "memory://", "--header", "novalue"],
            "--header",
        ),
        (
            vec!["publish", "memory://", "--body-file", "/nonexistent/x"],
            "body-file",
        ),
        (
            vec!["consume", "memory://", "--queue", "q", "--timeout", "1e20"],
            "--timeout",
        ),
        (
            vec!["publish", "memory://", "--size", "99999999999999"],
            "--size",
        ),
        (
            vec!["bench", "memory://", "--size", "1000000000000"],
            "--size",
        ),
        (
            vec!["bench", "memory://", "--producers", "100000"],
            "--producers",
        ),
        (
            vec!["bench", "memory://", "--consumers", "100000"],
            "--consumers",
        ),
    ] {
        let o = dashi(&cmd);
        let line = one_line_error(&o);
        assert!(line.contains(needle), "{cmd:?}: {line}");
    }
}

#[test]
fn help_and_version_succeed() {
    let o = dashi(&["--help"]);
    assert!(o.status.success());
    for sub in ["publish", "consume", "stat", "purge", "bench"] {
        assert!(stdout(&o).contains(sub), "{sub} missing from --help");
    }
    let o = dashi(&["--version"]);
    assert!(o.status.success() && stdout(&o).starts_with("dashi "));
}

/// A timeout too long for the clock is a long wait, not a panic: with a
/// message waiting, the command takes it and ends.
#[test]
fn an_enormous_timeout_is_just_a_long_wait() {
    let dir = dashi_test_support::TestDir::new();
    let url = format!("local://{}?segment_size=64K", dir.display());
    let o = dashi(&["publish", &url, "--queue", "q", "--body", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "1",
        "--timeout",
        "1e19",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("hi"));
}

#[test]
fn long_input_is_cut_and_prefixes_are_said_once() {
    let long = format!("nope://{}", "x".repeat(100_000));
    let o = dashi(&["stat", &long]);
    let line = one_line_error(&o);
    assert!(line.len() < 600, "{} characters", line.len());
    assert!(line.contains("more characters cut"), "{line}");
    let name = "q".repeat(10_000);
    let o = dashi(&["publish", "memory://", "--queue", &name]);
    let line = one_line_error(&o);
    assert!(line.len() < 600, "{} characters", line.len());
    for w in line.split(": ").collect::<Vec<_>>().windows(2) {
        assert_ne!(w[0], w[1], "repeated prefix in {line}");
    }
}

/// A file-size limit (`ulimit -f`) below a segment's size: the publish fails
/// with one line that names the file and the reason (`EFBIG`; no SIGXFSZ
/// death), nothing is stored, and without the limit the same store works.
#[test]
fn a_file_size_limit_is_a_one_line_error_and_the_store_still_works() {
    let d = dashi_test_support::TestDir::new();
    let url = format!("local://{}", d.join("s").display());
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -f 200 && exec '{}' publish '{url}' --queue q --count 3 --size 100",
            env!("CARGO_BIN_EXE_dashi")
        ))
        .output()
        .unwrap();
    let line = one_line_error(&o);
    assert!(
        line.contains("File too large") && line.contains("lane-0"),
        "{line}"
    );
    assert_eq!(o.status.code(), Some(1), "{line}");
    let o = dashi(&["publish", &url, "--queue", "q", "--body", "after"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "5",
        "--timeout",
        "1",
    ]);
    let got: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    assert_eq!(got.len(), 1, "only the later one: {got:?}");
    assert!(got[0].ends_with("body=after"), "{got:?}");
}

/// A store's directory made read-only under a running publisher that is not
/// root: the publish that needs a new segment fails with one line naming the
/// lane and the reason, every publish before it is stored (none lost, none
/// invented), and once the directory is writable again the store works.
#[test]
fn a_store_made_read_only_mid_run_refuses_with_one_line_and_loses_nothing() {
    if !is_root() {
        eprintln!("skipped: needs root to run the publisher as another user");
        return;
    }
    let d = dashi_test_support::TestDir::new();
    let as_nobody = dashi_as_nobody(&d);
    let store = d.join("s");
    let url = format!("local://{}?segment_size=64K", store.display());
    let publisher = as_nobody(&[
        "publish",
        &url,
        "--queue",
        "q",
        "--count",
        "100000000",
        "--size",
        "100",
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Once a few segments are there, the directory tree goes read-only.
    let lane = store.join("q/q/0000000000000001/lane-0");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while dashi_test_support::files_under(&lane, |p| p.extension().is_some_and(|e| e == "seg"))
        .len()
        < 3
    {
        assert!(std::time::Instant::now() < until, "no segments appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let chmod = |mode: &str| {
        assert!(std::process::Command::new("chmod")
            .args(["-R", mode])
            .arg(&store)
            .status()
            .unwrap()
            .success());
    };
    chmod("a-w");
    let o = publisher.wait_with_output().unwrap();
    let line = one_line_error(&o);
    assert!(
        line.contains("Permission denied") && line.contains("lane-0"),
        "{line}"
    );
    // A process opening the store meanwhile is refused with one line
    // naming the lock file it could not open.
    let e = one_line_error(&as_nobody(&["stat", &url]).output().unwrap());
    assert!(
        e.contains("entry lock") && e.contains("entry.lock") && e.contains("Permission denied"),
        "{e}"
    );
    // "publish of message N of 100000000 failed: ... (K others confirmed;
    // none after message N was sent)": one at a time, K is N - 1.
    let after = |word: &str| -> u64 {
        line.split_whitespace()
            .skip_while(|w| *w != word)
            .nth(1)
            .and_then(|w| w.trim_start_matches('(').parse().ok())
            .unwrap_or_else(|| panic!("{word}: {line}"))
    };
    let n = after("message");
    let confirmed: u64 = line
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert_eq!(confirmed, n - 1, "{line}");
    assert!(
        line.contains(&format!("none after message {n} was sent")),
        "{line}"
    );
    chmod("u+w");
    let o = as_nobody(&["stat", &url, "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    let q = v["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == "q"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(
        q["messages"],
        n - 1,
        "every confirmed publish, no more: {v}"
    );
    let o = as_nobody(&["publish", &url, "--queue", "q", "--body", "after"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

/// stdout that fails is an error line, never a panic: a full one (after a
/// publish, the line says the messages were published, and they were),
/// and a reader that left (`dashi stat | head -1`) ends the output
/// quietly with the command's own outcome.
#[test]
fn a_stdout_that_fails_is_an_error_line_or_a_quiet_end_never_a_panic() {
    use std::process::{Command, Stdio};
    let d = dashi_test_support::TestDir::new();
    let url = format!("local://{}", d.path().display());
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let o = Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args([
            "publish", &url, "--queue", "q", "--count", "3", "--body", "x",
        ])
        .stdout(full())
        .output()
        .unwrap();
    let line = one_line_error(&o);
    assert_eq!(o.status.code(), Some(1), "{line}");
    assert!(line.contains("the messages were published"), "{line}");
    let o = dashi(&["stat", &url, "--queue", "q", "--json"]);
    assert!(stdout(&o).contains("\"messages\":3"), "{}", stdout(&o));
    for args in [
        vec!["stat", &url],
        vec!["stat", &url, "--json"],
        vec!["bench", "memory://", "--messages", "100"],
        vec!["bench", "memory://", "--messages", "100", "--json"],
        vec!["torture", "memory://", "--seconds", "1", "--seed", "1"],
        vec![
            "torture",
            "memory://",
            "--seconds",
            "1",
            "--seed",
            "1",
            "--json",
        ],
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_dashi"))
            .args(&args)
            .stdout(full())
            .output()
            .unwrap();
        let line = one_line_error(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {line}");
        assert!(line.contains("writing to stdout"), "{line}");
    }
    // Many queues, and the reader gone before the first line.
    for i in 0..20 {
        let o = dashi(&["publish", &url, "--queue", &format!("q{i}"), "--body", "x"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args(["stat", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}
