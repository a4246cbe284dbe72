//! Every error is one clear line on stderr and a non-zero exit; bad URLs,
//! unknown flags and bad values never panic.

mod common;
use common::*;

#[test]
fn bad_urls_are_one_line_errors() {
    for url in [
        "nope://x",
        "memory",
        "memory://a/b/c",
        "memory://x?bogus=1",
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

#[test]
fn passwords_never_reach_the_terminal() {
    let o = dashi(&["stat", "nope://user:hunter2@host"]);
    let line = one_line_error(&o);
    assert!(!line.contains("hunter2"), "{line}");
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
