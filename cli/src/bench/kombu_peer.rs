//! Kombu, the library users migrate from, doing the same work through
//! `python3` (when kombu is importable; otherwise the harness says so).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Report, Skipped, Workload};

const SCRIPT: &str = include_str!("kombu_peer.py");

fn skipped(peer: &str, reason: impl Into<String>) -> Skipped {
    Skipped {
        peer: peer.to_owned(),
        reason: reason.into(),
    }
}

/// `url` without its credentials, for reports.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

/// Runs the Kombu peer on `kombu_url`; `Err` says why it was skipped.
pub(crate) fn run(w: &Workload, kombu_url: &str) -> Result<Report, Skipped> {
    let peer = format!("kombu {}", shown(kombu_url));
    let probe = Command::new("python3")
        .args(["-c", "import kombu"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Err(e) => return Err(skipped(&peer, format!("python3 could not be run ({e})"))),
        Ok(s) if !s.success() => {
            return Err(skipped(
                &peer,
                "kombu is not importable by python3 (pip install kombu)",
            ))
        }
        Ok(_) => {}
    }
    let mut child = Command::new("python3")
        .arg("-")
        .arg(kombu_url)
        .args([
            w.messages.to_string(),
            w.size.to_string(),
            w.producers.to_string(),
            w.consumers.to_string(),
            w.priorities.to_string(),
            u8::from(w.phased).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| skipped(&peer, format!("python3 could not be started ({e})")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(SCRIPT.as_bytes())
            .map_err(|e| skipped(&peer, format!("writing the script to python3: {e}")))?;
    }
    // Kombu's memory transport moves ~10^5 messages/s: allow for it generously.
    let limit = Duration::from_secs(60 + w.messages / 2_000);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(skipped(&peer, format!("did not finish within {limit:?}")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(skipped(&peer, format!("waiting for python3: {e}"))),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let v: serde_json::Value = serde_json::from_str(out.trim()).map_err(|_| {
        let last = err.lines().last().unwrap_or("no output").to_owned();
        skipped(&peer, format!("python3 exited with {status}: {last}"))
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(skipped(&peer, format!("kombu failed: {e}")));
    }
    let num = |k: &str| v["latency_us"][k].as_f64().unwrap_or(0.0);
    let elapsed = v["elapsed_s"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .ok_or_else(|| skipped(&peer, "kombu reported no elapsed time"))?;
    let version = v["kombu_version"].as_str().unwrap_or("?");
    Ok(Report {
        transport: format!("kombu {version} {}", shown(kombu_url)),
        messages: w.messages,
        size: w.size,
        producers: w.producers,
        consumers: w.consumers,
        elapsed: Duration::from_secs_f64(elapsed),
        latency_us: [num("p50"), num("p90"), num("p99"), num("p999"), num("max")],
        confirm_us: None,
        publish_phase: v["publish_s"].as_f64().map(Duration::from_secs_f64),
        consume_phase: v["publish_s"]
            .as_f64()
            .map(|p| Duration::from_secs_f64((elapsed - p).max(0.0))),
    })
}
