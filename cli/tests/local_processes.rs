//! `dashi` processes sharing a local:// store: a consumer waiting in one
//! process is woken by a publish from another; a consumer that exits without
//! acking (as a crashed one would) leaves its message to the next consumer,
//! flagged redelivered; `stat` sees what other processes did.

mod common;

use common::*;
use dashi_test_support::TestDir;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn store(_tag: &str) -> (TestDir, String) {
    let dir = TestDir::new();
    let url = format!("local://{}?segment_size=1M", dir.display());
    (dir, url)
}

#[test]
fn a_consumer_wakes_for_another_process_publish() {
    let (_dir, url) = store("wake");
    // Declare the queue first so the consumer and the publisher agree on it.
    let o = dashi(&["publish", &url, "--queue", "jobs", "--count", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let consumer = Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args([
            "consume",
            &url,
            "--queue",
            "jobs",
            "--count",
            "2",
            "--timeout",
            "20",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let o = dashi(&[
        "publish", &url, "--queue", "jobs", "--count", "2", "--body", "hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = consumer.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "woke late: {:?}",
        t0.elapsed()
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!(l["body"], "hi");
        assert_eq!(l["queue"], "jobs");
        assert_eq!(l["redelivered"], false);
    }
}

#[test]
fn an_unacked_message_of_a_dead_consumer_is_redelivered() {
    let (_dir, url) = store("crash");
    let o = dashi(&["publish", &url, "--queue", "q", "--body", "important"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = &consume_json(&url, &["--count", "1", "--leave-unacked"])[0];
    assert_eq!(
        (first["body"].as_str(), first["redelivered"].as_bool()),
        (Some("important"), Some(false))
    );
    // The consumer process has ended: the next process to open the store
    // (alone with it) returns its delivery to the queue.
    let o = dashi(&["stat", &url, "--queue", "q", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (&v["queues"][0]["messages"], &v["queues"][0]["unacked"]),
        (&serde_json::json!(1), &serde_json::json!(0)),
        "{v}"
    );
    let again = &consume_json(&url, &["--count", "1", "--timeout", "10"])[0];
    assert_eq!(
        (again["body"].as_str(), again["redelivered"].as_bool()),
        (Some("important"), Some(true))
    );
    let o = dashi(&["stat", &url, "--queue", "q", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (
            v["queues"][0]["messages"].as_u64(),
            v["queues"][0]["unacked"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

/// `dashi consume URL --queue q --json EXTRA...`, which must succeed: its
/// deliveries.
fn consume_json(url: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["consume", url, "--queue", "q", "--json"];
    args.extend_from_slice(extra);
    let o = dashi(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `consume --count N` takes exactly N off the queue although its stream
/// takes runs: a consumer that leaves them unacked and exits returns those
/// N (redelivered), and nothing else it might have taken.
#[test]
fn a_consumer_leaving_n_unacked_holds_no_more_than_n() {
    let (_dir, url) = store("count");
    let o = dashi(&["publish", &url, "--queue", "q", "--count", "40"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        consume_json(&url, &["--count", "3", "--leave-unacked"]).len(),
        3
    );
    let flags: Vec<bool> = consume_json(&url, &["--count", "40", "--timeout", "10"])
        .iter()
        .map(|d| d["redelivered"] == true)
        .collect();
    assert_eq!(flags.len(), 40);
    assert_eq!(flags.iter().filter(|&&r| r).count(), 3, "{flags:?}");
}

#[test]
fn stat_and_purge_see_other_processes_work_and_bad_local_urls_are_clear() {
    let (_dir, url) = store("stat");
    let o = dashi(&[
        "publish",
        &url,
        "--queue",
        "p",
        "--max-priority",
        "3",
        "--priority",
        "2",
        "--count",
        "5",
        "--size",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&["stat", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "local");
    assert_eq!(v["scope"], "store");
    let q = &v["queues"][0];
    assert_eq!(
        (
            q["name"].as_str(),
            q["messages"].as_u64(),
            q["bytes"].as_u64()
        ),
        (Some("p"), Some(5), Some(50))
    );
    assert_eq!(q["depth_by_lane"], serde_json::json!([0, 0, 5, 0]));
    let o = dashi(&["purge", &url, "--queue", "p"]);
    assert_eq!(stdout(&o).trim(), "purged 5 messages from \"p\"");
    // Redeclaring with other arguments is an error from another process too.
    let line = one_line_error(&dashi(&[
        "publish",
        &url,
        "--queue",
        "p",
        "--max-priority",
        "9",
    ]));
    assert!(line.contains("precondition failed"), "{line}");
    for bad in [
        "local://relative/dir",
        "local:///tmp/x?fsync=sometimes",
        "local:///tmp/x?segment_size=12",
        "local:///tmp/x?nope=1",
    ] {
        one_line_error(&dashi(&["stat", bad]));
    }
}

/// Readers create nothing: `stat`, `consume` and `purge` on a directory that
/// holds no store are an error and leave it as it was, and `stat` on a store
/// retention emptied recreates no segment.
#[test]
fn reading_commands_create_nothing() {
    let dir = TestDir::new();
    let fresh = dir.child("fresh");
    let url = format!("local://{}?segment_size=64K", fresh.display());
    for cmd in [
        vec!["stat", &url],
        vec!["consume", &url, "--queue", "q", "--timeout", "0"],
        vec!["purge", &url, "--queue", "q"],
    ] {
        let line = one_line_error(&dashi(&cmd));
        assert!(line.contains("no dashi store at"), "{cmd:?}: {line}");
        assert!(!fresh.exists(), "{cmd:?} created {}", fresh.display());
    }
    // A store whose queue rolled over segments and was drained.
    let o = dashi(&[
        "publish", &url, "--queue", "q", "--count", "400", "--size", "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "400",
        "--timeout",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let segments =
        || dashi_test_support::files_under(&fresh, |p| p.extension().is_some_and(|x| x == "seg"));
    let before = segments();
    let o = dashi(&["stat", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(segments(), before, "stat created a segment");
}

/// A consumer of an existing queue uses it as it is (AMQP's passive
/// declare); only a flag given explicitly is checked, in one line naming the
/// argument and both values.
#[test]
fn consume_uses_an_existing_queue_as_it_is() {
    let (_dir, url) = store("passive");
    let o = dashi(&[
        "publish",
        &url,
        "--queue",
        "lq",
        "--max-priority",
        "9",
        "--priority",
        "7",
        "--body",
        "hello",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = one_line_error(&dashi(&[
        "consume",
        &url,
        "--queue",
        "lq",
        "--max-priority",
        "0",
        "--timeout",
        "0",
    ]));
    assert!(
        line.contains("queue \"lq\" has max_priority 9, not 0"),
        "{line}"
    );
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "lq",
        "--count",
        "1",
        "--timeout",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("hello"));
}

/// A user without access to a store gets one line naming the file it could
/// not use (run as `nobody` through `setpriv`; skipped where that is not
/// possible).
#[test]
fn a_permission_error_names_the_file() {
    let (dir, url) = store("perm");
    let o = dashi(&["publish", &url, "--queue", "q"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_dashi"))
        .args(["stat", &url])
        .output();
    let o = match run {
        Ok(o) if !String::from_utf8_lossy(&o.stderr).contains("setpriv:") => o,
        other => {
            eprintln!("skipped: cannot run as another user here ({other:?})");
            return;
        }
    };
    let line = one_line_error(&o);
    assert!(line.contains("Permission denied"), "{line}");
    assert!(line.contains(&*dir.display().to_string()), "{line}");
}

/// A segment too damaged to read is set aside by the next opener (the rest
/// of the store opens) and `stat` says so, naming the file.
#[test]
fn stat_reports_what_recovery_set_aside() {
    let (dir, url) = store("setaside");
    for q in ["q", "other"] {
        let o = dashi(&["publish", &url, "--queue", q, "--count", "3"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let seg = dir.child("q/q/0000000000000001/lane-0/0000000000000000.seg");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(b"XX", 0).unwrap();
    }
    let o = dashi(&["stat", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("set aside by recovery: 1 damaged segment file(s)"),
        "{out}"
    );
    assert!(out.contains("damaged/0000000000000000.seg"), "{out}");
    let o = dashi(&["stat", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        v["set_aside"]["damaged_segments"].as_array().unwrap().len(),
        1
    );
    let other = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "other")
        .unwrap();
    assert_eq!(other["messages"], 3);
}

/// A queue whose files were replaced by the wrong kind of file: `stat`
/// lists it as unusable with the reason (it showed zero figures, as for an
/// empty queue), `--json` says the same, and `stat --queue` of it fails
/// with the reason; the other queue's figures are read as before.
#[test]
fn stat_says_which_queue_cannot_be_used_and_why() {
    let (dir, url) = store("unusable");
    for q in ["q", "other"] {
        let o = dashi(&["publish", &url, "--queue", q, "--count", "3"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let inc = dir.child("q/q/0000000000000001");
    std::fs::remove_dir_all(&inc).unwrap();
    std::fs::write(&inc, b"in the way").unwrap();
    let o = dashi(&["stat", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let row = out
        .lines()
        .find(|l| l.starts_with("q "))
        .unwrap_or_else(|| panic!("no row for q: {out}"));
    assert!(
        row.contains("unusable: queue \"q\" cannot be used"),
        "{row}"
    );
    assert!(row.contains(&*inc.display().to_string()), "{row}");
    let other = out.lines().find(|l| l.starts_with("other ")).unwrap();
    assert!(!other.contains("unusable"), "{other}");
    assert_eq!(other.split_whitespace().nth(1), Some("3"), "{other}");
    let o = dashi(&["stat", &url, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let find = |n: &str| {
        v["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == n)
            .unwrap()
            .clone()
    };
    assert!(
        find("q")["unusable"]
            .as_str()
            .is_some_and(|w| w.contains("cannot be used")),
        "{v}"
    );
    assert_eq!(find("other")["unusable"], serde_json::Value::Null);
    assert_eq!(find("other")["messages"], 3);
    // The warning every open of this store prints, then the error.
    let o = dashi(&["stat", &url, "--queue", "q"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].trim_start().starts_with("WARN"), "{err}");
    assert!(
        lines[1].starts_with("dashi: queue \"q\" cannot be used"),
        "{err}"
    );
}

/// A segment file deleted by hand: `consume` takes every message of the
/// other segments and says on stderr which segment it skipped (it
/// skipped them without a word: the warning went to no subscriber).
#[test]
fn consume_says_which_segment_it_skipped() {
    let dir = TestDir::new();
    let url = format!("local://{}?segment_size=64K", dir.display());
    let o = dashi(&[
        "publish", &url, "--queue", "q", "--count", "2000", "--size", "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lane = dir.child("q/q/0000000000000001/lane-0");
    let mut segs: Vec<_> = std::fs::read_dir(&lane)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "{segs:?}");
    std::fs::remove_file(&segs[1]).unwrap();
    let o = dashi(&["consume", &url, "--queue", "q", "--timeout", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let taken = stdout(&o).lines().count();
    assert!(taken > 0 && taken < 2000, "{taken} taken");
    let err = stderr(&o);
    assert!(
        err.contains("segment missing from its lane") && err.contains("seq=1"),
        "{err}"
    );
    // Once from recovery (the first opener walks the lane) and once from
    // the consumer's lane, however many walks pass the gap (it said so at
    // each walk).
    assert!(err.lines().count() <= 2, "{err}");
    assert!(
        err.lines()
            .all(|l| l.trim_start().starts_with("WARN") && l.ends_with("seq=1")),
        "{err}"
    );
}

/// `publish --pipeline N` on a store with `fsync=always`: every message is
/// confirmed (the command exits 0 only then) and another process reads them
/// all, in order.
#[test]
fn a_pipelined_publish_is_confirmed_and_read_by_another_process() {
    let (_dir, url) = store("pipeline");
    let url = format!("{url}&fsync=always");
    let o = dashi(&[
        "publish",
        &url,
        "--queue",
        "q",
        "--count",
        "300",
        "--body",
        "m",
        "--pipeline",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("published 300 messages"));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "300",
        "--timeout",
        "10",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 300);
}

/// `--leave-unacked --count N` leaves exactly N unacked also past the
/// prefetch window (it kept every delivery unacked, the window filled at
/// its size, and the command waited for ever); a `--prefetch` smaller than
/// `--count` is refused up front.
#[test]
fn leave_unacked_takes_its_count_past_the_prefetch_window() {
    let (_d, url) = store("leave-past-window");
    let o = dashi(&[
        "publish", &url, "--queue", "q", "--count", "1500", "--body", "x",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "1200",
        "--leave-unacked",
        "--timeout",
        "30",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 1200);
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "5",
        "--prefetch",
        "2",
        "--leave-unacked",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = one_line_error(&o);
    assert!(line.contains("--prefetch 2"), "{line}");
}

/// A segment cut short (`truncate`) under a running consumer: its next look
/// at the lost pages ends it with one line and exit status 1, not a `SIGBUS`
/// (status 135 before); a new process that opens the short file says which
/// file and why; once every process is gone, the next open sets it aside.
#[test]
fn a_segment_cut_short_under_a_consumer_ends_it_with_one_line() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = TestDir::new();
    let url = format!("local://{}?segment_size=64K", dir.display());
    let o = dashi(&[
        "publish", &url, "--queue", "q", "--count", "30", "--size", "1000",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args(["consume", &url, "--queue", "q", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // All 30 consumed: it now waits at the write segment's tail.
    let mut lines = std::io::BufReader::new(consumer.stdout.take().unwrap()).lines();
    for _ in 0..30 {
        lines.next().unwrap().unwrap();
    }
    let lane = std::fs::read_dir(dir.join("q/q"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap()
        .join("lane-0");
    let first = lane.join("0000000000000000.seg");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .unwrap()
        .set_len(4096)
        .unwrap();
    // A new process refuses the short file, naming it; or, if the
    // consumer has already ended, opens the store alone and sets it aside.
    let o = dashi(&["publish", &url, "--queue", "q", "--body", "late"]);
    let late = o.status.success();
    let e = stderr(&o);
    assert!(
        e.contains("0000000000000000.seg") && e.contains("the file has 4096"),
        "{e}"
    );
    assert!(
        o.status.code() == Some(1) || (o.status.success() && e.contains("set aside")),
        "{:?} {e}",
        o.status
    );
    // The consumer's next look (its upkeep runs at least every second)
    // meets the cut.
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = consumer.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the consumer never saw the cut"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut consumer.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(
        status.signal(),
        None,
        "killed by a signal: {status:?} {err}"
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("cut short"), "{err}");
    // Every process gone: the file is set aside, the queue works again.
    let o = dashi(&["publish", &url, "--queue", "q", "--body", "after"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(lane.join("damaged/0000000000000000.seg").exists());
    let want = if late { 2 } else { 1 };
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        &want.to_string(),
        "--timeout",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let bodies: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("body=").nth(1))
        .collect();
    let expected = if late {
        vec!["late", "after"]
    } else {
        vec!["after"]
    };
    assert_eq!(bodies, expected, "{out}");
}

/// A queue name or a body is anyone's input: printed raw, a name with a
/// newline forged a row of `stat`'s table, and escape sequences reached
/// the operator's terminal. They are shown as escapes; `--json` was
/// always escaped.
#[test]
fn names_and_bodies_reach_the_terminal_escaped() {
    let (_d, url) = store("escaped");
    let forged = "evil\nq                                 999999";
    let title = "\u{1b}]0;pwned\u{7}\u{1b}[2J";
    for (q, body) in [(forged, "x"), (title, "ring\u{7}\nbell")] {
        let o = dashi(&["publish", &url, "--queue", q, "--body", body]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = dashi(&["stat", &url]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("q ")),
        "a forged row: {text}"
    );
    assert!(text.contains("evil\\nq"), "{text}");
    let o = dashi(&["consume", &url, "--queue", title, "--count", "1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = stdout(&o);
    assert_eq!(line.lines().count(), 1, "{line:?}");
    assert!(
        line.contains("queue=\\u{1b}]0;pwned\\u{7}") && line.contains("body=ring\\u{7}\\nbell"),
        "{line}"
    );
}
