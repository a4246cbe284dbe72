//! One core: a thread that owns an io_uring and runs a single-threaded
//! executor of the tasks sent to it.
//!
//! # Invariants
//! - Only this thread polls its tasks and touches its ring; other threads reach
//!   it through lock-free queues (`inbox` for new tasks, `remote_ready` for
//!   wake-ups) and the doorbell.
//! - Tasks sent from one thread run in the order sent (the inbox is FIFO).
//! - A task that panics fails its own join handle and nothing else; a panic of
//!   the core loop itself fails every task of the core with
//!   `RtError::CorePanicked`, later submissions too, and `Runtime::health`
//!   reports it.
//! - On stop the core runs its tasks to completion or until the shutdown
//!   deadline, then fails the rest; it never waits without a deadline.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crossbeam_queue::SegQueue;
use io_uring::IoUring;

use super::doorbell::Doorbell;
use super::reactor::{self, Reactor};
use super::task::{Completer, Fail, JoinSlot};
use super::{RtError, RuntimeConfig};

/// Counters of one core, written by the core (and submitters), read by stats.
#[derive(Debug, Default)]
pub(crate) struct CoreCounters {
    pub(crate) submitted: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) enters: AtomicU64,
    pub(crate) tasks_spawned: AtomicU64,
    pub(crate) tasks_done: AtomicU64,
    pub(crate) idle_ns: AtomicU64,
}

/// Work for a core from another thread.
pub(crate) trait Job: Send {
    fn run(self: Box<Self>, exec: &mut Executor);
    fn fail(self: Box<Self>, e: RtError);
}

pub(crate) enum Msg {
    Job(Box<dyn Job>),
    /// Test hook: panic in the core loop, outside any task.
    Panic,
}

/// The part of a core other threads see.
pub(crate) struct CoreShared {
    pub(crate) id: usize,
    pub(crate) inbox: SegQueue<Msg>,
    pub(crate) remote_ready: SegQueue<u64>,
    pub(crate) doorbell: Doorbell,
    eventfd: OwnedFd,
    pub(crate) stats: CoreCounters,
    pub(crate) stopping: AtomicBool,
    pub(crate) closed: AtomicBool,
    pub(crate) dead: OnceLock<String>,
    pub(crate) started: Instant,
}

impl CoreShared {
    pub(crate) fn new(id: usize) -> std::io::Result<Self> {
        use rustix::event::{eventfd, EventfdFlags};
        let eventfd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(CoreShared {
            id,
            inbox: SegQueue::new(),
            remote_ready: SegQueue::new(),
            doorbell: Doorbell::default(),
            eventfd,
            stats: CoreCounters::default(),
            stopping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            dead: OnceLock::new(),
            started: Instant::now(),
        })
    }

    pub(crate) fn eventfd_raw(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Wakes the core out of its sleep (one eventfd write completes the read
    /// armed on its ring).
    pub(crate) fn kick(&self) {
        // An error (counter overflow, EAGAIN) means a wake-up is already pending.
        let _ = rustix::io::write(&self.eventfd, &1u64.to_ne_bytes());
    }

    /// The error new work gets once this core stopped taking it.
    pub(crate) fn closed_error(&self) -> RtError {
        match self.dead.get() {
            Some(message) => RtError::CorePanicked {
                core: self.id,
                message: message.clone(),
            },
            None => RtError::ShuttingDown,
        }
    }

    pub(crate) fn send(&self, msg: Msg) {
        if self.closed.load(SeqCst) {
            if let Msg::Job(j) = msg {
                j.fail(self.closed_error());
            }
            return;
        }
        self.inbox.push(msg);
        if self.doorbell.ring() {
            self.kick();
        }
        // The core may have closed between the check and the push: then it
        // will not drain the inbox again, so whoever sees `closed` does.
        std::sync::atomic::fence(SeqCst);
        if self.closed.load(SeqCst) {
            self.fail_inbox();
        }
    }

    pub(crate) fn fail_inbox(&self) {
        while let Some(m) = self.inbox.pop() {
            if let Msg::Job(j) = m {
                j.fail(self.closed_error());
            }
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    static LOCAL_READY: RefCell<VecDeque<u64>> = const { RefCell::new(VecDeque::new()) };
}

/// The core this thread is, if it is one.
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

struct TaskWaker {
    core: Arc<CoreShared>,
    key: u64,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if current() == Some(self.core.id) {
            LOCAL_READY.with(|r| r.borrow_mut().push_back(self.key));
        } else {
            self.core.remote_ready.push(self.key);
            if self.core.doorbell.ring() {
                self.core.kick();
            }
        }
    }
}

struct Task {
    gen: u32,
    fut: Pin<Box<dyn Future<Output = ()>>>,
    waker: Waker,
    fail: Arc<dyn Fail>,
}

/// The tasks of one core.
pub(crate) struct Executor {
    shared: Arc<CoreShared>,
    tasks: Vec<Option<Task>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    live: usize,
}

impl Executor {
    fn new(shared: Arc<CoreShared>) -> Self {
        Executor {
            shared,
            tasks: Vec::new(),
            gens: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }

    /// Adds a task (its future may be `!Send`: it never leaves this core).
    pub(crate) fn spawn_local(
        &mut self,
        fut: Pin<Box<dyn Future<Output = ()>>>,
        fail: Arc<dyn Fail>,
    ) {
        let index = self.free.pop().unwrap_or_else(|| {
            self.tasks.push(None);
            self.gens.push(0);
            (self.tasks.len() - 1) as u32
        });
        let gen = self.gens[index as usize].wrapping_add(1);
        self.gens[index as usize] = gen;
        let key = (u64::from(gen) << 32) | u64::from(index);
        let waker = Waker::from(Arc::new(TaskWaker {
            core: self.shared.clone(),
            key,
        }));
        self.tasks[index as usize] = Some(Task {
            gen,
            fut,
            waker,
            fail,
        });
        self.live += 1;
        self.shared.stats.tasks_spawned.fetch_add(1, Relaxed);
        LOCAL_READY.with(|r| r.borrow_mut().push_back(key));
    }

    fn poll(&mut self, key: u64) {
        let index = (key & 0xffff_ffff) as usize;
        let gen = (key >> 32) as u32;
        let Some(Some(mut task)) = self.tasks.get_mut(index).map(Option::take) else {
            return;
        };
        if task.gen != gen {
            self.tasks[index] = Some(task);
            return;
        }
        let waker = task.waker.clone();
        let mut cx = Context::from_waker(&waker);
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| task.fut.as_mut().poll(&mut cx)));
        match outcome {
            Ok(Poll::Pending) => self.tasks[index] = Some(task),
            Ok(Poll::Ready(())) => self.finish(index as u32),
            Err(payload) => {
                let message = panic_message(payload.as_ref());
                tracing::warn!(core = self.shared.id, %message, "task panicked");
                task.fail.fail(RtError::TaskPanicked(message));
                drop(task);
                self.finish(index as u32);
            }
        }
    }

    fn finish(&mut self, index: u32) {
        self.free.push(index);
        self.live -= 1;
        self.shared.stats.tasks_done.fetch_add(1, Relaxed);
    }

    /// Fails and drops every task.
    fn fail_all(&mut self, e: &RtError) {
        for t in self.tasks.iter_mut() {
            if let Some(task) = t.take() {
                task.fail.fail(e.clone());
                drop(task);
            }
        }
        self.live = 0;
    }
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// A spawn request: `f` builds the task's future on the core.
pub(crate) struct SpawnJob<F, T> {
    pub(crate) f: F,
    pub(crate) slot: Arc<JoinSlot<T>>,
}

impl<F, Fut, T> Job for SpawnJob<F, T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, exec: &mut Executor) {
        let SpawnJob { f, slot } = *self;
        let completer = Completer {
            slot: Some(slot.clone()),
            on_drop: || RtError::ShuttingDown,
        };
        let fut = async move {
            let v = f().await;
            completer.finish(v);
        };
        exec.spawn_local(Box::pin(fut), slot);
    }

    fn fail(self: Box<Self>, e: RtError) {
        self.slot.complete(Err(e));
    }
}

const BATCH: usize = 1024;

fn run(shared: &Arc<CoreShared>, exec: &mut Executor, cfg: &RuntimeConfig) -> std::io::Result<()> {
    let mut deadline: Option<Instant> = None;
    loop {
        // Intake: new tasks, then wake-ups from other threads.
        for _ in 0..BATCH {
            match shared.inbox.pop() {
                Some(Msg::Job(j)) if deadline.is_some() => j.fail(RtError::ShuttingDown),
                Some(Msg::Job(j)) => j.run(exec),
                Some(Msg::Panic) => panic!("core {} was asked to panic (test hook)", shared.id),
                None => break,
            }
        }
        while let Some(k) = shared.remote_ready.pop() {
            LOCAL_READY.with(|r| r.borrow_mut().push_back(k));
        }
        // Run what is ready; SQEs they queue go out together below.
        for _ in 0..BATCH {
            let Some(k) = LOCAL_READY.with(|r| r.borrow_mut().pop_front()) else {
                break;
            };
            exec.poll(k);
        }
        reactor::with(|r| -> std::io::Result<()> {
            r.submit()?;
            r.reap();
            Ok(())
        })
        .unwrap_or(Ok(()))?;
        if shared.stopping.load(SeqCst) {
            if deadline.is_none() {
                // Idle waits end now; what they guard has nothing to finish.
                reactor::with(|r| r.cancel_idle());
            }
            let d = *deadline.get_or_insert_with(|| Instant::now() + cfg.shutdown_timeout);
            if exec.live == 0 || Instant::now() >= d {
                return Ok(());
            }
        }
        let idle = LOCAL_READY.with(|r| r.borrow().is_empty())
            && shared.inbox.is_empty()
            && shared.remote_ready.is_empty();
        if idle && deadline.is_none() && !cfg.idle_spin.is_zero() {
            // Poll for a while before sleeping: work that arrives now costs
            // neither the submitter nor this core a syscall.
            let until = Instant::now() + cfg.idle_spin;
            let mut spins = 0u32;
            let woke = loop {
                if !shared.inbox.is_empty()
                    || !shared.remote_ready.is_empty()
                    || shared.stopping.load(Relaxed)
                    || reactor::with(|r| r.has_completions()).unwrap_or(false)
                {
                    break true;
                }
                spins += 1;
                if spins % 64 == 0 && Instant::now() >= until {
                    break false;
                }
                std::hint::spin_loop();
            };
            if woke {
                reactor::with(|r| r.reap());
                continue;
            }
        }
        if idle {
            shared.doorbell.prepare_sleep();
            let still_idle = shared.inbox.is_empty()
                && shared.remote_ready.is_empty()
                && (deadline.is_some() || !shared.stopping.load(SeqCst));
            if still_idle {
                let t0 = Instant::now();
                reactor::with(|r| r.wait(deadline)).unwrap_or(Ok(()))?;
                shared
                    .stats
                    .idle_ns
                    .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
            }
            shared.doorbell.awake();
            reactor::with(|r| r.reap());
        }
    }
}

/// Body of a core thread.
pub(crate) fn main(
    shared: Arc<CoreShared>,
    cfg: RuntimeConfig,
    started: std::sync::mpsc::Sender<Result<(), RtError>>,
) {
    if cfg.pin {
        if let Err(e) = pin_to_cpu(shared.id) {
            let _ = started.send(Err(RtError::Start {
                core: shared.id,
                reason: format!("pinning to a CPU failed: {e}"),
            }));
            return;
        }
    }
    let ring = match IoUring::new(cfg.ring_entries) {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(RtError::Start {
                core: shared.id,
                reason: super::probe::explain_setup_error(&e),
            }));
            return;
        }
    };
    reactor::install(Reactor::new(ring, shared.clone()));
    CURRENT.with(|c| c.set(Some(shared.id)));
    let _ = started.send(Ok(()));
    drop(started);

    let mut exec = Executor::new(shared.clone());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&shared, &mut exec, &cfg)));
    let error = match outcome {
        Ok(Ok(())) => RtError::ShuttingDown,
        Ok(Err(io)) => {
            let message = format!("io_uring_enter failed: {io}");
            let _ = shared.dead.set(message.clone());
            RtError::CorePanicked {
                core: shared.id,
                message,
            }
        }
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            let _ = shared.dead.set(message.clone());
            tracing::error!(core = shared.id, %message, "core panicked");
            RtError::CorePanicked {
                core: shared.id,
                message,
            }
        }
    };
    shared.closed.store(true, SeqCst);
    exec.fail_all(&error);
    LOCAL_READY.with(|r| r.borrow_mut().clear());
    while shared.remote_ready.pop().is_some() {}
    shared.fail_inbox();
    if let Some(r) = reactor::uninstall() {
        let left = r.teardown(cfg.shutdown_timeout);
        if left > 0 {
            tracing::warn!(
                core = shared.id,
                left,
                "operations still in flight at shutdown were leaked"
            );
        }
    }
    CURRENT.with(|c| c.set(None));
}

fn pin_to_cpu(core: usize) -> std::io::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = rustix::thread::CpuSet::new();
    set.set(core % cpus);
    rustix::thread::sched_setaffinity(None, &set)?;
    Ok(())
}

/// How long this core has been up, for the busy ratio.
pub(crate) fn uptime(shared: &CoreShared) -> Duration {
    shared.started.elapsed()
}
