//! The shape of a bench result, as text and as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use super::Workload;

/// One run's figures.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    /// What ran: "memory://", "crossbeam-channel", "kombu memory://".
    pub(crate) transport: String,
    pub(crate) messages: u64,
    pub(crate) size: usize,
    pub(crate) producers: usize,
    pub(crate) consumers: usize,
    pub(crate) elapsed: Duration,
    /// p50, p90, p99, p99.9, max in microseconds.
    pub(crate) latency_us: [f64; 5],
    /// How long a publish call took to return (confirmed at the transport's
    /// durability level): p50, p90, p99, p99.9, max in microseconds.
    pub(crate) confirm_us: Option<[f64; 5]>,
    /// Phased runs (`--phases`): how long publishing every message took
    /// (to the last confirm), then consuming and acking them all.
    pub(crate) publish_phase: Option<Duration>,
    pub(crate) consume_phase: Option<Duration>,
}

/// A peer that could not run, and why.
#[derive(Debug, Clone)]
pub(crate) struct Skipped {
    pub(crate) peer: String,
    pub(crate) reason: String,
}

impl Report {
    pub(crate) fn from_histogram(
        transport: impl Into<String>,
        w: &Workload,
        elapsed: Duration,
        h: &hdrhistogram::Histogram<u64>,
    ) -> Report {
        Report {
            transport: transport.into(),
            messages: w.messages,
            size: w.size,
            producers: w.producers,
            consumers: w.consumers,
            elapsed,
            latency_us: quantiles(h),
            confirm_us: None,
            publish_phase: None,
            consume_phase: None,
        }
    }

    /// Messages per second over a phase that took `d`.
    fn rate_over(&self, d: Option<Duration>) -> Option<f64> {
        d.map(|d| self.messages as f64 / d.as_secs_f64().max(1e-9))
    }

    /// Publishes per second in a phased run.
    pub(crate) fn publish_rate(&self) -> Option<f64> {
        self.rate_over(self.publish_phase)
    }

    /// Consume+acks per second in a phased run.
    pub(crate) fn consume_rate(&self) -> Option<f64> {
        self.rate_over(self.consume_phase)
    }

    pub(crate) fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.size as f64 / 1e6
    }

    fn json(&self) -> serde_json::Value {
        let [p50, p90, p99, p999, max] = self.latency_us;
        json!({
            "transport": self.transport,
            "messages": self.messages,
            "size": self.size,
            "producers": self.producers,
            "consumers": self.consumers,
            "msgs_per_sec": self.msgs_per_sec(),
            "mb_per_sec": self.mb_per_sec(),
            "latency_us": {"p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max},
            "confirm_us": self.confirm_us.map(|[p50, p90, p99, p999, max]| {
                json!({"p50": p50, "p90": p90, "p99": p99, "p999": p999, "max": max})
            }),
            "publish_msgs_per_sec": self.publish_rate(),
            "consume_msgs_per_sec": self.consume_rate(),
        })
    }
}

/// p50, p90, p99, p99.9 and max of a histogram.
pub(crate) fn quantiles(h: &hdrhistogram::Histogram<u64>) -> [f64; 5] {
    let q = |p: f64| h.value_at_quantile(p) as f64;
    [q(0.5), q(0.9), q(0.99), q(0.999), h.max() as f64]
}

/// `ratio` = dashi's throughput / the peer's (above 1: dashi is faster).
pub(crate) fn json(dashi: &Report, peers: &[Report], skipped: &[Skipped], compare: bool) -> String {
    let mut v = dashi.json();
    if compare {
        v["peers"] = peers
            .iter()
            .map(|p| {
                let mut o = p.json();
                o["ratio"] = json!(dashi.msgs_per_sec() / p.msgs_per_sec().max(1e-9));
                if let (Some(d), Some(c)) = (dashi.confirm_us, p.confirm_us) {
                    // Above 1: dashi's publish takes longer to confirm.
                    o["confirm_p50_ratio"] = json!(d[0] / c[0].max(1e-9));
                }
                if let (Some(d), Some(p)) = (dashi.publish_rate(), p.publish_rate()) {
                    o["publish_ratio"] = json!(d / p.max(1e-9));
                }
                if let (Some(d), Some(p)) = (dashi.consume_rate(), p.consume_rate()) {
                    o["consume_ratio"] = json!(d / p.max(1e-9));
                }
                o
            })
            .collect();
        v["skipped"] = skipped
            .iter()
            .map(|s| json!({"peer": s.peer, "reason": s.reason}))
            .collect();
    }
    v.to_string()
}

fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.0} ")
    }
}

pub(crate) fn human(w: &Workload, dashi: &Report, peers: &[Report]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} messages x {} B, {} producer(s), {} consumer(s){}, acks",
        w.messages,
        w.size,
        w.producers,
        w.consumers,
        if w.priorities > 1 {
            format!(", {} priorities", w.priorities)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "{:<26} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "run", "msgs/s", "MB/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "ratio"
    );
    for (r, ratio) in std::iter::once((dashi, None)).chain(
        peers
            .iter()
            .map(|p| (p, Some(dashi.msgs_per_sec() / p.msgs_per_sec().max(1e-9)))),
    ) {
        let [p50, p90, p99, p999, max] = r.latency_us;
        let _ = writeln!(
            s,
            "{:<26} {:>12} {:>10.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            r.transport,
            format!("{}msg/s", rate(r.msgs_per_sec())),
            r.mb_per_sec(),
            p50,
            p90,
            p99,
            p999,
            max,
            ratio.map_or("".into(), |x| format!("{x:.2}x"))
        );
    }
    for r in std::iter::once(dashi).chain(peers) {
        if let Some([p50, p90, p99, p999, max]) = r.confirm_us {
            let _ = writeln!(
                s,
                "{:<26} confirm (publish returns) p50 {p50} µs, p90 {p90}, p99 {p99}, p99.9 {p999}, max {max}",
                r.transport
            );
        }
    }
    if dashi.publish_phase.is_some() {
        phase_table(&mut s, dashi, peers);
    }
    if !peers.is_empty() {
        let _ = writeln!(
            s,
            "ratio = dashi msgs/s ÷ the peer's, same run, same machine"
        );
    }
    s
}

/// Phased runs: each side's rate alone, and dashi's against each peer's.
fn phase_table(s: &mut String, dashi: &Report, peers: &[Report]) {
    let _ = writeln!(
        s,
        "phases (everything published, then everything consumed and acked):"
    );
    let _ = writeln!(
        s,
        "{:<26} {:>14} {:>8} {:>18} {:>8}",
        "run", "publish/s", "ratio", "consume+ack/s", "ratio"
    );
    let ratio = |d: Option<f64>, p: Option<f64>| match (d, p) {
        (Some(d), Some(p)) => format!("{:.2}x", d / p.max(1e-9)),
        _ => String::new(),
    };
    let shown = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{}msg/s", rate(x)));
    let _ = writeln!(
        s,
        "{:<26} {:>14} {:>8} {:>18} {:>8}",
        dashi.transport,
        shown(dashi.publish_rate()),
        "",
        shown(dashi.consume_rate()),
        ""
    );
    for p in peers {
        let _ = writeln!(
            s,
            "{:<26} {:>14} {:>8} {:>18} {:>8}",
            p.transport,
            shown(p.publish_rate()),
            ratio(dashi.publish_rate(), p.publish_rate()),
            shown(p.consume_rate()),
            ratio(dashi.consume_rate(), p.consume_rate())
        );
    }
}
