//! Push-consumer dispatch: `Connection::drain_events` waits for deliveries to
//! a connection's consumers and runs their callbacks on the calling thread.
//!
//! # Invariants
//! - One drainer per connection at a time (the drain lock); a callback that
//!   drains its own connection gets an error, not a deadlock.
//! - Consumers take turns, one message each per round, up to a batch of
//!   [`DRAIN_BATCH`]; tags are issued under one registry lock per run of the
//!   same channel.
//! - A delivery the application never saw (its consumer was cancelled before
//!   its callback ran, or its channel went away) goes back to its queue.
//! - No lost wake-up: the drainer registers on every queue and window it
//!   waits for and on the connection's close, re-checks, then parks.
//! - `Connection::arm` registers an outside waker on the same places (plus
//!   consumer changes) for event loops; a caller that arms before it drains
//!   loses no wake-up, and dropping the `Armed` guard takes every
//!   registration back.
//! - A storage failure met by a pass that dispatched nothing is returned;
//!   one met by a pass that dispatched something is dropped (the queue is
//!   tried again on the next pass).

use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use super::channel::{put_back, ChannelShared, Pending};
use super::connection::{ConnShared, Connection, DrainState};
use super::consumer::{Callback, ConsumerShared};
use super::unacked::{Slot, RESTORED};
use crate::error::Error;
use crate::notify::{thread_waker, ThreadWaker};
use crate::sync::Ordering::SeqCst;
use crate::transport::{ConnectionId, QueueStore};

/// Most deliveries dispatched by one `drain_events` pass.
pub(crate) const DRAIN_BATCH: usize = 256;

/// Polls before parking: 7 rounds of exponential `spin_loop` (1..64), then
/// rounds that also yield the CPU; about 20-50 µs in all.
const SPIN_ROUNDS: u32 = 16;

impl Connection {
    /// Waits up to `timeout` (`None` = forever) for deliveries to this
    /// connection's push consumers and runs their callbacks on this thread.
    /// Returns how many were dispatched (at least one), after dispatching every
    /// delivery that was ready (up to a batch of 256), fairly: consumers take
    /// turns one message at a time. `Err(Timeout)` when nothing came.
    ///
    /// Calling it from inside a callback of a connection this thread is
    /// already draining (directly, or through another connection's callback)
    /// is an error ([`Error::InvalidArgument`]), not a deadlock. While another
    /// thread drains this connection, it waits for that drain to end, at most
    /// until `timeout`.
    pub fn drain_events(&self, timeout: Option<Duration>) -> Result<usize, Error> {
        if DRAINING.with(|d| d.borrow().contains(&self.shared.id)) {
            return Err(Error::InvalidArgument(
                "drain_events called from inside a callback of a connection this thread is draining"
                    .into(),
            ));
        }
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut state = match deadline {
            None => self.shared.drain.lock(),
            Some(d) => self.shared.drain.try_lock_until(d).ok_or(Error::Timeout)?,
        };
        let _draining = Draining::enter(self.shared.id);
        let waker = ThreadWaker::current();
        loop {
            if self.shared.is_closed() {
                return Err(Error::ConnectionClosed);
            }
            let gen = self.shared.consumers_gen.load(SeqCst);
            if gen != state.generation || state.generation == 0 {
                state.consumers = self.shared.consumers.lock().clone();
                state.generation = gen;
            }
            let n = dispatch(&mut state);
            if n > 0 {
                return Ok(n);
            }
            if let Some(e) = state.error.take() {
                return Err(e);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::Timeout);
            }
            // Spin briefly before sleeping: a busy producer refills the queue
            // within microseconds, and parking costs a futex round trip.
            let mut spun = 0;
            let mut n = 0;
            while spun < SPIN_ROUNDS {
                for _ in 0..(1 << spun.min(6)) {
                    std::hint::spin_loop();
                }
                if spun >= 6 {
                    std::thread::yield_now();
                }
                n = dispatch(&mut state);
                if n > 0 {
                    break;
                }
                spun += 1;
            }
            if n == 0 && !self.shared.config.busy_poll.is_zero() {
                n = busy_poll(self.shared.config.busy_poll, deadline, || {
                    dispatch(&mut state)
                });
            }
            if n > 0 {
                return Ok(n);
            }
            if let Some(e) = state.error.take() {
                return Err(e);
            }
            // A consumer whose queues were all deleted is cancelled (AMQP's
            // consumer cancel notification); the user sees `is_cancelled`.
            for c in &state.consumers {
                if c.orphaned() && !c.cancelled.load(SeqCst) {
                    if let Some(ch) = c.channel.upgrade() {
                        let _ = ch.cancel_consumer(c);
                    }
                }
            }
            // Register everywhere a wake-up can come from, re-check, then park.
            // Consumers added or cancelled meanwhile wake us too; one added
            // before we registered shows in the generation we check next.
            let w = thread_waker(&waker);
            let changed_id = self.shared.changed.register(&w);
            if self.shared.consumers_gen.load(SeqCst) != state.generation {
                self.shared.changed.unregister(changed_id);
                continue;
            }
            let mut regs = Vec::new();
            for c in &state.consumers {
                for q in &c.queues {
                    regs.push((Reg::Queue(q.clone()), q.register(&w)));
                }
                regs.push((Reg::Window(c.clone()), c.window.notify.register(&w)));
            }
            let close_id = self.shared.close_notify.register(&w);
            let n = dispatch(&mut state);
            if n == 0 && !self.shared.is_closed() {
                waker.wait(deadline);
            }
            for (r, id) in regs {
                match r {
                    Reg::Queue(q) => q.unregister(id),
                    Reg::Window(c) => c.window.notify.unregister(id),
                }
            }
            self.shared.close_notify.unregister(close_id);
            self.shared.changed.unregister(changed_id);
            if n > 0 {
                return Ok(n);
            }
        }
    }
}

impl Connection {
    /// Arms `waker` to be woken once when `drain_events` may have work: a
    /// message for one of this connection's push consumers, room in a
    /// consumer's window, a consumer added or cancelled, or the connection
    /// closed. For event loops (epoll, libuv, asyncio): arm, wait for the
    /// wake, call `drain_events` with a zero timeout, arm again. Arm before
    /// draining, so a change after the drain's last look still wakes. A wake
    /// may be spurious (the drain found nothing); none is lost. Dropping the
    /// [`Armed`] guard takes the registrations back.
    pub fn arm(&self, waker: &Waker) -> Armed {
        let consumers = self.shared.consumers.lock().clone();
        let mut regs = Vec::with_capacity(consumers.len() * 2);
        for c in &consumers {
            for q in &c.queues {
                regs.push((Reg::Queue(q.clone()), q.register(waker)));
            }
            regs.push((Reg::Window(c.clone()), c.window.notify.register(waker)));
        }
        Armed {
            changed: self.shared.changed.register(waker),
            close: self.shared.close_notify.register(waker),
            conn: self.shared.clone(),
            regs,
        }
    }
}

/// The registrations of [`Connection::arm`]; dropping it removes them.
pub struct Armed {
    conn: Arc<ConnShared>,
    regs: Vec<(Reg, u64)>,
    changed: u64,
    close: u64,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed")
            .field("connection", &self.conn.id)
            .field("registrations", &(self.regs.len() + 2))
            .finish()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        for (r, id) in self.regs.drain(..) {
            match r {
                Reg::Queue(q) => q.unregister(id),
                Reg::Window(c) => c.window.notify.unregister(id),
            }
        }
        self.conn.changed.unregister(self.changed);
        self.conn.close_notify.unregister(self.close);
    }
}

/// Calls `poll` on the CPU until it returns non-zero, `budget` has passed or
/// `deadline` is reached; returns its last result.
pub(crate) fn busy_poll(
    budget: Duration,
    deadline: Option<Instant>,
    mut poll: impl FnMut() -> usize,
) -> usize {
    let start = Instant::now();
    let end = start.checked_add(budget);
    let end = match (end, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    loop {
        for _ in 0..64 {
            let n = poll();
            if n > 0 {
                return n;
            }
            std::hint::spin_loop();
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            return 0;
        }
    }
}

thread_local! {
    /// The connections this thread is draining, innermost last (a callback
    /// of one may drain another).
    static DRAINING: std::cell::RefCell<Vec<ConnectionId>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks this thread as draining a connection until dropped (also on unwind
/// from a panicking callback).
struct Draining(ConnectionId);

impl Draining {
    fn enter(id: ConnectionId) -> Self {
        DRAINING.with(|d| d.borrow_mut().push(id));
        Draining(id)
    }
}

impl Drop for Draining {
    fn drop(&mut self) {
        DRAINING.with(|d| {
            let mut d = d.borrow_mut();
            if let Some(i) = d.iter().rposition(|x| *x == self.0) {
                d.remove(i);
            }
        });
    }
}

enum Reg {
    Queue(Arc<dyn QueueStore>),
    Window(Arc<ConsumerShared>),
}

/// One dispatch pass: consumers take turns, one message each per round, until
/// a round yields nothing or the batch is full; then tags are issued per
/// channel and callbacks run.
fn dispatch(state: &mut DrainState) -> usize {
    let DrainState {
        consumers,
        next,
        taken,
        run,
        deliveries,
        error,
        scratch,
        ..
    } = state;
    if consumers.is_empty() {
        return 0;
    }
    let n = consumers.len();
    'rounds: loop {
        let mut any = false;
        for k in 0..n {
            let c = &consumers[(*next + k) % n];
            match c.take_many(DRAIN_BATCH - taken.len(), scratch, |env, q| {
                taken.push(Pending::new(Some(c.clone()), env, q.clone()))
            }) {
                Ok(0) => {}
                Ok(_) => {
                    any = true;
                    if taken.len() >= DRAIN_BATCH {
                        *next = (*next + k + 1) % n;
                        break 'rounds;
                    }
                }
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if !any {
            break;
        }
    }
    if taken.is_empty() {
        return 0;
    }
    // Something was delivered: a failure met on the way is not reported
    // (the failing queue is tried again on the next pass).
    if error.is_some() {
        *error = None;
    }
    // Issue tags: one registry lock per run of the same channel. A channel
    // that is gone or closed puts its run back itself (in order).
    let mut run_channel: Option<Arc<ChannelShared>> = None;
    // The consumer whose channel `run_channel` is (a consumer's channel
    // never changes): its next deliveries need no upgrade of the channel.
    let mut run_consumer: Option<&Arc<ConsumerShared>> = None;
    let mut back: Vec<Arc<Slot>> = Vec::new();
    for p in taken.drain(..) {
        let consumer = p.slot.consumer.as_ref();
        let same_consumer = match (consumer, run_consumer) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same_consumer {
            let ch = consumer.and_then(|c| c.channel.upgrade());
            let same = match (&ch, &run_channel) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !same {
                if let Some(rc) = &run_channel {
                    rc.deliver(run, deliveries);
                }
                run_channel = ch;
            }
            run_consumer = consumers
                .iter()
                .find(|c| consumer.is_some_and(|x| Arc::ptr_eq(c, x)));
        }
        if run_channel.is_some() {
            run.push(p);
        } else {
            // Channel gone between take and delivery: hand the message back.
            back.push(p.slot);
        }
    }
    if let Some(rc) = &run_channel {
        rc.deliver(run, deliveries);
    }
    let count = deliveries.len();
    // Run callbacks, holding each consumer's callback lock across its run of
    // deliveries rather than per message. A delivery is handed over (and a
    // no_ack one counts as acked) only when its callback runs; one whose
    // consumer was cancelled first goes back, in order, as it was.
    let consumers: &[Arc<ConsumerShared>] = consumers;
    let mut held: Option<(usize, parking_lot::MutexGuard<'_, Option<Callback>>)> = None;
    for d in deliveries.drain(..) {
        let found = d
            .slot
            .consumer
            .as_ref()
            .and_then(|c| consumers.iter().position(|x| Arc::ptr_eq(x, c)));
        if let Some(i) = found {
            if !consumers[i].cancelled.load(SeqCst) {
                if held.as_ref().is_none_or(|(h, _)| *h != i) {
                    release(consumers, held.take());
                    held = Some((i, consumers[i].callback.lock()));
                }
                if let Some(cb) = held.as_mut().and_then(|(_, g)| g.as_mut()) {
                    if d.no_ack {
                        d.channel.ack_no_ack(&d.slot);
                    }
                    cb(d);
                    continue;
                }
            }
        }
        if d.slot.state.settle(RESTORED).is_ok() {
            back.push(d.slot.clone());
        }
    }
    release(consumers, held.take());
    put_back(back, None);
    count
}

/// Lets go of a consumer's callback lock; a consumer cancelled meanwhile (by
/// its own callback, which made `cancel` unable to take the callback) drops
/// its callback now.
fn release(
    consumers: &[Arc<ConsumerShared>],
    held: Option<(usize, parking_lot::MutexGuard<'_, Option<Callback>>)>,
) {
    if let Some((i, mut g)) = held {
        if consumers[i].cancelled.load(SeqCst) {
            g.take();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use crate::notify::{thread_waker, Notify, ThreadWaker};
    use crate::sync::{Arc, AtomicU64, Ordering::SeqCst};

    /// The drainer's sleep against a consumer added from another thread
    /// (the connection's `changed` notifier and consumer generation): the
    /// drainer registers, compares the generation it dispatched with, and
    /// only then parks; the adder bumps the generation, then notifies. The
    /// drainer always wakes and sees the new consumer.
    #[test]
    fn a_consumer_added_while_the_drainer_sleeps_wakes_it() {
        loom::model(|| {
            let changed = Arc::new(Notify::new());
            let generation = Arc::new(AtomicU64::new(0));
            let (c2, g2) = (changed.clone(), generation.clone());
            let adder = loom::thread::spawn(move || {
                g2.fetch_add(1, SeqCst);
                c2.notify_all();
            });
            let seen = 0;
            let tw = ThreadWaker::current();
            loop {
                let id = changed.register(&thread_waker(&tw));
                if generation.load(SeqCst) != seen {
                    changed.unregister(id);
                    break;
                }
                tw.wait(None);
                changed.unregister(id);
            }
            adder.join().unwrap();
        });
    }
}
