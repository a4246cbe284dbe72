//! `dashi publish`.

use crate::output::out;
use std::collections::VecDeque;

use bytes::Bytes;
use dashi::{ChannelOptions, Confirm, Headers, Message};

use crate::args::{Kind, PublishArgs};
use crate::connect::connect;
use crate::declare::{declare, parse_headers};

/// The largest `--size` accepted (a body is built in memory).
const MAX_SIZE: usize = 1 << 30;

/// A body of `n` bytes, or a one-line error when `n` is out of range or the
/// memory is not there (never an abort).
fn body_of(n: usize) -> Result<Vec<u8>, String> {
    if n > MAX_SIZE {
        return Err(format!(
            "--size {n} is too large (at most {MAX_SIZE} bytes)"
        ));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| format!("--size {n}: not enough memory for the body"))?;
    v.resize(n, b'x');
    Ok(v)
}

pub(crate) fn run(a: PublishArgs) -> Result<(), String> {
    let headers = parse_headers(&a.headers)?;
    let body: Bytes = match (&a.size, &a.body, &a.body_file) {
        (Some(n), _, _) => Bytes::from(body_of(*n)?),
        (_, Some(text), _) => Bytes::from(text.clone()),
        (_, _, Some(path)) => std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| format!("reading --body-file {}: {e}", path.display()))?,
        _ => Bytes::new(),
    };
    let exchange = a.topology.exchange.clone().unwrap_or_default();
    let routing_key = match (&a.routing_key, &a.queue) {
        (Some(rk), _) => rk.clone(),
        (None, Some(q)) if exchange.is_empty() => q.clone(),
        _ => String::new(),
    };
    let conn = connect(&a.url)?;
    let ch = conn
        .channel_with(ChannelOptions::new().confirm_window(a.pipeline as usize))
        .map_err(|e| e.to_string())?;
    let binding_args = if a.topology.kind == Kind::Headers {
        headers.clone()
    } else {
        Headers::new()
    };
    declare(
        &ch,
        &a.topology,
        a.queue.as_deref(),
        &routing_key,
        binding_args,
    )?;
    let dropped_before = conn.stats().counters().dropped_unroutable;
    let producer = ch.producer().with_exchange(exchange.clone());
    // What a failure says: which message failed, and what became of the
    // others (pipelined, later ones were on their way too: they are waited
    // for and counted, so the line never reads as "this many stored").
    let failed =
        |i: u64, e: dashi::PublishError, confirmed: u64, rest: VecDeque<(u64, Confirm)>| {
            let (mut ok, mut not, mut sent) = (confirmed, 0u64, i + 1);
            for (n, c) in rest {
                sent = sent.max(n + 1);
                match c.wait() {
                    Ok(()) => ok += 1,
                    Err(_) => not += 1,
                }
            }
            let mut line = format!(
                "publish of message {} of {} failed: {e} ({ok} other{} confirmed",
                i + 1,
                a.count,
                if ok == 1 { "" } else { "s" }
            );
            if not > 0 {
                line.push_str(&format!(", {not} failed too"));
            }
            if sent < a.count {
                line.push_str(&format!("; none after message {sent} was sent"));
            }
            line.push(')');
            line
        };
    // Pipelined: up to `pipeline` publishes await their confirm at once.
    let mut in_flight: VecDeque<(u64, Confirm)> = VecDeque::new();
    let mut confirmed = 0u64;
    for i in 0..a.count {
        let mut m = Message::new(body.clone());
        m.properties.headers = headers.clone();
        m.properties.content_type = a.content_type.clone();
        m.properties.priority = a.priority;
        if a.pipeline == 1 {
            let r = if a.mandatory {
                producer.publish_mandatory(m, &routing_key)
            } else {
                producer.publish(m, &routing_key)
            };
            match r {
                Ok(()) => confirmed += 1,
                Err(e) => return Err(failed(i, e, confirmed, VecDeque::new())),
            }
            continue;
        }
        if in_flight.len() >= a.pipeline as usize {
            let (n, c) = in_flight.pop_front().expect("not empty");
            match c.wait() {
                Ok(()) => confirmed += 1,
                Err(e) => return Err(failed(n, e, confirmed, std::mem::take(&mut in_flight))),
            }
        }
        match ch.publish_async(m, &exchange, &routing_key, a.mandatory) {
            Ok(c) => in_flight.push_back((i, c)),
            Err(e) => return Err(failed(i, e, confirmed, std::mem::take(&mut in_flight))),
        }
    }
    while let Some((n, c)) = in_flight.pop_front() {
        match c.wait() {
            Ok(()) => confirmed += 1,
            Err(e) => return Err(failed(n, e, confirmed, std::mem::take(&mut in_flight))),
        }
    }
    let unroutable = conn.stats().counters().dropped_unroutable - dropped_before;
    out!(
        "published {} message{} to exchange {:?} with routing key {:?}{}",
        a.count,
        if a.count == 1 { "" } else { "s" },
        exchange,
        routing_key,
        if unroutable > 0 {
            format!(" ({unroutable} matched no queue and were dropped)")
        } else {
            String::new()
        }
    )
    .map_err(|e| format!("{e} (the messages were published)"))
}
