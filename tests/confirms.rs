//! Confirms that resolve when the test says so, and confirms that fail: a
//! transport double that stores every message in a real memory:// instance
//! but holds each publish's confirm until the test opens its gate (with
//! `Ok` or a failed sync), and whose queues record the batches of acks they
//! get and fail them on demand (the settle side of the seam). The engine side of pipelining (the window, the
//! futures, the hand-back of failed messages, `wait_for_confirms`) is tested
//! against it deterministically; `tests/conformance/confirms.rs` runs the
//! same API on every real transport, and local://'s own tests fail real
//! syncs.

use std::sync::{Arc, Condvar, Mutex};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use dashi::spi::{
    Accepted, Binding, ConnectionId, Envelope, PendingConfirm, QueueStore, Transport,
};
use dashi::{
    BatchError, ChannelOptions, Confirm, ConfirmsError, Connection, ConnectionConfig, Error,
    Exchange, FailureKind, Implements, PublishError, Queue, QueueInfo, QueueStats, StoreFailure,
};
use proptest::prelude::*;

#[derive(Debug, Default)]
struct Gate {
    outcome: Mutex<Option<Result<(), StoreFailure>>>,
    cv: Condvar,
    wakers: Mutex<Vec<Waker>>,
}

impl Gate {
    fn open(&self, r: Result<(), StoreFailure>) {
        *self.outcome.lock().unwrap() = Some(r);
        self.cv.notify_all();
        for w in self.wakers.lock().unwrap().drain(..) {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct GateConfirm(Arc<Gate>);

impl PendingConfirm for GateConfirm {
    fn poll_confirm(&self, waker: &Waker) -> Poll<Result<(), StoreFailure>> {
        self.0.wakers.lock().unwrap().push(waker.clone());
        match self.0.outcome.lock().unwrap().clone() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }

    fn wait_confirm(&self, deadline: Option<Instant>) -> Option<Result<(), StoreFailure>> {
        let mut g = self.0.outcome.lock().unwrap();
        loop {
            if let Some(r) = g.clone() {
                return Some(r);
            }
            let nap = match deadline {
                None => Duration::from_secs(1),
                Some(d) => d.checked_duration_since(Instant::now())?,
            };
            g = self.0.cv.wait_timeout(g, nap).unwrap().0;
        }
    }
}

/// memory:// with confirms held at gates, in publish order.
#[derive(Debug)]
struct Gated {
    inner: Arc<dyn Transport>,
    gates: Mutex<Vec<Arc<Gate>>>,
    settle: Arc<SettleLog>,
}

/// What the queues of a [`Gated`] transport were asked to settle.
#[derive(Debug, Default)]
struct SettleLog {
    /// The size of each `ack` batch.
    acks: Mutex<Vec<usize>>,
    /// Acks fail (and do not reach memory://) while set.
    fail_acks: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct LoggedQueue {
    inner: Arc<dyn QueueStore>,
    log: Arc<SettleLog>,
}

impl QueueStore for LoggedQueue {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn declaration(&self) -> &Queue {
        self.inner.declaration()
    }
    fn pop(&self) -> Result<Option<Envelope>, Error> {
        self.inner.pop()
    }
    fn ack(&self, envs: &[&Envelope]) -> Result<(), Error> {
        self.log.acks.lock().unwrap().push(envs.len());
        if self.log.fail_acks.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Store(StoreFailure::new(
                FailureKind::Io { transient: false },
                "ack",
                "EIO",
            )));
        }
        self.inner.ack(envs)
    }
    fn reject(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        self.inner.reject(envs)
    }
    fn restore(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        self.inner.restore(envs)
    }
    fn state(&self) -> &dashi::spi::QueueState {
        self.inner.state()
    }
    fn consumer_removed(&self) {
        self.inner.consumer_removed()
    }
}

impl Gated {
    fn gate(&self, i: usize) -> Arc<Gate> {
        self.gates.lock().unwrap()[i].clone()
    }
    fn published(&self) -> usize {
        self.gates.lock().unwrap().len()
    }
}

fn sync_failed() -> StoreFailure {
    StoreFailure::new(FailureKind::Io { transient: false }, "fdatasync", "EIO")
}

impl Transport for Gated {
    fn scheme(&self) -> &'static str {
        "gated"
    }
    fn implements(&self) -> Implements {
        self.inner.implements()
    }
    fn declare_exchange(&self, ex: &Exchange) -> Result<(), Error> {
        self.inner.declare_exchange(ex)
    }
    fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.inner.delete_exchange(name, if_unused)
    }
    fn declare_queue(&self, q: &Queue, owner: ConnectionId) -> Result<QueueInfo, Error> {
        self.inner.declare_queue(q, owner)
    }
    fn delete_queue(
        &self,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        owner: ConnectionId,
    ) -> Result<u64, Error> {
        self.inner.delete_queue(name, if_unused, if_empty, owner)
    }
    fn purge_queue(&self, name: &str, owner: ConnectionId) -> Result<u64, Error> {
        self.inner.purge_queue(name, owner)
    }
    fn bind(&self, binding: Binding) -> Result<(), Error> {
        self.inner.bind(binding)
    }
    fn unbind(&self, binding: &Binding) -> Result<(), Error> {
        self.inner.unbind(binding)
    }
    fn queue(&self, name: &str, owner: ConnectionId) -> Result<Arc<dyn QueueStore>, Error> {
        Ok(Arc::new(LoggedQueue {
            inner: self.inner.queue(name, owner)?,
            log: self.settle.clone(),
        }))
    }
    fn publish(&self, envelope: Envelope, mandatory: bool) -> Result<(), PublishError> {
        self.inner.publish(envelope, mandatory)
    }
    fn publish_async(&self, envelope: Envelope, mandatory: bool) -> Result<Accepted, PublishError> {
        self.inner.publish(envelope.clone(), mandatory)?;
        let gate = Arc::new(Gate::default());
        self.gates.lock().unwrap().push(gate.clone());
        Ok(Accepted::Pending {
            confirm: Box::new(GateConfirm(gate)),
            envelope,
        })
    }
    fn connection_closed(&self, owner: ConnectionId) {
        self.inner.connection_closed(owner)
    }
    fn counters(&self) -> &dashi::spi::Counters {
        self.inner.counters()
    }
    fn queue_stats(&self, name: &str) -> Result<Option<QueueStats>, Error> {
        self.inner.queue_stats(name)
    }
    fn all_queue_stats(&self) -> Result<Vec<QueueStats>, Error> {
        self.inner.all_queue_stats()
    }
}

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn gated() -> (Connection, Arc<Gated>) {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mem = dashi::connect(&format!("memory://confirms-{n}")).unwrap();
    let t = Arc::new(Gated {
        inner: mem.transport().clone(),
        gates: Mutex::new(Vec::new()),
        settle: Arc::default(),
    });
    // The memory:// instance lives as long as its transport handle.
    drop(mem);
    let conn = Connection::with_transport(t.clone(), ConnectionConfig::default());
    conn.channel()
        .unwrap()
        .queue_declare(&Queue::new("q"))
        .unwrap();
    (conn, t)
}

fn bodies(conn: &Connection) -> Vec<String> {
    let ch = conn.channel().unwrap();
    let mut out = Vec::new();
    while let Some(d) = ch.get("q", Duration::ZERO).unwrap() {
        out.push(String::from_utf8(d.body().to_vec()).unwrap());
        d.ack().unwrap();
    }
    out
}

#[test]
fn a_failed_confirm_hands_the_message_back_as_unconfirmed() {
    let (conn, t) = gated();
    let ch = conn.channel().unwrap();
    let p = ch.producer();
    let ok = p.publish_async("kept", "q").unwrap();
    let bad = p.publish_async("lost?", "q").unwrap();
    assert!(!ok.is_resolved() && !bad.is_resolved());
    assert_eq!(ch.confirms_outstanding(), 2);
    t.gate(0).open(Ok(()));
    t.gate(1).open(Err(sync_failed()));
    ok.wait().unwrap();
    let e = bad.wait().unwrap_err();
    assert!(e.is_unconfirmed() && !e.is_transient(), "{e}");
    assert!(e.to_string().contains("may or may not be stored"), "{e}");
    // Handed back with where it went, to publish again.
    match &e {
        PublishError::Unconfirmed {
            exchange,
            routing_key,
            ..
        } => assert_eq!((&**exchange, &**routing_key), ("", "q")),
        other => panic!("{other:?}"),
    }
    assert_eq!(&e.into_message().body[..], b"lost?");
    assert_eq!(ch.confirms_outstanding(), 0);
    // Read through its confirm: not reported again.
    ch.wait_for_confirms(Duration::ZERO).unwrap();
    // A failure whose confirm is held unread is counted, and stays the
    // confirm's to hand back.
    let held = p.publish_async("held", "q").unwrap();
    t.gate(2).open(Err(sync_failed()));
    for _ in 0..2 {
        match ch.wait_for_confirms(Duration::from_secs(5)) {
            Err(ConfirmsError::Failed {
                failed,
                reported_to_confirms: 1,
            }) => assert!(failed.is_empty()),
            other => panic!("{other:?}"),
        }
    }
    // Dropped unread: the next call hands the message back.
    drop(held);
    match ch.wait_for_confirms(Duration::ZERO) {
        Err(ConfirmsError::Failed {
            failed,
            reported_to_confirms: 0,
        }) => match &failed[..] {
            [PublishError::Unconfirmed {
                message,
                routing_key,
                ..
            }] => assert_eq!((&message.body[..], &**routing_key), (&b"held"[..], "q")),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    ch.wait_for_confirms(Duration::ZERO).unwrap();
    // Unconfirmed is not "not stored": here both were stored.
    assert_eq!(bodies(&conn), ["kept", "lost?", "held"]);
}

#[test]
fn wait_for_confirms_hands_back_the_messages_of_dropped_failed_confirms() {
    let (conn, t) = gated();
    let ch = conn.channel().unwrap();
    let p = ch.producer();
    for b in ["a", "b", "c"] {
        drop(p.publish_async(b, "q").unwrap());
    }
    match ch.wait_for_confirms(Duration::from_millis(10)) {
        Err(ConfirmsError::Timeout { outstanding: 3 }) => {}
        other => panic!("{other:?}"),
    }
    t.gate(0).open(Ok(()));
    t.gate(1).open(Err(sync_failed()));
    t.gate(2).open(Err(sync_failed()));
    match ch.wait_for_confirms(Duration::from_secs(5)) {
        Err(ConfirmsError::Failed {
            failed,
            reported_to_confirms: 0,
        }) => {
            let back: Vec<_> = failed
                .into_iter()
                .map(|e| {
                    assert!(e.is_unconfirmed());
                    e.into_message().body
                })
                .collect();
            assert_eq!(back, ["b", "c"]);
        }
        other => panic!("{other:?}"),
    }
    ch.wait_for_confirms(Duration::ZERO).unwrap();
}

#[test]
fn a_confirm_future_wakes_when_its_sync_ends() {
    let (conn, t) = gated();
    let ch = conn.channel().unwrap();
    let c = ch.producer().publish_async("x", "q").unwrap();
    let opener = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        t.gate(0).open(Err(sync_failed()));
    });
    let e = futures::executor::block_on(c).unwrap_err();
    opener.join().unwrap();
    assert_eq!(&e.into_message().body[..], b"x");
}

#[test]
fn a_full_window_blocks_until_the_oldest_confirm_resolves() {
    let (conn, t) = gated();
    let ch = conn
        .channel_with(ChannelOptions::new().confirm_window(2))
        .unwrap();
    let p = ch.producer();
    let held = [
        p.publish_async("0", "q").unwrap(),
        p.publish_async("1", "q").unwrap(),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| {
            let c = p.publish_async("2", "q").unwrap();
            tx.send(()).unwrap();
            c
        });
        // The third publish waits for room.
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        assert_eq!(t.published(), 2);
        t.gate(0).open(Ok(()));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the publish went through once a confirm resolved");
    });
    t.gate(1).open(Ok(()));
    t.gate(2).open(Ok(()));
    for c in held {
        c.wait().unwrap();
    }
    ch.wait_for_confirms(Duration::from_secs(5)).unwrap();
    assert_eq!(bodies(&conn), ["0", "1", "2"]);
}

#[test]
fn a_full_nonblocking_window_refuses_with_the_message_and_counts_bytes() {
    let (conn, t) = gated();
    let ch = conn
        .channel_with(
            ChannelOptions::new()
                .confirm_window(3)
                .confirm_window_bytes(10)
                .nonblocking(true),
        )
        .unwrap();
    let p = ch.producer();
    let a = p.publish_async("123456", "q").unwrap();
    let e = p.publish_async("12345", "q").unwrap_err();
    match &e {
        PublishError::Full {
            messages: 1,
            bytes: 6,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(e.is_transient());
    assert_eq!(&e.into_message().body[..], b"12345");
    t.gate(0).open(Ok(()));
    a.wait().unwrap();
    let b = p.publish_async("12345", "q").unwrap();
    t.gate(1).open(Ok(()));
    b.wait().unwrap();
    assert_eq!(bodies(&conn), ["123456", "12345"]);
}

#[test]
fn publish_batch_reports_failed_confirms_by_position() {
    let (conn, t) = gated();
    let ch = conn.channel().unwrap();
    let opener = {
        let t = t.clone();
        std::thread::spawn(move || {
            let mut opened = 0;
            while opened < 4 {
                if t.published() > opened {
                    let r = if opened == 2 {
                        Err(sync_failed())
                    } else {
                        Ok(())
                    };
                    t.gate(opened).open(r);
                    opened += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        })
    };
    let BatchError { total, failed } = ch
        .producer()
        .publish_batch(["a", "b", "c", "d"].map(|b| (b, "q")))
        .unwrap_err();
    opener.join().unwrap();
    assert_eq!(total, 4);
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].0, 2);
    assert!(failed[0].1.is_unconfirmed());
    let pending: Confirm = ch.producer().publish_async("e", "q").unwrap();
    drop(pending);
    t.gate(4).open(Ok(()));
    ch.wait_for_confirms(Duration::from_secs(5)).unwrap();
}

/// `ack_multiple` settles its deliveries with one store call per queue; a
/// store that fails to record an ack is an `AckError::Store` naming the tag
/// (not "already settled", not a panic).
#[test]
fn acks_reach_the_store_in_batches_and_a_failed_one_is_an_error() {
    let (conn, t) = gated();
    let ch = conn.channel().unwrap();
    let p = ch.producer();
    for i in 0..6 {
        p.publish(i.to_string(), "q").unwrap();
    }
    let got: Vec<_> = (0..5)
        .map(|_| ch.get("q", Duration::from_secs(1)).unwrap().unwrap())
        .collect();
    got[4].ack_multiple().unwrap();
    assert_eq!(*t.settle.acks.lock().unwrap(), [5]);
    let last = ch.get("q", Duration::from_secs(1)).unwrap().unwrap();
    t.settle
        .fail_acks
        .store(true, std::sync::atomic::Ordering::SeqCst);
    match last.ack() {
        Err(dashi::AckError::Store { tag, failure }) => {
            assert_eq!(tag, last.delivery_tag());
            assert_eq!(failure.what, "ack");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(*t.settle.acks.lock().unwrap(), [5, 1]);
}

#[derive(Debug, Clone)]
enum Op {
    Publish,
    /// Resolve the oldest unresolved confirm, Ok or failed.
    Resolve(bool),
    /// Wait on (or drop) a held confirm.
    Settle {
        pick: usize,
        drop: bool,
    },
    WaitAll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Publish),
        3 => any::<bool>().prop_map(Op::Resolve),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, drop)| Op::Settle { pick, drop }),
        1 => Just(Op::WaitAll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Random publish_async / resolve / wait / drop / wait_for_confirms: the
    /// window is never exceeded; every publish is confirmed `Ok` or handed
    /// back exactly once (through its confirm or wait_for_confirms), with
    /// its own body; every confirmed message is in the queue.
    #[test]
    fn every_publish_is_confirmed_or_handed_back_exactly_once(ops in proptest::collection::vec(op(), 1..80)) {
        let (conn, t) = gated();
        let ch = conn
            .channel_with(ChannelOptions::new().confirm_window(4).nonblocking(true))
            .unwrap();
        let p = ch.producer();
        let mut held: Vec<(usize, Confirm)> = Vec::new();
        let mut resolved = 0usize;
        let mut ok = std::collections::BTreeSet::new();
        let mut back: Vec<usize> = Vec::new();
        let mut n = 0usize;
        let mut failed_total = 0usize;
        let outcome = |i: usize, r: Result<(), PublishError>, ok: &mut std::collections::BTreeSet<usize>, back: &mut Vec<usize>| {
            match r {
                Ok(()) => { ok.insert(i); }
                Err(e) => {
                    let body = String::from_utf8(e.into_message().body.to_vec()).unwrap();
                    assert_eq!(body, i.to_string());
                    back.push(i);
                }
            }
        };
        let finish_wait_all = |ch: &dashi::Channel, back: &mut Vec<usize>| {
            match ch.wait_for_confirms(Duration::from_secs(5)) {
                Ok(()) => {}
                Err(ConfirmsError::Failed { failed, .. }) => {
                    for e in failed {
                        let body = String::from_utf8(e.into_message().body.to_vec()).unwrap();
                        back.push(body.parse().unwrap());
                    }
                }
                Err(e) => panic!("{e}"),
            }
        };
        for o in ops {
            match o {
                Op::Publish => match p.publish_async(n.to_string(), "q") {
                    Ok(c) => { held.push((n, c)); n += 1; }
                    Err(PublishError::Full { message, .. }) => {
                        prop_assert_eq!(String::from_utf8(message.body.to_vec()).unwrap(), n.to_string());
                        prop_assert_eq!(ch.confirms_outstanding(), 4);
                    }
                    Err(e) => panic!("{e}"),
                },
                Op::Resolve(good) => {
                    if resolved < t.published() {
                        if !good { failed_total += 1; }
                        t.gate(resolved).open(if good { Ok(()) } else { Err(sync_failed()) });
                        resolved += 1;
                    }
                }
                Op::Settle { pick, drop } => {
                    if held.is_empty() { continue; }
                    let (i, c) = held.remove(pick % held.len());
                    if drop { std::mem::drop(c); continue; }
                    match c.wait_timeout(Duration::ZERO) {
                        Ok(r) => outcome(i, r, &mut ok, &mut back),
                        Err(c) => held.push((i, c)),
                    }
                }
                Op::WaitAll => {
                    if resolved == t.published() {
                        finish_wait_all(&ch, &mut back);
                    }
                }
            }
            prop_assert!(ch.confirms_outstanding() <= 4);
        }
        // Resolve the rest Ok, collect every outcome.
        while resolved < t.published() {
            t.gate(resolved).open(Ok(()));
            resolved += 1;
        }
        for (i, c) in held.drain(..) {
            outcome(i, c.wait(), &mut ok, &mut back);
        }
        finish_wait_all(&ch, &mut back);
        back.sort_unstable();
        let mut dedup = back.clone();
        dedup.dedup();
        prop_assert_eq!(&dedup, &back, "handed back twice");
        prop_assert_eq!(back.len(), failed_total);
        prop_assert_eq!(ch.confirms_outstanding(), 0);
        let stored: std::collections::BTreeSet<usize> =
            bodies(&conn).iter().map(|b| b.parse().unwrap()).collect();
        prop_assert!(ok.is_subset(&stored));
        prop_assert_eq!(stored.len(), n);
    }
}
