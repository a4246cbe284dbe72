//! The C ABI under random call sequences: a property test that drives the
//! exported functions (the same symbols C calls) with random opens, frees
//! in any order, publishes, gets, consumers, settles, NULLs and bytes that
//! are not UTF-8, on memory:// and local://. It checks, for every call,
//! that the result is one the call may give (never `DASHI_PANIC`; NULL is
//! `DASHI_NULL_PARAMETER`, bad text `DASHI_INVALID_ARGUMENT`), and at the
//! end that every message a publish reported stored was settled once or is
//! still in its queue: nothing lost, nothing duplicated, whatever the order
//! of the frees.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::ptr::{null, null_mut};

use dashi_ffi::*;
use dashi_test_support::TestDir;
use proptest::prelude::*;

use dashi_result::*;

const QUEUES: [&str; 2] = ["q0", "q1"];

#[derive(Debug, Clone)]
enum Op {
    OpenConnection,
    FreeConnection(usize),
    OpenChannel(usize),
    FreeChannel(usize),
    Publish {
        ch: usize,
        q: usize,
        prio: u8,
    },
    PublishAsync {
        ch: usize,
        q: usize,
    },
    WaitForConfirms(usize),
    Get {
        ch: usize,
        q: usize,
    },
    Consume {
        ch: usize,
        q: usize,
        prefetch: u16,
    },
    Cancel {
        ch: usize,
        tag: u64,
    },
    Drain(usize),
    Ack(usize),
    Reject {
        m: usize,
        requeue: bool,
    },
    ExtendLease(usize),
    FreeMessage(usize),
    /// A call with a NULL where a pointer is required.
    Null(u8),
    /// A call with a string that is not UTF-8.
    NotUtf8(u8),
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0usize..4;
    prop_oneof![
        1 => Just(Op::OpenConnection),
        1 => i.clone().prop_map(Op::FreeConnection),
        3 => i.clone().prop_map(Op::OpenChannel),
        1 => i.clone().prop_map(Op::FreeChannel),
        6 => (i.clone(), 0..2usize, 0u8..4).prop_map(|(ch, q, prio)| Op::Publish { ch, q, prio }),
        3 => (i.clone(), 0..2usize).prop_map(|(ch, q)| Op::PublishAsync { ch, q }),
        1 => i.clone().prop_map(Op::WaitForConfirms),
        4 => (i.clone(), 0..2usize).prop_map(|(ch, q)| Op::Get { ch, q }),
        1 => (i.clone(), 0..2usize, 0u16..3).prop_map(|(ch, q, prefetch)| Op::Consume { ch, q, prefetch }),
        1 => (i.clone(), 0u64..4).prop_map(|(ch, tag)| Op::Cancel { ch, tag }),
        2 => i.clone().prop_map(Op::Drain),
        4 => i.clone().prop_map(Op::Ack),
        2 => (i.clone(), any::<bool>()).prop_map(|(m, requeue)| Op::Reject { m, requeue }),
        1 => i.clone().prop_map(Op::ExtendLease),
        2 => i.clone().prop_map(Op::FreeMessage),
        1 => any::<u8>().prop_map(Op::Null),
        1 => any::<u8>().prop_map(Op::NotUtf8),
    ]
}

thread_local! {
    /// Deliveries handed to the consume callback, owned by the test.
    static DELIVERED: RefCell<Vec<*mut dashi_message>> = const { RefCell::new(Vec::new()) };
}

unsafe extern "C" fn on_message(_userdata: *mut c_void, m: *mut dashi_message) {
    DELIVERED.with(|d| d.borrow_mut().push(m));
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

/// The body of a message as the id it was published with.
fn id_of(m: *const dashi_message) -> u64 {
    let mut p = null();
    let mut n = 0;
    // SAFETY: a live message; the view is read before it is freed.
    unsafe { dashi_message_body(m, &mut p, &mut n) };
    // SAFETY: `n` bytes at `p`, valid while the message lives.
    let body = unsafe { std::slice::from_raw_parts(p, n) };
    std::str::from_utf8(body).unwrap().parse().unwrap()
}

struct Msg {
    ptr: *mut dashi_message,
    id: u64,
}

/// The handles alive in one run, and what the results said happened.
struct World {
    url: String,
    conns: Vec<*mut dashi_connection>,
    /// Channels with the index of their connection in `conns` at open time
    /// (None once that connection was freed).
    chans: Vec<(*mut dashi_channel, Option<usize>)>,
    msgs: Vec<Msg>,
    next_id: u64,
    /// Ids a publish reported stored (sync `DASHI_OK`), or that a pipelined
    /// publish sent and no confirm failed.
    stored: BTreeMap<u64, &'static str>,
    /// Pipelined publishes awaiting `wait_for_confirms` per channel.
    pending: Vec<(usize, u64, &'static str)>,
    /// Pipelined publishes whose channel went before its confirms were
    /// read: stored or not, at most once.
    maybe: BTreeMap<u64, &'static str>,
    /// Ids settled for good (acked, or rejected without requeue).
    settled: BTreeMap<u64, u32>,
}

/// Results any call on a handle whose connection or channel is gone, or on
/// a message settled or restored before, may give.
fn closed_or_settled(r: dashi_result) -> bool {
    matches!(
        r,
        DASHI_CHANNEL_CLOSED
            | DASHI_CONNECTION_CLOSED
            | DASHI_ALREADY_SETTLED
            | DASHI_RESTORED
            | DASHI_UNKNOWN_TAG
    )
}

impl World {
    fn new(url: String) -> Self {
        World {
            url,
            conns: Vec::new(),
            chans: Vec::new(),
            msgs: Vec::new(),
            next_id: 1,
            stored: BTreeMap::new(),
            pending: Vec::new(),
            maybe: BTreeMap::new(),
            settled: BTreeMap::new(),
        }
    }

    fn open_connection(&mut self) {
        let url = c(&self.url);
        let mut out = null_mut();
        // SAFETY: valid string and out-pointer.
        let r = unsafe { dashi_connection_open(url.as_ptr(), &mut out) };
        assert_eq!(r, DASHI_OK);
        self.conns.push(out);
    }

    fn chan(&self, i: usize) -> Option<(usize, *mut dashi_channel)> {
        (!self.chans.is_empty()).then(|| {
            let k = i % self.chans.len();
            (k, self.chans[k].0)
        })
    }

    fn publish_id(&mut self) -> (u64, CString) {
        let id = self.next_id;
        self.next_id += 1;
        (id, c(&id.to_string()))
    }

    fn take(&mut self, m: *mut dashi_message) {
        let id = id_of(m);
        self.msgs.push(Msg { ptr: m, id });
    }

    fn settle(&mut self, id: u64) {
        *self.settled.entry(id).or_default() += 1;
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::OpenConnection => {
                if self.conns.len() < 3 {
                    self.open_connection();
                }
            }
            Op::FreeConnection(i) => {
                if self.conns.is_empty() {
                    return;
                }
                let k = i % self.conns.len();
                // SAFETY: a live connection, freed once (its channels and
                // messages stay alive: a wrong-order free).
                unsafe { dashi_connection_free(self.conns.remove(k)) };
                for (_, conn) in &mut self.chans {
                    *conn = match *conn {
                        Some(j) if j == k => None,
                        Some(j) if j > k => Some(j - 1),
                        other => other,
                    };
                }
            }
            Op::OpenChannel(i) => {
                if self.conns.is_empty() || self.chans.len() >= 4 {
                    return;
                }
                let k = i % self.conns.len();
                let mut out = null_mut();
                // SAFETY: a live connection and an out-pointer.
                let r = unsafe { dashi_channel_open(self.conns[k], &mut out) };
                assert_eq!(r, DASHI_OK);
                for q in QUEUES {
                    let q = c(q);
                    // SAFETY: a live channel, valid strings.
                    assert_eq!(unsafe { dashi_queue_declare(out, q.as_ptr(), 3) }, DASHI_OK);
                }
                self.chans.push((out, Some(k)));
            }
            Op::FreeChannel(i) => {
                if let Some((k, ch)) = self.chan(i) {
                    self.unconfirmed(k);
                    for p in &mut self.pending {
                        if p.0 > k {
                            p.0 -= 1;
                        }
                    }
                    self.chans.remove(k);
                    // SAFETY: a live channel, freed once.
                    unsafe { dashi_channel_free(ch) };
                }
            }
            Op::Publish { ch, q, prio } => {
                let Some((k, ch)) = self.chan(ch) else { return };
                let (id, body) = self.publish_id();
                let (ex, rk) = (c(""), c(QUEUES[q]));
                let b = body.as_bytes();
                // SAFETY: live channel, valid strings and body.
                let r = unsafe {
                    dashi_publish(ch, ex.as_ptr(), rk.as_ptr(), b.as_ptr(), b.len(), prio)
                };
                if r == DASHI_OK {
                    self.stored.insert(id, QUEUES[q]);
                } else {
                    assert!(self.chans[k].1.is_none() && closed_or_settled(r), "{r:?}");
                }
            }
            Op::PublishAsync { ch, q } => {
                let Some((k, ch)) = self.chan(ch) else { return };
                let (id, body) = self.publish_id();
                let (ex, rk) = (c(""), c(QUEUES[q]));
                let b = body.as_bytes();
                // SAFETY: live channel, valid strings and body.
                let r = unsafe {
                    dashi_publish_async(ch, ex.as_ptr(), rk.as_ptr(), b.as_ptr(), b.len(), 0)
                };
                if r == DASHI_OK {
                    self.pending.push((k, id, QUEUES[q]));
                } else {
                    assert!(self.chans[k].1.is_none() && closed_or_settled(r), "{r:?}");
                }
            }
            Op::WaitForConfirms(i) => {
                let Some((k, ch)) = self.chan(i) else { return };
                let mut failed = 0usize;
                // SAFETY: live channel, writable out-pointer.
                let r = unsafe { dashi_wait_for_confirms(ch, 10_000, &mut failed) };
                // Nothing here fails a sync: every pipelined publish that
                // was taken is confirmed.
                assert!(
                    r == DASHI_OK || (self.chans[k].1.is_none() && closed_or_settled(r)),
                    "{r:?}"
                );
                self.confirm_channel(k);
            }
            Op::Get { ch, q } => {
                let Some((k, ch)) = self.chan(ch) else { return };
                let queue = c(QUEUES[q]);
                let mut out = null_mut();
                // SAFETY: live channel, valid string and out-pointer.
                let r = unsafe { dashi_get(ch, queue.as_ptr(), 0, &mut out) };
                match r {
                    DASHI_OK => self.take(out),
                    DASHI_TIMEOUT => assert!(out.is_null(), "written on failure"),
                    r => assert!(self.chans[k].1.is_none() && closed_or_settled(r), "{r:?}"),
                }
            }
            Op::Consume { ch, q, prefetch } => {
                let Some((k, ch)) = self.chan(ch) else { return };
                let queue = c(QUEUES[q]);
                let mut tag = 0;
                // SAFETY: live channel, a callback valid for the test.
                let r = unsafe {
                    dashi_consume(
                        ch,
                        queue.as_ptr(),
                        prefetch,
                        Some(on_message),
                        null_mut(),
                        &mut tag,
                    )
                };
                assert!(
                    r == DASHI_OK || (self.chans[k].1.is_none() && closed_or_settled(r)),
                    "{r:?}"
                );
            }
            Op::Cancel { ch, tag } => {
                let Some((k, ch)) = self.chan(ch) else { return };
                // SAFETY: a live channel.
                let r = unsafe { dashi_cancel(ch, tag) };
                assert!(
                    matches!(r, DASHI_OK | DASHI_UNKNOWN_CONSUMER)
                        || (self.chans[k].1.is_none() && closed_or_settled(r)),
                    "{r:?}"
                );
            }
            Op::Drain(i) => {
                if self.conns.is_empty() {
                    return;
                }
                let conn = self.conns[i % self.conns.len()];
                // SAFETY: a live connection.
                let r = unsafe { dashi_drain_events(conn, 0) };
                assert!(matches!(r, DASHI_OK | DASHI_TIMEOUT), "{r:?}");
                for m in DELIVERED.with(|d| std::mem::take(&mut *d.borrow_mut())) {
                    self.take(m);
                }
            }
            Op::Ack(i) => {
                let Some(m) = self.msg(i) else { return };
                // SAFETY: a live message.
                match unsafe { dashi_ack(m.ptr) } {
                    DASHI_OK => self.settle(m.id),
                    r => assert!(closed_or_settled(r), "{r:?}"),
                }
            }
            Op::Reject { m, requeue } => {
                let Some(m) = self.msg(m) else { return };
                // SAFETY: a live message.
                match unsafe { dashi_reject(m.ptr, requeue) } {
                    DASHI_OK if !requeue => self.settle(m.id),
                    DASHI_OK => {}
                    r => assert!(closed_or_settled(r), "{r:?}"),
                }
            }
            Op::ExtendLease(i) => {
                let Some(m) = self.msg(i) else { return };
                // SAFETY: a live message.
                let r = unsafe { dashi_message_extend_lease(m.ptr, 60_000) };
                assert!(r == DASHI_OK || closed_or_settled(r), "{r:?}");
            }
            Op::FreeMessage(i) => {
                if self.msgs.is_empty() {
                    return;
                }
                let m = self.msgs.remove(i % self.msgs.len());
                // SAFETY: a live message, freed once.
                unsafe { dashi_message_free(m.ptr) };
            }
            Op::Null(which) => self.null_call(which),
            Op::NotUtf8(which) => self.not_utf8(which),
        }
    }

    fn msg(&self, i: usize) -> Option<&Msg> {
        (!self.msgs.is_empty()).then(|| &self.msgs[i % self.msgs.len()])
    }

    /// After a `wait_for_confirms` that returned, the channel's pipelined
    /// publishes are stored (none of them can fail here).
    fn confirm_channel(&mut self, k: usize) {
        let (done, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.0 == k);
        self.pending = rest;
        for (_, id, q) in done {
            self.stored.insert(id, q);
        }
    }

    /// The channel's pipelined publishes whose confirms nobody will read.
    fn unconfirmed(&mut self, k: usize) {
        let (gone, rest): (Vec<_>, Vec<_>) = self.pending.drain(..).partition(|p| p.0 == k);
        self.pending = rest;
        for (_, id, q) in gone {
            self.maybe.insert(id, q);
        }
    }

    fn null_call(&mut self, which: u8) {
        let q = c("q0");
        let ch = self.chans.first().map_or(null_mut(), |c| c.0);
        let conn = self.conns.first().copied().unwrap_or(null_mut());
        let mut out_ch = null_mut();
        let mut out_m: *mut dashi_message = null_mut();
        let mut tag = 0u64;
        // SAFETY: each call passes a NULL where the header allows none; the
        // other arguments are live or NULL too.
        let r = unsafe {
            match which % 10 {
                0 => dashi_connection_open(null(), &mut null_mut()),
                1 => dashi_channel_open(null(), &mut out_ch),
                2 => dashi_queue_declare(ch, null(), 0),
                3 => dashi_publish(null(), q.as_ptr(), q.as_ptr(), null(), 0, 0),
                4 => dashi_publish(ch, q.as_ptr(), q.as_ptr(), null(), 3, 0),
                5 => dashi_get(ch, q.as_ptr(), 0, null_mut()),
                6 => dashi_consume(ch, q.as_ptr(), 0, None, null_mut(), &mut tag),
                7 => dashi_ack(null()),
                8 => dashi_drain_events(null(), 0),
                _ => {
                    if conn.is_null() {
                        dashi_get(null(), q.as_ptr(), 0, &mut out_m)
                    } else {
                        dashi_queue_stats(conn, q.as_ptr(), null_mut())
                    }
                }
            }
        };
        assert_eq!(r, DASHI_NULL_PARAMETER, "NULL call {which}");
        assert!(out_ch.is_null() && out_m.is_null(), "written on failure");
        // NULL frees are no-ops.
        // SAFETY: NULL is allowed.
        unsafe {
            dashi_message_free(null_mut());
            dashi_channel_free(null_mut());
            dashi_connection_free(null_mut());
        }
    }

    fn not_utf8(&mut self, which: u8) {
        let Some(&(ch, Some(_))) = self.chans.first() else {
            return;
        };
        let bad = [0xffu8, 0xfe, b'q', 0];
        let bad = bad.as_ptr().cast::<c_char>();
        let q = c("q0");
        let mut out = null_mut();
        // SAFETY: NUL-terminated bytes that are not UTF-8; a live channel.
        let r = unsafe {
            match which % 4 {
                0 => dashi_queue_declare(ch, bad, 0),
                1 => dashi_publish(ch, bad, q.as_ptr(), null(), 0, 0),
                2 => dashi_get(ch, bad, 0, &mut out),
                _ => dashi_connection_open(bad, &mut null_mut()),
            }
        };
        assert_eq!(r, DASHI_INVALID_ARGUMENT, "not UTF-8, call {which}");
        assert!(out.is_null());
    }

    /// Frees everything, then reads what is left in the queues on a fresh
    /// connection: every stored id is settled once or still there, once.
    fn finish(mut self) {
        for m in self.msgs.drain(..) {
            // SAFETY: live messages, freed once.
            unsafe { dashi_message_free(m.ptr) };
        }
        for k in 0..self.chans.len() {
            if self.chans[k].1.is_some() {
                let ch = self.chans[k].0;
                // SAFETY: a live channel.
                let r = unsafe { dashi_wait_for_confirms(ch, 10_000, null_mut()) };
                assert_eq!(r, DASHI_OK);
                self.confirm_channel(k);
            } else {
                self.unconfirmed(k);
            }
        }
        // A fresh connection first: a memory:// instance lives while one
        // of its connections does.
        let old: Vec<_> = self.conns.drain(..).collect();
        self.open_connection();
        let conn = self.conns[0];
        for (ch, _) in self.chans.drain(..) {
            // SAFETY: live channels, freed once.
            unsafe { dashi_channel_free(ch) };
        }
        for c in old {
            // SAFETY: live connections, freed once.
            unsafe { dashi_connection_free(c) };
        }
        let mut ch = null_mut();
        // SAFETY: a live connection.
        assert_eq!(unsafe { dashi_channel_open(conn, &mut ch) }, DASHI_OK);
        let mut left: BTreeMap<u64, u32> = BTreeMap::new();
        for q in QUEUES {
            let queue = c(q);
            // SAFETY: a live channel, a valid string.
            let r = unsafe { dashi_queue_declare(ch, queue.as_ptr(), 3) };
            assert_eq!(r, DASHI_OK);
            loop {
                let mut m = null_mut();
                // SAFETY: a live channel and out-pointer.
                match unsafe { dashi_get(ch, queue.as_ptr(), 0, &mut m) } {
                    DASHI_OK => {
                        let id = id_of(m);
                        let published = self.stored.get(&id).or(self.maybe.get(&id));
                        assert_eq!(published, Some(&q), "message {id} is in {q}");
                        *left.entry(id).or_default() += 1;
                        // SAFETY: a live message.
                        unsafe {
                            assert_eq!(dashi_ack(m), DASHI_OK);
                            dashi_message_free(m);
                        }
                    }
                    DASHI_TIMEOUT => break,
                    r => panic!("{r:?}"),
                }
            }
        }
        // SAFETY: live handles, freed once.
        unsafe {
            dashi_channel_free(ch);
            dashi_connection_free(conn);
        }
        for (id, q) in &self.stored {
            let seen =
                self.settled.get(id).copied().unwrap_or(0) + left.get(id).copied().unwrap_or(0);
            assert_eq!(seen, 1, "message {id} of {q}: settled or left {seen} times");
        }
        for (id, q) in &self.maybe {
            let seen =
                self.settled.get(id).copied().unwrap_or(0) + left.get(id).copied().unwrap_or(0);
            assert!(
                seen <= 1,
                "message {id} of {q}: settled or left {seen} times"
            );
        }
        for id in self.settled.keys().chain(left.keys()) {
            assert!(
                self.stored.contains_key(id) || self.maybe.contains_key(id),
                "{id} was never published"
            );
        }
    }
}

/// `PROPTEST_CASES` when set (a longer run), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run(url: String, ops: &[Op]) {
    let mut w = World::new(url);
    w.open_connection();
    for op in ops {
        w.apply(op);
    }
    w.finish();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(64)))]

    #[test]
    fn random_call_sequences_on_memory(ops in prop::collection::vec(op(), 1..60)) {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        run(format!("memory://calls-{n}"), &ops);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn random_call_sequences_on_local(ops in prop::collection::vec(op(), 1..60)) {
        let dir = TestDir::new();
        run(format!("local://{}", dir.join("store").display()), &ops);
    }
}
