//! `dashi stat` and `dashi purge`.

use crate::output::out;
use dashi::{CounterSnapshot, QueueStats};
use serde_json::json;

use crate::args::{PurgeArgs, StatArgs};
use crate::connect::connect_existing;

fn queue_json(q: &QueueStats) -> serde_json::Value {
    json!({
        "name": q.name,
        "messages": q.messages,
        "depth_by_lane": q.depth_by_lane,
        "bytes": q.bytes,
        "unacked": q.unacked,
        "consumers": q.consumers,
        "garbage": q.garbage,
        "unusable": q.unusable,
    })
}

fn counters_json(c: &CounterSnapshot) -> serde_json::Value {
    json!({
        "published": c.published,
        "routed": c.routed,
        "dropped_unroutable": c.dropped_unroutable,
        "delivered": c.delivered,
        "acked": c.acked,
        "rejected": c.rejected,
        "redelivered": c.redelivered,
        "restored": c.restored,
        "expired": c.expired,
        "dead_lettered": c.dead_lettered,
        "dropped_overflow": c.dropped_overflow,
        "dropped_dead_letter": c.dropped_dead_letter,
    })
}

/// Which processes the figures cover, for `--json`.
fn scope(store_wide: bool) -> &'static str {
    if store_wide {
        "store"
    } else {
        "process"
    }
}

fn scope_text(store_wide: bool) -> &'static str {
    if store_wide {
        "store-wide (every process using the store; counters up to 100 ms behind)"
    } else {
        "this process only"
    }
}

/// What recovery set aside in a local:// store (`None` for other URLs or
/// when it cannot be listed).
fn local_set_aside(url: &str) -> Option<dashi::local::SetAside> {
    let first = dashi::spi::split_failover(url).ok()?.into_iter().next()?;
    let parsed = dashi::spi::ConnectUrl::parse(first).ok()?;
    (parsed.scheme == "local")
        .then(|| dashi::local::set_aside(std::path::Path::new(&parsed.path)).ok())
        .flatten()
}

pub(crate) fn run(a: StatArgs) -> Result<(), String> {
    let conn = connect_existing(&a.url)?;
    let stats = conn.stats();
    let queues = match &a.queue {
        Some(q) => vec![stats.queue(q).map_err(|e| e.to_string())?],
        None => stats
            .queues()
            .map_err(|e| format!("reading the queues: {e}"))?,
    };
    let counters = stats.counters();
    let set_aside = local_set_aside(&a.url);
    if a.json {
        let v = json!({
            "transport": conn.transport().scheme(),
            "queues": queues.iter().map(queue_json).collect::<Vec<_>>(),
            "counters": counters_json(&counters),
            "scope": scope(stats.store_wide()),
            "set_aside": set_aside.as_ref().map(|s| json!({
                "damaged_segments": s.damaged_segments.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
                "quarantine_files": s.quarantine_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            })),
        });
        out!("{v}")?;
        return Ok(());
    }
    out!(
        "{:<32} {:>10} {:>12} {:>9} {:>9}  depth by lane (priority:count)",
        "queue",
        "messages",
        "bytes",
        "unacked",
        "consumers"
    )?;
    for q in &queues {
        if let Some(why) = &q.unusable {
            out!(
                "{:<32} unusable: {}",
                crate::output::shown(&q.name),
                crate::output::shown(why)
            )?;
            continue;
        }
        let lanes: Vec<String> = q
            .depth_by_lane
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}:{n}"))
            .collect();
        out!(
            "{:<32} {:>10} {:>12} {:>9} {:>9}  {}",
            crate::output::shown(&q.name),
            q.messages,
            q.bytes,
            q.unacked,
            q.consumers,
            if lanes.is_empty() {
                "-".into()
            } else {
                lanes.join(" ")
            }
        )?;
        if q.garbage > 0 {
            out!("{:<32} {} set aside as garbage", "", q.garbage)?;
        }
    }
    if queues.is_empty() {
        out!("(no queues)")?;
    }
    out!("figures: {}", scope_text(stats.store_wide()))?;
    if let Some(s) =
        set_aside.filter(|s| !s.damaged_segments.is_empty() || !s.quarantine_files.is_empty())
    {
        out!(
            "set aside by recovery: {} damaged segment file(s), {} quarantine file(s) of corrupt records: {}",
            s.damaged_segments.len(),
            s.quarantine_files.len(),
            s.damaged_segments
                .iter()
                .chain(&s.quarantine_files)
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    let c = counters;
    out!(
        "counters: published {} routed {} dropped_unroutable {} delivered {} acked {} rejected {} \
         redelivered {} restored {} expired {} dead_lettered {} dropped_overflow {} dropped_dead_letter {}",
        c.published,
        c.routed,
        c.dropped_unroutable,
        c.delivered,
        c.acked,
        c.rejected,
        c.redelivered,
        c.restored,
        c.expired,
        c.dead_lettered,
        c.dropped_overflow,
        c.dropped_dead_letter
    )?;
    Ok(())
}

pub(crate) fn purge(a: PurgeArgs) -> Result<(), String> {
    let conn = connect_existing(&a.url)?;
    let ch = conn.channel().map_err(|e| e.to_string())?;
    let n = ch
        .queue_purge(&a.queue)
        .map_err(|e| format!("purging {:?}: {e}", a.queue))?;
    out!(
        "purged {n} message{} from {:?}",
        if n == 1 { "" } else { "s" },
        a.queue
    )?;
    Ok(())
}
