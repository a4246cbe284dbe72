//! The session layer under races: a batch cut short by a cancel loses
//! nothing and keeps its order, a drainer wakes for a consumer added while it
//! sleeps, a delivery racing a close is restored, nested drains fail instead
//! of deadlocking, a deleted and redeclared queue is not removed by the old
//! one's last consumer, a consumer of a deleted queue is cancelled, a cycle of
//! dead-letter exchanges cannot exhaust the stack.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use dashi::{Consumer, ConsumerOptions, Error, Exchange, Headers, Overflow, Queue};

use super::*;

/// Publishes `"0".."n-1"` to `q`.
fn publish_n(ch: &Channel, q: &str, n: usize) {
    let p = ch.producer();
    for i in 0..n {
        p.publish(i.to_string(), q).unwrap();
    }
}

/// A push consumer that records what it sees and cancels itself (by dropping
/// its own handle) on the `stop_at`-th delivery; returns what it saw after one
/// drain.
fn consume_until_cancel(c: &Connection, ch: &Channel, no_ack: bool, stop_at: usize) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let me: Arc<Mutex<Option<Consumer>>> = Arc::new(Mutex::new(None));
    let (s, m) = (seen.clone(), me.clone());
    let consumer = ch
        .consume(ConsumerOptions::new("q").no_ack(no_ack), move |d| {
            let mut s = s.lock().unwrap();
            s.push(body(&d));
            if !no_ack {
                d.ack().unwrap();
            }
            if s.len() == stop_at {
                drop(m.lock().unwrap().take());
            }
        })
        .unwrap();
    *me.lock().unwrap() = Some(consumer);
    assert_eq!(
        c.drain_events(Some(WAIT)).unwrap(),
        10,
        "one batch of all ten"
    );
    let seen = seen.lock().unwrap().clone();
    seen
}

conformance! {
    /// A no_ack consumer cancelled by its own callback on the 3rd of a batch
    /// of 10: the 7 it never saw are still in the queue, in order, unflagged.
    fn no_ack_batch_cut_short_by_cancel_loses_nothing(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        publish_n(&ch, "q", 10);
        let seen = consume_until_cancel(&c, &ch, true, 3);
        assert_eq!(seen, ["0", "1", "2"]);
        assert_eq!(c.stats().queue("q").unwrap().messages, 7);
        let rest: Vec<(String, bool)> = (3..10).map(|i| (i.to_string(), false)).collect();
        assert_eq!(drain_flags(&ch, "q"), rest);
        assert_eq!(c.stats().counters().acked, 3 + 7);
    }

    /// The same with manual acks: what the callback never saw goes back in
    /// its original order, not reversed.
    fn manual_batch_cut_short_by_cancel_goes_back_in_order(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        publish_n(&ch, "q", 10);
        let seen = consume_until_cancel(&c, &ch, false, 3);
        assert_eq!(seen, ["0", "1", "2"]);
        let rest: Vec<String> = (3..10).map(|i| i.to_string()).collect();
        assert_eq!(drain_bodies(&ch, "q"), rest);
    }

    /// A drainer asleep with a consumer on q1 wakes for a consumer added on
    /// q2 by another thread (and its message), long before its timeout.
    fn drain_wakes_for_a_consumer_added_while_it_sleeps(url: &str) {
        let c = Arc::new(connect(url));
        let ch = c.channel().unwrap();
        queue(&ch, "q1");
        queue(&ch, "q2");
        let _idle = ch.consume(ConsumerOptions::new("q1"), |_| {}).unwrap();
        let got = Arc::new(AtomicUsize::new(0));
        let (c2, g2) = (c.clone(), got.clone());
        let (added_tx, added_rx) = mpsc::channel();
        let (over_tx, over_rx) = mpsc::channel::<()>();
        let adder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let ch2 = c2.channel().unwrap();
            let consumer = ch2
                .consume(ConsumerOptions::new("q2").no_ack(true), move |_| {
                    g2.fetch_add(1, SeqCst);
                })
                .unwrap();
            ch2.producer().publish("hello", "q2").unwrap();
            added_tx.send(()).unwrap();
            // Keep the consumer and its channel until the drain is over (a
            // fixed time would make a slow machine fail a correct drain).
            let _ = over_rx.recv_timeout(Duration::from_secs(60));
            drop(consumer);
        });
        let start = Instant::now();
        let n = c.drain_events(Some(Duration::from_secs(20)));
        let waited = start.elapsed();
        let _ = over_tx.send(());
        let n = n.unwrap();
        added_rx.recv().unwrap();
        assert_eq!((n, got.load(SeqCst)), (1, 1));
        assert!(waited < Duration::from_secs(10), "woke only after {waited:?}");
        adder.join().unwrap();
        // Also when the drain started with no consumer at all.
        let empty = Arc::new(connect(url));
        let e2 = empty.clone();
        let (over_tx, over_rx) = mpsc::channel::<()>();
        let adder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let ch = e2.channel().unwrap();
            ch.producer().publish("x", "q1").unwrap();
            let consumer = ch.consume(ConsumerOptions::new("q1").no_ack(true), |_| {}).unwrap();
            let _ = over_rx.recv_timeout(Duration::from_secs(60));
            drop(consumer);
        });
        let start = Instant::now();
        let n = empty.drain_events(Some(Duration::from_secs(20)));
        let waited = start.elapsed();
        let _ = over_tx.send(());
        assert_eq!(n.unwrap(), 1);
        assert!(waited < Duration::from_secs(10), "woke only after {waited:?}");
        adder.join().unwrap();
    }

    /// `get` racing a connection drop, many times: a delivery made as the
    /// channel closes is never lost (restored, or refused and put back).
    fn get_racing_a_close_loses_nothing(url: &str) {
        let admin = connect(url);
        let ach = admin.channel().unwrap();
        queue(&ach, "q");
        publish_n(&ach, "q", 64);
        for _ in 0..150 {
            let c = Arc::new(connect(url));
            let ch = c.channel().unwrap();
            let getter = std::thread::spawn(move || {
                // Take and drop deliveries unsettled until the channel is gone.
                while let Ok(Some(d)) = ch.get("q", Duration::from_millis(50)) {
                    drop(d);
                }
            });
            std::thread::sleep(Duration::from_micros(200));
            drop(c);
            getter.join().unwrap();
            let s = admin.stats().queue("q").unwrap();
            assert_eq!((s.messages, s.unacked), (64, 0), "a delivery was lost in the race");
        }
    }

    /// A callback of connection A drains B, whose callback drains A: the inner
    /// call is an error, nothing deadlocks.
    fn nested_drains_across_connections_fail_instead_of_deadlocking(url: &str) {
        let (done_tx, done_rx) = mpsc::channel();
        let url = url.to_owned();
        std::thread::spawn(move || {
            let a = Arc::new(connect(&url));
            let b = Arc::new(connect(&url));
            let (cha, chb) = (a.channel().unwrap(), b.channel().unwrap());
            queue(&cha, "qa");
            queue(&cha, "qb");
            cha.producer().publish("a", "qa").unwrap();
            chb.producer().publish("b", "qb").unwrap();
            let inner: Arc<Mutex<Option<Result<usize, Error>>>> = Arc::new(Mutex::new(None));
            let (a2, inner2) = (a.clone(), inner.clone());
            let _cb = chb
                .consume(ConsumerOptions::new("qb").no_ack(true), move |_| {
                    *inner2.lock().unwrap() = Some(a2.drain_events(Some(Duration::ZERO)));
                })
                .unwrap();
            let b2 = b.clone();
            let _ca = cha
                .consume(ConsumerOptions::new("qa").no_ack(true), move |_| {
                    b2.drain_events(Some(WAIT)).unwrap();
                })
                .unwrap();
            let outer = a.drain_events(Some(WAIT));
            let inner = inner.lock().unwrap().take();
            done_tx.send((outer.map_err(|e| e.to_string()), inner)).unwrap();
        });
        let (outer, inner) = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("nested drain_events deadlocked");
        assert_eq!(outer, Ok(1));
        assert!(matches!(inner, Some(Err(Error::InvalidArgument(_)))), "{inner:?}");
    }

    /// The old incarnation of a deleted and redeclared auto-delete queue
    /// losing its last consumer does not delete the new one.
    fn a_redeclared_queue_survives_the_old_ones_last_consumer(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        let decl = Queue::new("q").with_auto_delete(true);
        ch.queue_declare(&decl).unwrap();
        let old = ch.consume(ConsumerOptions::new("q"), |_| {}).unwrap();
        let other = c.channel().unwrap();
        assert_eq!(other.queue_delete("q", false, false).unwrap(), 0);
        other.queue_declare(&decl).unwrap();
        other.producer().publish("kept", "q").unwrap();
        drop(old);
        let s = c.stats().queue("q").expect("the new queue was deleted by the old consumer");
        assert_eq!(s.messages, 1);
        assert_eq!(drain_bodies(&other, "q"), ["kept"]);
    }

    /// A push consumer whose queue is deleted is cancelled (AMQP's consumer
    /// cancel notification) rather than idling on a dead queue; a new
    /// consumer of the gone queue is refused.
    fn a_consumer_of_a_deleted_queue_is_cancelled(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let consumer = ch.consume(ConsumerOptions::new("q"), |_| {}).unwrap();
        c.channel().unwrap().queue_delete("q", false, false).unwrap();
        assert!(matches!(
            c.drain_events(Some(Duration::from_millis(200))),
            Err(Error::Timeout)
        ));
        assert!(consumer.is_cancelled());
        assert!(matches!(
            ch.consume(ConsumerOptions::new("q"), |_| {}),
            Err(Error::UnknownQueue(_))
        ));
    }

    /// A cancelled consumer lets go of its callback (and what it captured)
    /// at once, also when it cancels itself from inside the callback.
    fn a_cancelled_consumers_callback_is_dropped(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let captured = Arc::new(());
        let cap = captured.clone();
        let consumer = ch.consume(ConsumerOptions::new("q"), move |_| {
            let _ = &cap;
        }).unwrap();
        assert_eq!(Arc::strong_count(&captured), 2);
        consumer.cancel().unwrap();
        assert_eq!(Arc::strong_count(&captured), 1, "callback kept after cancel");
        // Cancelled from inside its own callback: dropped when it returns.
        ch.producer().publish("x", "q").unwrap();
        let me: Arc<Mutex<Option<Consumer>>> = Arc::new(Mutex::new(None));
        let (cap, m) = (captured.clone(), me.clone());
        let consumer = ch.consume(ConsumerOptions::new("q"), move |d| {
            let _ = &cap;
            d.ack().unwrap();
            drop(m.lock().unwrap().take());
        }).unwrap();
        *me.lock().unwrap() = Some(consumer);
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        assert_eq!(Arc::strong_count(&captured), 1, "callback kept after self-cancel");
    }

    /// While another thread drains with no timeout, a drain with a timeout
    /// returns at that timeout instead of waiting for the other to end.
    fn a_drain_waiting_for_another_drainer_honours_its_timeout(url: &str) {
        let c = Arc::new(connect(url));
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let _consumer = ch.consume(ConsumerOptions::new("q"), |d| d.ack().unwrap()).unwrap();
        let c2 = c.clone();
        let forever = std::thread::spawn(move || c2.drain_events(None));
        std::thread::sleep(Duration::from_millis(100));
        let (tx, rx) = mpsc::channel();
        let c3 = c.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let r = c3.drain_events(Some(Duration::from_millis(100)));
            let _ = tx.send((r, start.elapsed()));
        });
        let timed = rx.recv_timeout(Duration::from_secs(10));
        // Let the other drainer finish either way, so a failure is not a hang.
        ch.producer().publish("end", "q").unwrap();
        let (r, waited) = timed.expect("the timed drain waited for the other drainer");
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
        assert!(waited < Duration::from_secs(5));
        assert_eq!(forever.join().unwrap().unwrap(), 1);
    }

    /// A ring of 24 full drop-head queues whose dead-letter exchanges feed
    /// the next one: a publish cascades round the ring; past the dead-letter
    /// depth limit the message is dropped and counted, the stack survives,
    /// and every message is in a queue or counted as dropped.
    fn a_dead_letter_cycle_is_bounded(url: &str) {
        const N: usize = 24;
        let c = connect(url);
        let ch = c.channel().unwrap();
        for i in 0..N {
            ch.exchange_declare(&Exchange::fanout(format!("dlx{i}"))).unwrap();
        }
        for i in 0..N {
            let q = Queue::new(format!("ring{i}"))
                .with_max_length(1)
                .with_overflow(Overflow::DropHead)
                .with_dead_letter(format!("dlx{}", (i + 1) % N), None);
            ch.queue_declare(&q).unwrap();
            ch.queue_bind(&format!("ring{i}"), &format!("dlx{i}"), "", Headers::new())
                .unwrap();
        }
        let p = ch.producer();
        for i in 0..N {
            p.publish(format!("fill{i}"), &format!("ring{i}")).unwrap();
        }
        p.publish("push", "ring0").unwrap();
        let stats = c.stats();
        let held: u64 = stats.queues().unwrap().iter().map(|q| q.messages).sum();
        let k = stats.counters();
        assert!(k.dropped_dead_letter >= 1, "{k:?}");
        assert_eq!(held + k.dropped_dead_letter, N as u64 + 1, "{k:?}");
    }
}

/// An exclusive queue declared while its connection closes on another thread
/// goes with the connection: afterwards no connection sees it as exclusive
/// to a closed one.
#[test]
fn exclusive_queues_declared_during_close_go_with_it() {
    for i in 0..200 {
        let t = Target::memory(&format!("exclusive-close-{i}"));
        let c = connect(&t.url);
        let ch = c.channel().unwrap();
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_micros(50));
            drop(c);
        });
        let mut q = Queue::new("ex");
        q.exclusive = true;
        let _ = ch.queue_declare(&q);
        closer.join().unwrap();
        drop(ch);
        let other = connect(&t.url);
        let och = other.channel().unwrap();
        assert!(
            och.queue_declare(&q).is_ok(),
            "an exclusive queue of a closed connection survived (run {i})"
        );
    }
}
