//! Pipelined publishing on local://: confirms resolve at the group
//! `fdatasync` (`fsync=always`) or the timer sync (`interval`), one sync
//! covers many pipelined publishes, a failed sync fails every confirm it was
//! to give (with the `failpoints` feature), and a publisher killed with
//! confirms outstanding loses none of the messages it was told were
//! confirmed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dashi_engine::spi::ConnectUrl;
use dashi_engine::{Channel, ChannelOptions, Confirm, Connection, Message, Queue};
use dashi_test_support::{kill, say, ChildLines, TestDir};
use dashi_transport_local::{Fsync, LocalOptions, LocalTransport};

const CHILD: &str = "DASHI_CONFIRMS_CHILD";

/// The failpoint that fails syncs is process-wide: tests that sync in this
/// process take turns.
static SYNCS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn turn() -> std::sync::MutexGuard<'static, ()> {
    SYNCS.lock().unwrap_or_else(|p| p.into_inner())
}

fn connect(d: &Path, fsync: &str) -> Connection {
    let url = format!("local://{}?segment_size=1M&fsync={fsync}", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn channel(c: &Connection) -> Channel {
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    ch
}

fn same_store(d: &Path, fsync: Fsync) -> LocalTransport {
    LocalTransport::open(
        d,
        LocalOptions {
            fsync,
            segment_size: 1 << 20,
            ..LocalOptions::default()
        },
    )
    .unwrap()
}

fn drain(ch: &Channel) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(d) = ch.get("q", Duration::from_millis(200)).unwrap() {
        out.push(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().unwrap();
    }
    out
}

#[test]
fn pipelined_publishes_share_syncs_and_confirm_in_order() {
    let _turn = turn();
    let d = TestDir::new();
    let conn = connect(&d, "always");
    let store = same_store(&d, Fsync::Always);
    let ch = channel(&conn);
    let p = ch.producer();
    let before = store.syncs();
    let confirms: Vec<Confirm> = (0..1000)
        .map(|i| p.publish_async(format!("m{i}"), "q").unwrap())
        .collect();
    for c in confirms {
        c.wait().unwrap();
    }
    let used = store.syncs() - before;
    // Synchronous publishes would take 1000 syncs; pipelined ones share them.
    assert!(
        (1..500).contains(&used),
        "{used} syncs for 1000 pipelined publishes"
    );
    eprintln!("pipelined: {used} fdatasync calls for 1000 publishes");
    let want: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    assert_eq!(drain(&ch), want);
}

#[test]
fn interval_confirms_resolve_at_the_timer_sync() {
    let _turn = turn();
    let d = TestDir::new();
    let conn = connect(&d, "interval:30");
    let store = same_store(&d, Fsync::Interval(Duration::from_millis(30)));
    let ch = channel(&conn);
    let before = store.syncs();
    let c = ch.producer().publish_async("x", "q").unwrap();
    c.wait().unwrap();
    assert!(store.syncs() > before, "confirmed only after a timer sync");
    let batch: Vec<_> = (0..100).map(|i| (format!("b{i}"), "q")).collect();
    ch.producer().publish_batch(batch).unwrap();
    assert_eq!(drain(&ch).len(), 101);
}

#[test]
fn never_confirms_at_commit() {
    let d = TestDir::new();
    let conn = connect(&d, "never");
    let ch = channel(&conn);
    let c = ch.producer().publish_async("x", "q").unwrap();
    assert!(c.is_resolved());
    assert_eq!(ch.confirms_outstanding(), 0);
    c.wait().unwrap();
}

/// A sync that fails fails every pipelined confirm it covered (the records
/// are in the log but not known durable: `Unconfirmed`, message handed
/// back); once syncs work again, new publishes go to a fresh segment and
/// are confirmed.
#[cfg(feature = "failpoints")]
#[test]
fn a_failed_sync_fails_every_pipelined_confirm_it_covered() {
    let _turn = turn();
    let d = TestDir::new();
    let conn = connect(&d, "always");
    let ch = channel(&conn);
    let p = ch.producer();
    p.publish_async("before", "q").unwrap().wait().unwrap();
    fail::cfg("durability::fdatasync", "return").unwrap();
    let during: Vec<Confirm> = (0..50)
        .map(|i| p.publish_async(format!("during-{i}"), "q").unwrap())
        .collect();
    let outcomes: Vec<_> = during.into_iter().map(Confirm::wait).collect();
    fail::remove("durability::fdatasync");
    for (i, r) in outcomes.into_iter().enumerate() {
        let e = r.expect_err("a confirm the failed sync was to give");
        assert!(e.is_unconfirmed(), "{e}");
        assert!(e.to_string().contains("fdatasync failed"), "{e}");
        assert_eq!(e.into_message().body, format!("during-{i}"));
    }
    p.publish_async("after", "q").unwrap().wait().unwrap();
    ch.wait_for_confirms(Duration::from_secs(5)).unwrap();
    let got = drain(&ch);
    assert!(got.contains(&"before".to_owned()) && got.contains(&"after".to_owned()));
}

/// The child publishes pipelined with `fsync=always` (window 64), saying
/// `confirmed <i>` for each publish whose confirm resolved `Ok`, forever.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let (start, dir) = spec.split_once(',').unwrap();
    let start: u64 = start.parse().unwrap();
    let conn = connect(Path::new(dir), "always");
    let ch = conn
        .channel_with(ChannelOptions::new().confirm_window(64))
        .unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let p = ch.producer();
    let mut held: std::collections::VecDeque<(u64, Confirm)> = Default::default();
    for i in start.. {
        held.push_back((
            i,
            p.publish_async(Message::new(i.to_string()), "q").unwrap(),
        ));
        while held.front().is_some_and(|(_, c)| c.is_resolved()) || held.len() >= 64 {
            let (n, c) = held.pop_front().unwrap();
            c.wait().unwrap();
            say(format_args!("confirmed {n}"));
        }
    }
}

#[test]
fn a_publisher_killed_with_confirms_outstanding_loses_no_confirmed_message() {
    let _turn = turn();
    let d = TestDir::new();
    let mut confirmed = std::collections::BTreeSet::new();
    let mut next = 0u64;
    for round in 0..4u64 {
        let mut child =
            dashi_test_support::child_role("child_role", CHILD, format!("{next},{}", d.display()))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
        let mut lines = ChildLines::of(&mut child);
        // Kill after a different number of confirms each round.
        let want = 200 + round * 150;
        let end = Instant::now() + Duration::from_secs(60);
        let mut seen = 0;
        while seen < want && Instant::now() < end {
            for l in lines.until("confirmed ") {
                if let Some(n) = l.split("confirmed ").nth(1) {
                    confirmed.insert(n.trim().parse::<u64>().unwrap());
                    seen += 1;
                }
            }
        }
        kill(&mut child);
        next = confirmed.last().map_or(0, |n| n + 1_000_000);
    }
    assert!(confirmed.len() >= 800, "{} confirmed", confirmed.len());
    let conn = connect(&d, "always");
    let ch = channel(&conn);
    let got: std::collections::BTreeSet<u64> =
        drain(&ch).iter().map(|b| b.parse().unwrap()).collect();
    let lost: Vec<_> = confirmed.difference(&got).collect();
    assert!(
        lost.is_empty(),
        "{} confirmed messages lost: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}

/// A lane that cannot be read reaches the consumer as an error value on
/// `get`, `drain_events` and the `Stream` (never a panic, never a silent
/// stop), and the consumer goes on once the lane reads again; a transient
/// failure (EINTR) is retried inside the engine and never seen.
#[cfg(feature = "failpoints")]
#[test]
fn a_lane_that_cannot_be_read_is_an_error_value_and_consumers_continue() {
    use dashi_engine::futures_core::Stream;
    use dashi_engine::ConsumerOptions;
    use std::sync::{Arc, Mutex};
    let _turn = turn();
    let d = TestDir::new();
    let conn = connect(&d, "never");
    let ch = channel(&conn);
    for b in ["a", "b", "c", "d"] {
        ch.producer().publish(b, "q").unwrap();
    }
    let assert_eio = |e: &dashi_engine::Error| {
        assert!(!e.is_transient(), "{e}");
        assert!(e.to_string().contains("claim"), "{e}");
    };
    // get
    fail::cfg("lane::claim_error", "return(5)").unwrap();
    let e = ch.get("q", Duration::from_millis(50)).unwrap_err();
    assert_eio(&e);
    fail::remove("lane::claim_error");
    let got = ch.get("q", Duration::from_secs(1)).unwrap().unwrap();
    assert_eq!(&got.body()[..], b"a");
    got.ack().unwrap();
    // A transient failure is retried: the caller gets the message.
    fail::cfg("lane::claim_error", "2*return(4)").unwrap();
    let got = ch.get("q", Duration::from_secs(1)).unwrap().unwrap();
    fail::remove("lane::claim_error");
    assert_eq!(&got.body()[..], b"b");
    got.ack().unwrap();
    // drain_events
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let consumer = ch
        .consume(ConsumerOptions::new("q"), move |d| {
            s.lock()
                .unwrap()
                .push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        })
        .unwrap();
    fail::cfg("lane::claim_error", "return(5)").unwrap();
    let e = conn
        .drain_events(Some(Duration::from_millis(50)))
        .unwrap_err();
    assert_eio(&e);
    fail::remove("lane::claim_error");
    assert_eq!(conn.drain_events(Some(Duration::from_secs(1))).unwrap(), 2);
    assert_eq!(*seen.lock().unwrap(), ["c", "d"]);
    drop(consumer);
    ch.producer().publish("e", "q").unwrap();
    // Stream
    let mut stream = ch.stream(ConsumerOptions::new("q")).unwrap();
    let waker = futures_noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    fail::cfg("lane::claim_error", "return(5)").unwrap();
    match std::pin::Pin::new(&mut stream).poll_next(&mut cx) {
        std::task::Poll::Ready(Some(Err(e))) => assert_eio(&e),
        other => panic!("expected an error item, got {other:?}"),
    }
    fail::remove("lane::claim_error");
    match std::pin::Pin::new(&mut stream).poll_next(&mut cx) {
        std::task::Poll::Ready(Some(Ok(d))) => assert_eq!(&d.body()[..], b"e"),
        other => panic!("expected the message, got {other:?}"),
    }
}

/// A consumer on two queues: when taking from one fails, the other still
/// delivers in the same pass, the failure is not reported (something was
/// delivered), and the message of the failing queue is neither lost nor
/// stranded: it comes on the next turn.
#[cfg(feature = "failpoints")]
#[test]
fn a_queue_that_fails_does_not_stop_the_others_and_loses_nothing() {
    use dashi_engine::ConsumerOptions;
    use std::sync::{Arc, Mutex};
    let _turn = turn();
    let d = TestDir::new();
    let conn = connect(&d, "never");
    let ch = channel(&conn);
    for q in ["q1", "q2"] {
        ch.queue_declare(&Queue::new(q)).unwrap();
    }
    ch.producer().publish("x", "q1").unwrap();
    ch.producer().publish("y", "q2").unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let _consumer = ch
        .consume(ConsumerOptions::new("q1").queue("q2"), move |d| {
            s.lock()
                .unwrap()
                .push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        })
        .unwrap();
    // The first claim (q1's, first in turn) fails for good; q2's does not.
    fail::cfg("lane::claim_error", "1*return(5)").unwrap();
    let n = conn.drain_events(Some(Duration::from_secs(1))).unwrap();
    fail::remove("lane::claim_error");
    let mut total = n;
    let deadline = Instant::now() + Duration::from_secs(5);
    while total < 2 && Instant::now() < deadline {
        total += conn
            .drain_events(Some(Duration::from_millis(200)))
            .unwrap_or(0);
    }
    assert_eq!(*seen.lock().unwrap(), ["y", "x"]);
    assert_eq!(total, 2);
    let stats = conn.stats();
    assert_eq!(stats.queue("q1").unwrap().messages, 0);
    assert_eq!(stats.queue("q2").unwrap().messages, 0);
}

#[cfg(feature = "failpoints")]
fn futures_noop_waker() -> std::task::Waker {
    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }
    std::sync::Arc::new(Noop).into()
}

/// A claim that fails in the middle of a run (the run claimed what was
/// left of a segment, then the claim past the segment's end failed) ends
/// the run with what it claimed: those messages are delivered, not held by
/// this live process for good; the failure passes and every message comes
/// once, in order, none flagged redelivered.
#[cfg(feature = "failpoints")]
#[test]
fn a_claim_failing_mid_run_delivers_what_the_run_claimed() {
    let _turn = turn();
    let d = TestDir::new();
    let url = format!("local://{}?segment_size=64K&fsync=never", d.display());
    let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
    let ch = channel(&conn);
    // 4 KiB bodies: about 15 a segment, fewer than a run (32), so the
    // first run reaches the segment's end and claims past it.
    let p = ch.producer();
    for i in 0..100u32 {
        let mut body = vec![0u8; 4000];
        body[..4].copy_from_slice(&i.to_le_bytes());
        p.publish(body, "q").unwrap();
    }
    // The run's own check passes; the claim past the segment's end fails.
    fail::cfg("lane::claim_error", "1*off->1*return(5)").unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let _consumer = ch
        .consume(dashi_engine::ConsumerOptions::new("q"), move |d| {
            assert!(!d.redelivered());
            g.lock()
                .unwrap()
                .push(u32::from_le_bytes(d.body()[..4].try_into().unwrap()));
            d.ack().unwrap();
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut errors = Vec::new();
    while got.lock().unwrap().len() < 100 && Instant::now() < deadline {
        match conn.drain_events(Some(Duration::from_millis(200))) {
            Ok(_) | Err(dashi_engine::Error::Timeout) => {}
            // The failure may reach the consumer as a value (when nothing
            // else was ready in that pass); the consumer goes on after it.
            Err(e) => errors.push(e.to_string()),
        }
    }
    fail::remove("lane::claim_error");
    assert!(errors.len() <= 1, "{errors:?}");
    assert_eq!(*got.lock().unwrap(), (0..100).collect::<Vec<_>>());
    let q = conn.stats().queue("q").unwrap();
    assert_eq!((q.messages, q.unacked), (0, 0));
}
