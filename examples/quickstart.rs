//! Publishes a few messages through `memory://` and consumes them, printing
//! each step: a topic exchange, a priority queue, a push consumer driven by
//! `drain_events`, a requeue and the stats at the end.
//!
//! Run: `cargo run --example quickstart`

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashi::{ConsumerOptions, Exchange, Headers, Message, Queue};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let conn = dashi::connect("memory://quickstart")?;
    let ch = conn.channel()?;
    ch.exchange_declare(&Exchange::topic("events"))?;
    ch.queue_declare(&Queue::new("orders").with_max_priority(9))?;
    ch.queue_bind("orders", "events", "order.#", Headers::new())?;
    println!("declared topic exchange 'events' and queue 'orders' (priorities 0..=9), bound with 'order.#'");

    let producer = ch.producer().with_exchange("events");
    for (key, body, priority) in [
        ("order.created", "order 1 created", 1),
        ("order.paid", "order 1 paid", 5),
        ("order.created", "order 2 created (urgent)", 9),
        ("invoice.sent", "not for the orders queue", 0),
    ] {
        producer.publish(Message::new(body).with_priority(priority), key)?;
        println!("published {body:?} with key {key:?}, priority {priority}");
    }

    let seen = Arc::new(Mutex::new(0usize));
    let s = seen.clone();
    let _consumer = ch.consume(
        ConsumerOptions::new("orders").prefetch_count(10),
        move |d| {
            let mut n = s.lock().unwrap();
            *n += 1;
            let body = String::from_utf8_lossy(d.body()).into_owned();
            if *n == 1 {
                println!(
                    "consumed {body:?} (priority {}), rejecting it once to show a requeue",
                    d.priority()
                );
                d.reject(true).unwrap();
            } else {
                println!(
                    "consumed {body:?} (priority {}, redelivered: {}), acked",
                    d.priority(),
                    d.redelivered()
                );
                d.ack().unwrap();
            }
        },
    )?;
    while *seen.lock().unwrap() < 4 {
        conn.drain_events(Some(Duration::from_secs(1)))?;
    }

    let stats = conn.stats();
    let c = stats.counters();
    println!(
        "counters: published {}, routed {}, dropped (unroutable) {}, delivered {}, acked {}, rejected {}, redelivered {}",
        c.published, c.routed, c.dropped_unroutable, c.delivered, c.acked, c.rejected, c.redelivered
    );
    let q = stats.queue("orders").expect("declared above");
    println!(
        "queue 'orders': {} ready, {} unacked, {} consumer(s)",
        q.messages, q.unacked, q.consumers
    );
    Ok(())
}
