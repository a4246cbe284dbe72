//! The per-core io_uring: where every SQE is built and every CQE lands.
//!
//! # Invariants
//! - Only the core thread touches its ring (the reactor lives in a
//!   thread-local of the core).
//! - Memory an in-flight operation points to (buffer, timespec, file) is owned
//!   by the operation's slot until its CQE arrives, even when the future that
//!   issued it was dropped (the slot is then `Abandoned` and freed on the CQE).
//!   On teardown in-flight operations are cancelled and awaited for a bounded
//!   time; whatever is still in flight then is leaked, never freed under the
//!   kernel.
//! - Idle waits ([`crate::io::idle`]) are cancelled once, when the core
//!   starts stopping; every other operation runs on until its CQE or the
//!   teardown.
//! - SQEs queued while tasks run are submitted together, with one
//!   `io_uring_enter` per loop turn (or earlier only when the SQ is full): no
//!   per-operation syscall.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types, IoUring};

use super::core_thread::CoreShared;

/// user_data of the eventfd read that wakes a sleeping core.
const EVENTFD: u64 = u64::MAX;
/// user_data of internal operations whose completion is ignored.
const IGNORED: u64 = u64::MAX - 1;

/// What an operation's SQE points to, kept alive until its CQE.
#[derive(Default)]
pub(crate) struct Resources {
    pub(crate) buf: Option<Vec<u8>>,
    // Held, never read: keeps the descriptor open until the CQE arrives, so a
    // dropped future cannot let its fd number be reused under the kernel.
    #[allow(dead_code)]
    pub(crate) file: Option<Arc<dyn AsRawFd + Send + Sync>>,
    pub(crate) timespec: Option<Box<types::Timespec>>,
    /// An idle wait: cancelled when the core starts stopping.
    pub(crate) idle: bool,
}

enum OpState {
    Free,
    Pending(Option<Waker>),
    Done(i32),
    Abandoned,
}

struct Slot {
    gen: u32,
    state: OpState,
    res: Resources,
}

pub(crate) struct Reactor {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<u32>,
    in_flight: usize,
    eventfd_armed: bool,
    eventfd_buf: Box<[u8; 8]>,
    wait_timespec: Box<types::Timespec>,
    shared: Arc<CoreShared>,
}

thread_local! {
    static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's reactor; `None` when this is not a core thread.
pub(crate) fn with<R>(f: impl FnOnce(&mut Reactor) -> R) -> Option<R> {
    REACTOR.with(|r| r.try_borrow_mut().ok()?.as_mut().map(f))
}

pub(crate) fn install(r: Reactor) {
    REACTOR.with(|slot| *slot.borrow_mut() = Some(r));
}

pub(crate) fn uninstall() -> Option<Reactor> {
    REACTOR.with(|slot| slot.borrow_mut().take())
}

fn key(index: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(index)
}

impl Reactor {
    pub(crate) fn new(ring: IoUring, shared: Arc<CoreShared>) -> Self {
        Reactor {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            eventfd_armed: false,
            eventfd_buf: Box::new([0; 8]),
            wait_timespec: Box::new(types::Timespec::new()),
            shared,
        }
    }

    fn slot(&mut self, k: u64) -> Option<&mut Slot> {
        let s = self.slots.get_mut((k & 0xffff_ffff) as usize)?;
        (s.gen == (k >> 32) as u32).then_some(s)
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in `entry` refers to memory owned by an
            // operation slot (or by the reactor itself: the eventfd buffer, the
            // wait timespec), which stays allocated until the matching CQE is
            // reaped or, on teardown, is leaked; see the module invariants.
            let pushed = unsafe { self.ring.submission().push(entry) };
            if pushed.is_ok() {
                return;
            }
            // SQ full: hand what is queued to the kernel, then retry.
            if self.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    /// Queues an operation; `build` makes its SQE from the resources as they
    /// sit in the slot (so pointers stay valid).
    pub(crate) fn start(
        &mut self,
        res: Resources,
        build: impl FnOnce(&mut Resources) -> squeue::Entry,
    ) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    gen: 0,
                    state: OpState::Free,
                    res: Resources::default(),
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.gen = slot.gen.wrapping_add(1);
        slot.state = OpState::Pending(None);
        slot.res = res;
        let k = key(index, slot.gen);
        let entry = build(&mut slot.res).user_data(k);
        self.in_flight += 1;
        self.shared.stats.submitted.fetch_add(1, Relaxed);
        self.push(&entry);
        k
    }

    fn release(&mut self, k: u64) -> Resources {
        let index = (k & 0xffff_ffff) as u32;
        match self.slot(k) {
            Some(s) => {
                s.state = OpState::Free;
                let res = std::mem::take(&mut s.res);
                self.free.push(index);
                res
            }
            None => Resources::default(),
        }
    }

    pub(crate) fn poll_op(&mut self, k: u64, cx: &mut Context<'_>) -> Poll<(i32, Resources)> {
        let Some(s) = self.slot(k) else {
            return Poll::Ready((-libc::ECANCELED, Resources::default()));
        };
        match &mut s.state {
            OpState::Done(res) => {
                let res = *res;
                Poll::Ready((res, self.release(k)))
            }
            OpState::Pending(w) => {
                match w {
                    Some(old) if old.will_wake(cx.waker()) => {}
                    _ => *w = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            OpState::Free | OpState::Abandoned => {
                Poll::Ready((-libc::ECANCELED, Resources::default()))
            }
        }
    }

    /// Whether this core is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.shared
            .stopping
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Cancels every idle wait in flight (the core is stopping): they end
    /// with `ECANCELED` at once instead of at their time.
    pub(crate) fn cancel_idle(&mut self) {
        let keys: Vec<u64> = self
            .slots
            .iter_mut()
            .enumerate()
            .filter(|(_, s)| s.res.idle && matches!(s.state, OpState::Pending(_)))
            .map(|(i, s)| {
                s.res.idle = false;
                key(i as u32, s.gen)
            })
            .collect();
        for k in keys {
            let e = opcode::AsyncCancel::new(k).build().user_data(IGNORED);
            self.push(&e);
        }
    }

    /// The future of `k` was dropped.
    pub(crate) fn drop_op(&mut self, k: u64) {
        let Some(s) = self.slot(k) else { return };
        match s.state {
            OpState::Pending(_) => s.state = OpState::Abandoned,
            OpState::Done(_) => {
                self.release(k);
            }
            OpState::Free | OpState::Abandoned => {}
        }
    }

    /// Submits queued SQEs (one `io_uring_enter`), if any.
    pub(crate) fn submit(&mut self) -> std::io::Result<usize> {
        if self.ring.submission().is_empty() {
            return Ok(0);
        }
        self.shared.stats.enters.fetch_add(1, Relaxed);
        self.ring.submit()
    }

    /// Processes every available CQE; returns how many.
    pub(crate) fn reap(&mut self) -> usize {
        let mut n = 0;
        let done: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|c| (c.user_data(), c.result()))
            .collect();
        for (k, res) in done {
            n += 1;
            match k {
                EVENTFD => self.eventfd_armed = false,
                IGNORED => {}
                k => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    self.shared.stats.completed.fetch_add(1, Relaxed);
                    let Some(s) = self.slot(k) else { continue };
                    match std::mem::replace(&mut s.state, OpState::Done(res)) {
                        OpState::Pending(Some(w)) => w.wake(),
                        OpState::Abandoned => {
                            self.release(k);
                        }
                        _ => {}
                    }
                }
            }
        }
        n
    }

    /// True when a CQE is waiting (no syscall).
    pub(crate) fn has_completions(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Blocks until a CQE arrives: an operation completes, a submitter writes
    /// the eventfd, or `until` passes.
    pub(crate) fn wait(&mut self, until: Option<Instant>) -> std::io::Result<()> {
        if !self.eventfd_armed {
            let fd = self.shared.eventfd_raw();
            let buf = self.eventfd_buf.as_mut_ptr();
            let e = opcode::Read::new(types::Fd(fd), buf, 8)
                .build()
                .user_data(EVENTFD);
            self.push(&e);
            self.eventfd_armed = true;
        }
        if let Some(until) = until {
            let d = until.saturating_duration_since(Instant::now());
            *self.wait_timespec = types::Timespec::new()
                .sec(d.as_secs())
                .nsec(d.subsec_nanos());
            let ts: *const types::Timespec = &*self.wait_timespec;
            let e = opcode::Timeout::new(ts).build().user_data(IGNORED);
            self.push(&e);
        }
        self.shared.stats.enters.fetch_add(1, Relaxed);
        if !self.ring.params().is_feature_poll_32bits() {
            // Before Linux 5.9 (the first with this feature), completions
            // run as task work did not interrupt a `poll`, and an
            // overflowed completion queue did not show in the ring's
            // flags: sleep in the kernel's own wait there.
            return match self.ring.submit_and_wait(1) {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => Ok(()),
                Err(e) => Err(e),
            };
        }
        match self.ring.submit() {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(()),
            Err(e) => return Err(e),
        }
        if self.has_completions() {
            return Ok(());
        }
        // Sleep in `poll` on the ring rather than in `io_uring_enter`: the
        // two wake alike (the ring's descriptor is readable once a CQE is
        // posted, or work for this thread is pending), and tools that run
        // one thread at a time (valgrind) know `poll` blocks, where a
        // thread asleep in `io_uring_enter` kept every other thread from
        // running, the one that would wake it included.
        let mut fds = [rustix::event::PollFd::new(
            &self.ring,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Cancels in-flight operations and waits up to `grace` for their CQEs.
    /// Returns how many were still in flight (and were leaked with the ring).
    pub(crate) fn teardown(mut self, grace: Duration) -> usize {
        let until = Instant::now() + grace;
        let keys: Vec<u64> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s.state, OpState::Pending(_) | OpState::Abandoned))
            .map(|(i, s)| key(i as u32, s.gen))
            .collect();
        for k in keys {
            let e = opcode::AsyncCancel::new(k).build().user_data(IGNORED);
            self.push(&e);
        }
        if self.eventfd_armed {
            // Complete the armed read so its buffer can be freed.
            self.shared.kick();
        }
        while (self.in_flight > 0 || self.eventfd_armed) && Instant::now() < until {
            if self
                .wait(Some(until.min(Instant::now() + Duration::from_millis(50))))
                .is_err()
            {
                break;
            }
            self.reap();
        }
        let left = self.in_flight;
        if left > 0 || self.eventfd_armed {
            // The kernel may still write into these buffers: never free them.
            std::mem::forget(self);
        }
        left
    }
}
