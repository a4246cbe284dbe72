//! Property test: random sequences of publish / get / push-consumer drain /
//! ack / reject / requeue / channel close / lease expiry, checked step by step
//! against a small reference model of the semantics. Every get must return exactly the message the model
//! predicts (strict priority, FIFO per lane, restored ahead of new messages at
//! their original positions, redelivered
//! flag), and at the end every published message has been consumed exactly once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use dashi::{
    AckError, Channel, Connection, Consumer, ConsumerOptions, Delivery, Message, Queue, Settled,
};
use dashi_test_support::TestDir;
use proptest::prelude::*;

const MAX_PRIORITY: u8 = 3;
const CHANNELS: usize = 2;
/// Prefetch window of the push consumer on channel 0.
const PREFETCH: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        priority: u8,
    },
    Get {
        ch: usize,
    },
    /// `drain_events` for the push consumer on channel 0.
    Drain,
    Ack {
        ch: usize,
        pick: usize,
    },
    Reject {
        ch: usize,
        pick: usize,
        requeue: bool,
    },
    Close {
        ch: usize,
    },
    ExpireLease {
        ch: usize,
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let ch = 0..CHANNELS;
    prop_oneof![
        4 => (0..=MAX_PRIORITY).prop_map(|priority| Op::Publish { priority }),
        4 => ch.clone().prop_map(|ch| Op::Get { ch }),
        2 => Just(Op::Drain),
        2 => (ch.clone(), any::<usize>()).prop_map(|(ch, pick)| Op::Ack { ch, pick }),
        2 => (ch.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(ch, pick, requeue)| Op::Reject { ch, pick, requeue }),
        1 => ch.clone().prop_map(|ch| Op::Close { ch }),
        1 => (ch, any::<usize>()).prop_map(|(ch, pick)| Op::ExpireLease { ch, pick }),
    ]
}

/// (message id, redelivered)
type Item = (u64, bool);

#[derive(Default)]
struct Model {
    lanes: Vec<VecDeque<Item>>,
    /// Per channel, outstanding deliveries in tag order: (id, lane).
    outstanding: Vec<Vec<(u64, usize)>>,
    consumed: Vec<u64>,
}

impl Model {
    fn new() -> Self {
        Model {
            lanes: vec![VecDeque::new(); MAX_PRIORITY as usize + 1],
            outstanding: vec![Vec::new(); CHANNELS],
            consumed: Vec::new(),
        }
    }
    fn pop(&mut self) -> Option<(Item, usize)> {
        for lane in (0..self.lanes.len()).rev() {
            if let Some(x) = self.lanes[lane].pop_front() {
                return Some((x, lane));
            }
        }
        None
    }
    /// Restores `items` to their lanes: ahead of every message never taken,
    /// among the other restored ones at their original positions (ids are
    /// publish order), whatever order they come back in (AMQP 0-9-1).
    fn restore(&mut self, items: Vec<(u64, usize)>) {
        for (id, lane) in items {
            let l = &mut self.lanes[lane];
            let at = l.iter().take_while(|(x, again)| *again && *x < id).count();
            l.insert(at, (id, true));
        }
    }
}

fn id_of(d: &Delivery) -> u64 {
    std::str::from_utf8(d.body()).unwrap().parse().unwrap()
}

/// A fresh instance of one transport, and what keeps its store alive.
fn target(transport: &str) -> (String, Option<TestDir>) {
    static N: AtomicU64 = AtomicU64::new(0);
    match transport {
        "memory" => (
            format!("memory://property-{}", N.fetch_add(1, Ordering::SeqCst)),
            None,
        ),
        _ => {
            let dir = TestDir::new();
            let fsync = if transport == "local_fsync" {
                "always"
            } else {
                "never"
            };
            let url = format!("local://{}?segment_size=64K&fsync={fsync}", dir.display());
            (url, Some(dir))
        }
    }
}

fn run(transport: &str, ops: Vec<Op>) {
    let (url, _dir) = target(transport);
    let conn: Connection = dashi::connect(&url).unwrap();
    let admin = conn.channel().unwrap();
    admin
        .queue_declare(&Queue::new("q").with_max_priority(MAX_PRIORITY))
        .unwrap();
    let producer = admin.producer();
    let mut channels: Vec<Channel> = (0..CHANNELS).map(|_| conn.channel().unwrap()).collect();
    let mut held: Vec<Vec<Delivery>> = (0..CHANNELS).map(|_| Vec::new()).collect();
    let inbox: Arc<Mutex<Vec<Delivery>>> = Arc::new(Mutex::new(Vec::new()));
    let subscribe = |ch: &Channel| -> Consumer {
        let inbox = inbox.clone();
        ch.consume(
            ConsumerOptions::new("q").prefetch_count(PREFETCH as u32),
            move |d| inbox.lock().unwrap().push(d),
        )
        .unwrap()
    };
    let mut consumer = Some(subscribe(&channels[0]));
    let mut model = Model::new();
    let mut next_id = 0u64;

    for op in ops {
        match op {
            Op::Publish { priority } => {
                producer
                    .publish(
                        Message::new(next_id.to_string()).with_priority(priority),
                        "q",
                    )
                    .unwrap();
                model.lanes[priority as usize].push_back((next_id, false));
                next_id += 1;
            }
            Op::Get { ch } => {
                let got = channels[ch].get("q", Duration::ZERO).unwrap();
                match (model.pop(), got) {
                    (None, None) => {}
                    (Some(((id, redelivered), lane)), Some(d)) => {
                        assert_eq!((id_of(&d), d.redelivered()), (id, redelivered));
                        assert_eq!(d.priority() as usize, lane);
                        model.outstanding[ch].push((id, lane));
                        held[ch].push(d);
                    }
                    (want, got) => panic!("model {want:?}, queue {:?}", got.map(|d| id_of(&d))),
                }
            }
            Op::Drain => {
                let in_window = held[0]
                    .iter()
                    .filter(|d| d.consumer_tag().is_some())
                    .count();
                let ready: usize = model.lanes.iter().map(VecDeque::len).sum();
                let expect = (PREFETCH - in_window).min(ready);
                // A lease restore by the reaper thread puts the message back,
                // then frees the window share: right after an expiry the window
                // may still be full for a moment. Take what is dispatchable
                // until the expected number came (bounded), never more.
                let start = Instant::now();
                let mut n = 0;
                loop {
                    match conn.drain_events(Some(Duration::ZERO)) {
                        Ok(k) => n += k,
                        Err(e) => assert!(e.is_timeout(), "{e}"),
                    }
                    assert!(n <= expect, "dispatched {n}, model allows {expect}");
                    if n == expect {
                        break;
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "dispatched {n} of {expect}"
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
                let got: Vec<Delivery> = inbox.lock().unwrap().drain(..).collect();
                assert_eq!(got.len(), expect);
                for d in got {
                    let ((id, redelivered), lane) = model.pop().unwrap();
                    assert_eq!((id_of(&d), d.redelivered()), (id, redelivered));
                    model.outstanding[0].push((id, lane));
                    held[0].push(d);
                }
            }
            Op::Ack { ch, pick } => {
                if held[ch].is_empty() {
                    continue;
                }
                let i = pick % held[ch].len();
                let d = held[ch].remove(i);
                let (id, _) = model.outstanding[ch].remove(i);
                d.ack().unwrap();
                model.consumed.push(id);
            }
            Op::Reject { ch, pick, requeue } => {
                if held[ch].is_empty() {
                    continue;
                }
                let i = pick % held[ch].len();
                let d = held[ch].remove(i);
                let (id, lane) = model.outstanding[ch].remove(i);
                d.reject(requeue).unwrap();
                if requeue {
                    model.restore(vec![(id, lane)]);
                } else {
                    model.consumed.push(id);
                }
            }
            Op::Close { ch } => {
                let fresh = conn.channel().unwrap();
                std::mem::replace(&mut channels[ch], fresh).close();
                if ch == 0 {
                    // The consumer went with its channel; subscribe again.
                    drop(consumer.take());
                    consumer = Some(subscribe(&channels[0]));
                }
                for d in held[ch].drain(..) {
                    assert!(matches!(
                        d.ack(),
                        Err(AckError::AlreadySettled {
                            state: Settled::Restored,
                            ..
                        })
                    ));
                }
                let items = std::mem::take(&mut model.outstanding[ch]);
                model.restore(items);
            }
            Op::ExpireLease { ch, pick } => {
                if held[ch].is_empty() {
                    continue;
                }
                let i = pick % held[ch].len();
                let d = held[ch].remove(i);
                let (id, lane) = model.outstanding[ch].remove(i);
                let restored = conn.stats().process_counters().restored;
                d.extend_lease(Duration::ZERO).unwrap();
                let start = Instant::now();
                loop {
                    match d.extend_lease(Duration::ZERO) {
                        Err(AckError::AlreadySettled {
                            state: Settled::Restored,
                            ..
                        }) => break,
                        Ok(()) => {}
                        Err(e) => panic!("{e}"),
                    }
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "lease never expired"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                }
                model.restore(vec![(id, lane)]);
                // The reaper marks the delivery restored, then requeues it: wait
                // until the requeue is done (the restored count moves once the
                // queue has it back; local://'s depths move a little before
                // its restore mark, which a pop follows) and the lanes hold
                // what the model holds (per-lane depths count an item only
                // once it can be popped).
                let want: Vec<u64> = model.lanes.iter().map(|l| l.len() as u64).collect();
                while conn.stats().process_counters().restored == restored
                    || conn.stats().queue("q").unwrap().depth_by_lane != want
                {
                    assert!(
                        start.elapsed() < Duration::from_secs(10),
                        "restore never landed"
                    );
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        }
    }
    // Close everything, then drain: every message consumed exactly once.
    drop(consumer);
    for (ch, c) in channels.into_iter().enumerate() {
        c.close();
        let items = std::mem::take(&mut model.outstanding[ch]);
        model.restore(items);
    }
    while let Some(d) = admin.get("q", Duration::ZERO).unwrap() {
        let ((id, redelivered), _) = model.pop().expect("queue has more than the model");
        assert_eq!((id_of(&d), d.redelivered()), (id, redelivered));
        d.ack().unwrap();
        model.consumed.push(id);
    }
    assert!(model.pop().is_none(), "model has more than the queue");
    model.consumed.sort_unstable();
    let want: Vec<u64> = (0..next_id).collect();
    assert_eq!(model.consumed, want, "a message was lost or duplicated");
    let s = conn.stats().queue("q").unwrap();
    assert_eq!((s.messages, s.unacked), (0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn memory_matches_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        run("memory", ops);
    }

    #[test]
    fn local_matches_reference_model(ops in proptest::collection::vec(op(), 1..80)) {
        run("local", ops);
    }
}

proptest! {
    // Every publish waits for an fdatasync here: fewer, shorter cases.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn local_fsync_matches_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        run("local_fsync", ops);
    }
}
