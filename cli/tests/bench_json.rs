//! `dashi bench`: JSON shape, the crossbeam-channel peer (and Kombu's when it
//! is importable) from the same run, ratios, the human table and the SVG chart.

mod common;

use common::*;
use dashi_test_support::TestDir;

fn check_run(v: &serde_json::Value, size: u64, messages: u64) {
    assert_eq!(v["producers"], 2);
    check_figures(v, size, messages);
}

fn check_figures(v: &serde_json::Value, size: u64, messages: u64) {
    assert_eq!(v["messages"], messages);
    assert_eq!(v["size"], size);
    assert_eq!(v["consumers"], 2);
    assert!(v["msgs_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["mb_per_sec"].as_f64().unwrap() > 0.0, "{v}");
    let l = &v["latency_us"];
    let p: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| {
            l[*k]
                .as_f64()
                .unwrap_or_else(|| panic!("latency_us.{k} in {v}"))
        })
        .collect();
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles not ordered: {p:?}"
    );
    assert!(p[0] >= 1.0);
}

#[test]
fn compare_json_reports_dashi_and_crossbeam_from_one_run() {
    let o = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "3000",
        "--size",
        "128",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--priorities",
        "4",
        "--compare",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "dashi memory://");
    check_run(&v, 128, 3000);
    let peers = v["peers"].as_array().unwrap();
    let cb = peers
        .iter()
        .find(|p| p["transport"] == "crossbeam-channel")
        .expect("crossbeam-channel peer");
    check_run(cb, 128, 3000);
    let ratio = cb["ratio"].as_f64().unwrap();
    let expect = v["msgs_per_sec"].as_f64().unwrap() / cb["msgs_per_sec"].as_f64().unwrap();
    assert!((ratio - expect).abs() < 1e-6 * expect.max(1.0));
    let kombu_importable = std::process::Command::new("python3")
        .args(["-c", "import kombu"])
        .status()
        .is_ok_and(|s| s.success());
    let kombu = peers.iter().find(|p| {
        p["transport"]
            .as_str()
            .is_some_and(|t| t.starts_with("kombu "))
    });
    if kombu_importable {
        let k = kombu.expect("kombu peer when kombu is importable");
        check_run(k, 128, 3000);
        assert!(k["ratio"].as_f64().unwrap() > 0.0);
    } else {
        assert!(kombu.is_none());
        let skipped = v["skipped"].as_array().unwrap();
        assert!(skipped.iter().any(|s| s["reason"]
            .as_str()
            .unwrap()
            .contains("kombu is not importable")));
        assert!(stderr(&o).contains("kombu is not importable"));
    }
}

#[test]
fn plain_run_json_has_no_peers_and_the_table_reads_well() {
    let o = dashi(&["bench", "memory://", "--messages", "1000", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v.get("peers").is_none());
    assert_eq!(v["producers"], 1);
    let o = dashi(&["bench", "memory://", "--messages", "1000"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(
        text.contains("dashi memory://") && text.contains("msg/s"),
        "{text}"
    );
}

#[test]
fn plot_writes_an_svg_chart() {
    let dir = TestDir::new();
    let path = dir.join("chart.svg");
    let o = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "1000",
        "--compare",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
    assert!(svg.contains("crossbeam-channel") && svg.contains("dashi memory://"));
    let bad = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "10",
        "--plot",
        "/nonexistent-dir/x.svg",
    ]);
    let line = one_line_error(&bad);
    // Said before the runs, not after them.
    assert!(line.contains("cannot write there"), "{line}");
    assert!(stdout(&bad).is_empty(), "{}", stdout(&bad));
    // Checking leaves nothing where a run that fails would not write.
    let unused = dir.join("unused.svg");
    let o = dashi(&["bench", "nope://", "--plot", unused.to_str().unwrap()]);
    one_line_error(&o);
    assert!(!unused.exists());
}

#[test]
fn local_bench_compares_with_raw_fdatasync_when_syncing() {
    let dir = TestDir::new();
    let url = format!(
        "local://{}?fsync=always&segment_size=1M",
        dir.child("sync").display()
    );
    let o = dashi(&[
        "bench",
        &url,
        "--messages",
        "300",
        "--size",
        "512",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--compare",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "dashi local://");
    check_run(&v, 512, 300);
    assert!(v["confirm_us"]["p50"].as_f64().unwrap() > 0.0);
    // One raw loop (what one durable write costs) and one per producer.
    let one = &v["peers"][0];
    assert_eq!(one["transport"], "write+fdatasync (1 loop)");
    let two = &v["peers"][1];
    assert_eq!(two["transport"], "write+fdatasync (2 loops)");
    assert_eq!(one["producers"], 1);
    assert_eq!(two["producers"], 2);
    for raw in [one, two] {
        check_figures(raw, 512, 300);
        assert!(raw["ratio"].as_f64().unwrap() > 0.0);
        assert!(raw["confirm_p50_ratio"].as_f64().unwrap() > 0.0);
        assert_eq!(raw["confirm_us"], raw["latency_us"]);
    }
    // Without syncing there is no durability limit to compare with.
    let url = format!("local://{}?segment_size=1M", dir.child("nosync").display());
    let o = dashi(&["bench", &url, "--messages", "300", "--compare", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    // The in-memory limit instead, in the same run, and the same engine
    // on memory:// (no log, one process).
    assert_eq!(v["peers"].as_array().unwrap().len(), 2);
    assert_eq!(v["peers"][0]["transport"], "crossbeam-channel");
    assert_eq!(v["peers"][1]["transport"], "dashi memory://");
    for p in v["peers"].as_array().unwrap() {
        assert_eq!(p["messages"], 300);
        assert_eq!(p["size"], v["size"]);
        assert!(p["msgs_per_sec"].as_f64().unwrap() > 0.0, "{p}");
        assert!(p["ratio"].as_f64().unwrap() > 0.0, "{p}");
    }
    assert!(v["skipped"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("fsync=never"));
}

#[test]
fn consumers_can_run_in_their_own_processes() {
    let dir = TestDir::new();
    let url = format!("local://{}?segment_size=1M", dir.display());
    let o = dashi(&[
        "bench",
        &url,
        "--messages",
        "2000",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--consumer-processes",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["transport"], "dashi local:// (consumer processes)");
    check_run(&v, 64, 2000);
}

#[test]
fn rate_paces_the_producers() {
    // 200 messages at 1000/s cannot finish in less than about 0.2 s.
    let o = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "200",
        "--rate",
        "1000",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let rate = v["msgs_per_sec"].as_f64().unwrap();
    assert!(rate < 1200.0, "paced run went at {rate} msgs/s");
    for bad in ["0", "-5", "nan"] {
        let o = dashi(&["bench", "memory://", "--rate", bad]);
        one_line_error(&o);
    }
}

/// A phased run's figures: both phase rates, and their sum of times is the
/// run's.
fn check_phases(v: &serde_json::Value) -> (f64, f64) {
    let p = v["publish_msgs_per_sec"]
        .as_f64()
        .unwrap_or_else(|| panic!("publish rate in {v}"));
    let c = v["consume_msgs_per_sec"]
        .as_f64()
        .unwrap_or_else(|| panic!("consume rate in {v}"));
    assert!(p > 0.0 && c > 0.0, "{v}");
    // Publishing and consuming one after the other: the whole run is
    // slower than either phase alone.
    let n = v["messages"].as_f64().unwrap();
    let whole = n / v["msgs_per_sec"].as_f64().unwrap();
    let parts = n / p + n / c;
    assert!(
        (whole - parts).abs() <= 0.05 * whole + 1e-3,
        "{whole} s vs {parts} s in {v}"
    );
    (p, c)
}

#[test]
fn phases_report_publish_and_consume_apart_for_dashi_and_its_peer() {
    let o = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "4000",
        "--producers",
        "2",
        "--consumers",
        "2",
        "--phases",
        "--compare",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let (dp, dc) = check_phases(&v);
    let cb = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["transport"] == "crossbeam-channel")
        .expect("crossbeam-channel peer")
        .clone();
    let (cp, cc) = check_phases(&cb);
    let close = |a: f64, b: f64| (a - b).abs() < 1e-6 * b.max(1.0);
    assert!(
        close(cb["publish_ratio"].as_f64().unwrap(), dp / cp),
        "{cb}"
    );
    assert!(
        close(cb["consume_ratio"].as_f64().unwrap(), dc / cc),
        "{cb}"
    );
    // Without --phases there are no phase figures.
    let o = dashi(&["bench", "memory://", "--messages", "500", "--json"]);
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert!(v["publish_msgs_per_sec"].is_null() && v["consume_msgs_per_sec"].is_null());
    // The text report has the phase table.
    let o = dashi(&[
        "bench",
        "memory://",
        "--messages",
        "500",
        "--phases",
        "--compare",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("phases (everything published") && text.contains("consume+ack/s"),
        "{text}"
    );
    // Phases measure backlog, a paced run measures wake-ups: not both.
    one_line_error(&dashi(&[
        "bench",
        "memory://",
        "--phases",
        "--rate",
        "1000",
    ]));
}

#[test]
fn phases_with_consumer_processes_start_them_after_publishing() {
    let dir = TestDir::new();
    let url = format!("local://{}", dir.path().display());
    let o = dashi(&[
        "bench",
        &url,
        "--messages",
        "3000",
        "--consumers",
        "2",
        "--consumer-processes",
        "--phases",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    check_phases(&v);
    // Every message waited in the queue until the consumers started after
    // the last publish: the median one at least about half the publish
    // phase (consumers running alongside would take each in microseconds).
    let publish_us = 3000.0 / v["publish_msgs_per_sec"].as_f64().unwrap() * 1e6;
    let p50 = v["latency_us"]["p50"].as_f64().unwrap();
    assert!(
        p50 >= 0.3 * publish_us,
        "p50 {p50} µs, publishing {publish_us} µs: {v}"
    );
}
