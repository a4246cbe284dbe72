//! The Python binding (`bindings/python/dashi.py`, ctypes over this crate's
//! shared library) run by python3: every check on memory://, local:// and
//! local:// with fsync=always, and a Python producer whose messages the
//! `dashi` command-line tool (Rust, another process) and a Rust consumer in
//! this process read from the same local:// store.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dashi_test_support::TestDir;

mod common;

fn python(args: &[&str]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let lib = common::library();
    let o = Command::new("python3")
        .arg(root.join("bindings/python/test_dashi.py"))
        .args(args)
        .env("DASHI_LIB", lib)
        .output()
        .expect("python3 is installed");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && stdout.contains("ok") && stderr.is_empty(),
        "python3 test_dashi.py {args:?} failed ({}):\n{stdout}\n{stderr}",
        o.status
    );
}

#[test]
fn the_python_binding_passes_on_every_transport() {
    let store = TestDir::new();
    let plain = format!("local://{}", store.join("plain").display());
    let synced = format!("local://{}?fsync=always", store.join("synced").display());
    for url in ["memory://py", plain.as_str(), synced.as_str()] {
        python(&["check", url]);
    }
}

#[test]
fn a_python_producer_feeds_a_rust_consumer_through_one_store() {
    let store = TestDir::new();
    let url = format!("local://{}", store.display());
    python(&["produce", &url, "50"]);
    let conn = dashi::connect(&url).unwrap();
    let ch = conn.channel().unwrap();
    let mut got = Vec::new();
    while let Some(d) = ch.get("xq", Duration::from_millis(500)).unwrap() {
        got.push(String::from_utf8(d.body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    let want: Vec<String> = (0..50).map(|i| format!("m-{i}")).collect();
    assert_eq!(got, want);
}

#[test]
fn a_python_producer_feeds_the_dashi_cli_through_one_store() {
    let store = TestDir::new();
    let url = format!("local://{}", store.display());
    python(&["produce", &url, "30"]);
    let o = Command::new(common::cli())
        .args([
            "consume",
            &url,
            "--queue",
            "xq",
            "--count",
            "30",
            "--timeout",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bodies: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let start = l.find("\"body\":\"").expect("a body field") + 8;
            l[start..].split('"').next().unwrap().to_owned()
        })
        .collect();
    let want: Vec<String> = (0..30).map(|i| format!("m-{i}")).collect();
    assert_eq!(bodies, want);
}
