//! The `dashi` command on redis://: publish, stat from another process,
//! consume, and the bench with its Redis peers.

mod common;
use common::*;

use dashi_test_support::RedisServer;

#[test]
fn publish_stat_consume_across_processes() {
    let r = RedisServer::start();
    let url = r.url();
    let o = dashi(&[
        "publish",
        &url,
        "--queue",
        "jobs",
        "--max-priority",
        "9",
        "--priority",
        "7",
        "--count",
        "3",
        "--body",
        "hi",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Another process sees the queue on the server, with no declaration.
    let o = dashi(&["stat", &url, "--queue", "jobs", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "redis");
    assert_eq!(v["queues"][0]["messages"], 3);
    // dashi 7 is kombu 2, kept in kombu's most urgent list (shown at lane 9).
    assert_eq!(v["queues"][0]["depth_by_lane"][9], 3);
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "jobs",
        "--max-priority",
        "9",
        "--count",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(
            (l["body"].as_str(), l["priority"].as_u64()),
            (Some("hi"), Some(7))
        );
    }
    let o = dashi(&["stat", &url, "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let jobs = v["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "jobs");
    assert!(jobs.is_none_or(|q| q["messages"] == 0), "{v}");
    // An envelope nobody can deliver is set aside, and stat counts it.
    r.command(&["LPUSH", "junk", "not json"]).unwrap();
    let o = dashi(&["consume", &url, "--queue", "junk", "--timeout", "0.5"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "");
    let o = dashi(&["stat", &url, "--queue", "junk", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (&v["queues"][0]["messages"], &v["queues"][0]["garbage"]),
        (&serde_json::json!(0), &serde_json::json!(1)),
        "{v}"
    );
    let o = dashi(&["stat", &url, "--queue", "junk"]);
    assert!(
        stdout(&o).contains("1 set aside as garbage"),
        "{}",
        stdout(&o)
    );
    let line = one_line_error(&dashi(&["stat", "redis://127.0.0.1:1", "--json"]));
    assert!(line.contains("127.0.0.1:1"), "{line}");
    let line = one_line_error(&dashi(&["stat", "rediss://127.0.0.1:1"]));
    assert!(line.contains("not supported yet"), "{line}");
}

/// `dashi bench` on a fresh server (600 messages of 100 B, pipelined,
/// `--compare --json`, plus `extra`): the raw loop and (when importable)
/// Kombu ran beside dashi, and every delivery was acked before the
/// processes ended (dashi's one-way acks flushed when its connection
/// closed). Returns the report.
fn bench_json(extra: &[&str]) -> serde_json::Value {
    let r = RedisServer::start();
    let url = r.url();
    let mut args = vec![
        "bench",
        &url,
        "--messages",
        "600",
        "--size",
        "100",
        "--pipeline",
        "64",
        "--compare",
        "--json",
    ];
    args.extend_from_slice(extra);
    let o = dashi(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["messages"], 600);
    let peers = v["peers"].as_array().unwrap();
    assert!(
        peers
            .iter()
            .any(|p| p["transport"] == "raw LPUSH/RPOP pipelined"),
        "{v}"
    );
    let kombu_importable = std::process::Command::new("python3")
        .args(["-c", "import kombu, redis"])
        .status()
        .is_ok_and(|s| s.success());
    if kombu_importable {
        let k = peers
            .iter()
            .find(|p| {
                p["transport"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("kombu "))
            })
            .unwrap_or_else(|| panic!("a kombu peer: {v}"));
        assert_eq!(k["messages"], 600);
    }
    assert_eq!(r.command(&["EXISTS", "unacked"]).unwrap(), ":0");
    v
}

#[test]
fn bench_runs_with_the_raw_redis_limit_and_kombu() {
    let v = bench_json(&[]);
    assert!(v["publish_msgs_per_sec"].is_null(), "{v}");
}

#[test]
fn phased_bench_reports_publish_and_consume_apart_against_both_peers() {
    let v = bench_json(&["--phases"]);
    let rate = |r: &serde_json::Value, k: &str| {
        r[k].as_f64()
            .filter(|x| *x > 0.0)
            .unwrap_or_else(|| panic!("{k} in {r}"))
    };
    let (dp, dc) = (
        rate(&v, "publish_msgs_per_sec"),
        rate(&v, "consume_msgs_per_sec"),
    );
    for p in v["peers"].as_array().unwrap() {
        let (pp, pc) = (
            rate(p, "publish_msgs_per_sec"),
            rate(p, "consume_msgs_per_sec"),
        );
        let pr = p["publish_ratio"].as_f64().unwrap();
        let cr = p["consume_ratio"].as_f64().unwrap();
        assert!((pr - dp / pp).abs() < 1e-6 * pr.max(1.0), "{p}");
        assert!((cr - dc / pc).abs() < 1e-6 * cr.max(1.0), "{p}");
    }
}

/// `dashi consume` outlives a Redis restart: a server killed for a second
/// under a waiting consumer (longer than the engine's own quick retries)
/// is waited for, said once on stderr, and what is published after the
/// restart is consumed. It used to exit at the first refused connection.
#[test]
fn consume_waits_out_a_redis_restart_and_goes_on() {
    use std::process::{Command, Stdio};
    let mut r = RedisServer::start();
    let url = r.url();
    let o = dashi(&["publish", &url, "--queue", "rq", "--body", "before"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_dashi"))
        .args([
            "consume",
            &url,
            "--queue",
            "rq",
            "--count",
            "2",
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = dashi_test_support::ChildLines::of(&mut consumer);
    lines.until("body=before");
    r.kill();
    std::thread::sleep(std::time::Duration::from_secs(1));
    r.restart();
    let o = dashi(&["publish", &url, "--queue", "rq", "--body", "after"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Panics if the consumer ends first (it did, with the error).
    lines.until("body=after");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut consumer.stderr.take().unwrap(), &mut err).unwrap();
    assert!(consumer.wait().unwrap().success(), "{err}");
    assert!(
        err.contains("retrying") && err.contains("consuming again"),
        "{err}"
    );
}

/// `dashi purge` empties a queue another process declared (it refused
/// every queue it had not declared itself, that is every one).
#[test]
fn purge_empties_a_queue_another_process_declared() {
    let r = RedisServer::start();
    let url = r.url();
    let o = dashi(&[
        "publish", &url, "--queue", "pq", "--count", "3", "--body", "x",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&["purge", &url, "--queue", "pq"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("purged 3 messages"), "{}", stdout(&o));
    assert_eq!(r.command(&["LLEN", "pq"]).unwrap(), ":0");
}

/// A pipelined publish that fails says which message failed and how many
/// others were confirmed, having waited for the ones on their way: the
/// line used to name the failed one only ("publish 28 of 1000 failed"
/// with 54 stored), which reads as a count of what was stored.
#[test]
fn a_failed_pipelined_publish_counts_what_was_confirmed() {
    let r = RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let url = r.url();
    let o = dashi(&[
        "publish",
        &url,
        "--queue",
        "full",
        "--size",
        "1000",
        "--count",
        "100000",
        "--pipeline",
        "64",
    ]);
    assert!(!o.status.success());
    let line = stderr(&o);
    assert_eq!(line.trim_end().lines().count(), 1, "{line}");
    assert!(
        line.contains("publish of message ") && line.contains("OOM"),
        "{line}"
    );
    let confirmed: u64 = line
        .rsplit_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let stored: u64 = r
        .command(&["LLEN", "full"])
        .unwrap()
        .trim_start_matches(':')
        .parse()
        .unwrap();
    assert!(confirmed > 0, "{line}");
    assert_eq!(stored, confirmed, "refused ones are not stored: {line}");
}

/// A user not allowed to subscribe still consumes (by polling), and the
/// warning says what Redis said in one line: it printed the reply's frames
/// (`Ok([Integer(31), Error(...)])`).
#[test]
fn a_user_who_may_not_subscribe_is_told_in_one_plain_line() {
    let r = RedisServer::start();
    let acl = r
        .command(&[
            "ACL",
            "SETUSER",
            "nosub",
            "on",
            ">p",
            "~*",
            "resetchannels",
            "+@all",
            "-subscribe",
            "-psubscribe",
        ])
        .unwrap();
    assert_eq!(acl, "+OK");
    let url = format!("redis://nosub:p@127.0.0.1:{}/0?poll_interval=0.1", r.port());
    let o = dashi(&["publish", &r.url(), "--queue", "q", "--body", "hi"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = dashi(&[
        "consume",
        &url,
        "--queue",
        "q",
        "--count",
        "1",
        "--timeout",
        "5",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("body=hi"), "{}", stdout(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("subscribing failed"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(line.contains("NOPERM") && !line.contains("Ok(["), "{line}");
}
