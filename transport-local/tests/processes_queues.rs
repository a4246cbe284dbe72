//! Several processes publishing and consuming the same queue at once, through
//! the whole transport: every message is delivered exactly once, each
//! producer's messages keep their order within a priority lane, and a backlog
//! left by producer processes is drained strictly by priority.

use dashi_test_support::TestDir;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_engine::Connection;

const CHILD: &str = "DASHI_QUEUES_CHILD";
const STOP: &str = "stop";
const PER_PRODUCER: u32 = 1500;

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn connect(d: &Path) -> Connection {
    let url = format!("local://{}?segment_size=256K", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn declare(c: &Connection) {
    c.channel()
        .unwrap()
        .queue_declare(&Queue::new("q").with_max_priority(2))
        .unwrap();
}

/// Child: `produce,<dir>,<id>` publishes `PER_PRODUCER` messages `<id>-<i>`
/// with priority `i % 3`; `consume,<dir>` takes messages one by one until a
/// stop message, printing `<body> <priority>` for each.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let parts: Vec<&str> = spec.split(',').collect();
    let conn = connect(Path::new(parts[1]));
    declare(&conn);
    let ch = conn.channel().unwrap();
    match parts[0] {
        "produce" => {
            let id = parts[2];
            let p = ch.producer();
            for i in 0..PER_PRODUCER {
                let m = Message::new(format!("{id}-{i}")).with_priority((i % 3) as u8);
                p.publish(m, "q").unwrap();
            }
        }
        "consume" => loop {
            let d = ch
                .get("q", Duration::from_secs(60))
                .unwrap()
                .expect("a message within a minute");
            let body = String::from_utf8(d.body().to_vec()).unwrap();
            d.ack().unwrap();
            if body == STOP {
                println!("done");
                break;
            }
            println!("got {body} {}", d.priority());
        },
        _ => unreachable!(),
    }
}

fn spawn(spec: String) -> Child {
    dashi_test_support::child_role("child_role", CHILD, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (producer, index, priority) of every message a consumer printed, in order.
fn received(child: Child) -> Vec<(String, u32, u8)> {
    let mut child = child;
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut got = Vec::new();
    let mut done = false;
    for line in out.lines().map_while(Result::ok) {
        // libtest may print "test child_role ... " before our first line.
        if let Some(rest) = line.split("got ").nth(1) {
            let (body, prio) = rest.rsplit_once(' ').unwrap();
            let (w, i) = body.split_once('-').unwrap();
            got.push((w.to_owned(), i.parse().unwrap(), prio.parse().unwrap()));
        }
        done |= line.contains("done");
    }
    assert!(child.wait().unwrap().success());
    assert!(done, "a consumer did not finish");
    got
}

fn publish_stops(d: &Path, n: usize) {
    let c = connect(d);
    let ch = c.channel().unwrap();
    let p = ch.producer();
    for _ in 0..n {
        p.publish(Message::new(STOP).with_priority(0), "q").unwrap();
    }
}

/// Within one consumer's view, each producer's messages of one lane come in
/// the order they were published.
fn assert_fifo_per_producer_and_lane(seen: &[(String, u32, u8)]) {
    let mut last: BTreeMap<(&str, u8), u32> = BTreeMap::new();
    for (w, i, p) in seen {
        if let Some(prev) = last.insert((w, *p), *i) {
            assert!(prev < *i, "{w}: {i} after {prev} in lane {p}");
        }
        assert_eq!(*p as u32, i % 3, "priority kept");
    }
}

#[test]
fn producer_and_consumer_processes_at_once_deliver_everything_once_in_order() {
    let d = dir("concurrent");
    declare(&connect(&d));
    let consumers: Vec<Child> = (0..2)
        .map(|_| spawn(format!("consume,{}", d.display())))
        .collect();
    let producers: Vec<Child> = (0..3)
        .map(|w| spawn(format!("produce,{},w{w}", d.display())))
        .collect();
    for mut p in producers {
        assert!(p.wait().unwrap().success());
    }
    // Stops go to the lowest lane, after every data message of it: a consumer
    // takes one only when nothing more urgent is ready.
    publish_stops(&d, 2);
    let views: Vec<Vec<(String, u32, u8)>> = consumers.into_iter().map(received).collect();
    let mut all = BTreeSet::new();
    for v in &views {
        assert_fifo_per_producer_and_lane(v);
        for (w, i, _) in v {
            assert!(all.insert((w.clone(), *i)), "{w}-{i} delivered twice");
        }
    }
    assert_eq!(all.len(), 3 * PER_PRODUCER as usize, "every message once");
}

#[test]
fn a_backlog_from_producer_processes_drains_strictly_by_priority() {
    let d = dir("backlog");
    declare(&connect(&d));
    let producers: Vec<Child> = (0..3)
        .map(|w| spawn(format!("produce,{},w{w}", d.display())))
        .collect();
    for mut p in producers {
        assert!(p.wait().unwrap().success());
    }
    publish_stops(&d, 1);
    let seen = received(spawn(format!("consume,{}", d.display())));
    assert_eq!(seen.len(), 3 * PER_PRODUCER as usize);
    assert_fifo_per_producer_and_lane(&seen);
    let prios: Vec<u8> = seen.iter().map(|s| s.2).collect();
    assert!(
        prios.windows(2).all(|w| w[0] >= w[1]),
        "not strictly by priority"
    );
    assert_eq!(prios[0], 2);
}
