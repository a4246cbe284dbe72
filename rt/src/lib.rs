//! # dashi-rt
//!
//! dashi's thread-per-core runtime: N core threads, each owning one io_uring
//! and a single-threaded executor. Transports shard their queues over the
//! cores (`Runtime::core_for`), send work to a core with `Runtime::spawn`, and
//! do I/O inside it with [`io`]. Nothing outside this crate names the ring or
//! the executor, so either can be replaced behind this seam.
//!
//! Layout: [`Runtime`] and its settings here; `core_thread.rs` (a core's
//! loop: intake, run, submit, reap, sleep), `doorbell.rs` (the wake-up
//! handshake, loom-checked), `reactor.rs` (the ring and in-flight operations),
//! `task.rs` (join handles), `probe.rs` (what the kernel offers), [`io`] (the
//! operations a core task awaits).
//!
//! # Invariants
//! - Only core k runs core k's tasks and touches its ring (shard ownership).
//! - Submitting from any thread is a lock-free queue push plus the doorbell
//!   handshake: no syscall while the core is busy, one eventfd write to wake
//!   it when it sleeps.
//! - No per-operation syscall: SQEs queued during one turn of the core loop
//!   go to the kernel with one `io_uring_enter`.
//! - Timers are `IORING_OP_TIMEOUT`s on the core's ring; there is no helper
//!   thread.
//! - Shutdown is bounded: `shutdown` (and drop) finish or fail every task
//!   within the configured time and never wait without a deadline.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod core_thread;
mod doorbell;
pub mod io;
mod probe;
mod reactor;
mod sync;
mod task;

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub use task::JoinHandle;

use self::core_thread::{CoreShared, Msg, SpawnJob};

/// Errors of the runtime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtError {
    /// io_uring cannot be used here (disabled, too old a kernel, no memory).
    #[error("io_uring is unavailable: {0}")]
    Unavailable(String),
    /// The kernel's io_uring lacks operations the engine issues.
    #[error("the kernel's io_uring lacks operations dashi needs: {}", .0.join(", "))]
    MissingOpcodes(Vec<&'static str>),
    /// A core could not start.
    #[error("core {core} failed to start: {reason}")]
    Start {
        /// The core.
        core: usize,
        /// Why.
        reason: String,
    },
    /// The core running (or asked to run) the task panicked outside any task.
    #[error("core {core} panicked: {message}")]
    CorePanicked {
        /// The core.
        core: usize,
        /// The panic message.
        message: String,
    },
    /// The task itself panicked.
    #[error("task panicked: {0}")]
    TaskPanicked(String),
    /// The runtime is stopping or stopped.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// Some cores did not stop within the shutdown time.
    #[error("{stuck} core(s) did not stop within {timeout:?}")]
    ShutdownTimedOut {
        /// How many.
        stuck: usize,
        /// The time allowed.
        timeout: Duration,
    },
    /// No core with that index.
    #[error("no core {core}: the runtime has {cores}")]
    NoSuchCore {
        /// Asked for.
        core: usize,
        /// Existing.
        cores: usize,
    },
    /// An I/O operation was called off a core thread.
    #[error("not on a dashi core thread")]
    NotOnCore,
    /// The result of this handle was already taken.
    #[error("the task's result was already taken")]
    ResultTaken,
    /// The runtime was started by a process this one was forked from: its
    /// cores are threads of that process, not of this one.
    #[error("the runtime's cores run in the process this one was forked from, not here")]
    Forked,
}

/// Runtime settings.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// Core threads (default: the available CPUs).
    pub cores: usize,
    /// Pin core k to CPU k (modulo the CPU count).
    pub pin: bool,
    /// Submission-queue entries per ring.
    pub ring_entries: u32,
    /// How long shutdown waits for tasks before failing them.
    pub shutdown_timeout: Duration,
    /// How long an idle core polls its queues and completion ring before it
    /// sleeps in `poll` on its ring (waking a sleeping thread costs tens of µs
    /// on a VM; polling costs CPU). Zero = sleep at once.
    pub idle_spin: Duration,
    /// Report io_uring as unavailable with this reason instead of probing
    /// (for testing the paths that handle it).
    #[doc(hidden)]
    pub simulate_unavailable: Option<i32>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: false,
            ring_entries: 256,
            shutdown_timeout: Duration::from_secs(3),
            idle_spin: Duration::from_micros(50),
            simulate_unavailable: None,
        }
    }
}

impl RuntimeConfig {
    /// Sets the number of cores.
    pub fn with_cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }
    /// Sets CPU pinning.
    pub fn with_pinning(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }
    /// Sets the shutdown time.
    pub fn with_shutdown_timeout(mut self, d: Duration) -> Self {
        self.shutdown_timeout = d;
        self
    }
    /// Sets how long an idle core polls before sleeping.
    pub fn with_idle_spin(mut self, d: Duration) -> Self {
        self.idle_spin = d;
        self
    }
    /// Sets the ring size.
    pub fn with_ring_entries(mut self, n: u32) -> Self {
        self.ring_entries = n;
        self
    }
}

/// Figures of one core.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CoreStats {
    /// Core index.
    pub core: usize,
    /// SQEs submitted to the ring.
    pub submitted: u64,
    /// Operations completed.
    pub completed: u64,
    /// Operations in flight (submitted − completed): the ring depth.
    pub in_flight: u64,
    /// `io_uring_enter` calls (submits and waits).
    pub enters: u64,
    /// Tasks spawned / finished on the core.
    pub tasks_spawned: u64,
    /// Tasks finished.
    pub tasks_done: u64,
    /// Share of its lifetime the core spent not waiting (0..=1).
    pub busy_ratio: f64,
    /// Whether the core died of a panic.
    pub panicked: bool,
}

struct CoreThread {
    handle: Option<std::thread::JoinHandle<()>>,
}

/// The engine's cores. Dropping it shuts it down (bounded by
/// `shutdown_timeout`).
pub struct Runtime {
    cores: Vec<Arc<CoreShared>>,
    threads: Mutex<Vec<CoreThread>>,
    cfg: RuntimeConfig,
    /// The process the cores run in ([`forks`]): a child forked from it
    /// has none of them.
    born: usize,
}

/// Forks this process is removed from the first that loaded this crate
/// (raised in each child before `fork` returns there).
static FORKS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many forks this process is removed from the first that called it
/// (or started a runtime): something made under one count belongs to a
/// process this one was forked from once the count differs.
#[allow(unsafe_code)]
pub fn forks() -> usize {
    static WATCH: std::sync::Once = std::sync::Once::new();
    extern "C" fn in_child() {
        FORKS.fetch_add(1, SeqCst);
    }
    WATCH.call_once(|| {
        // SAFETY: registers a handler that is an `extern "C" fn()` touching
        // one atomic; it runs in the child only.
        unsafe {
            libc::pthread_atfork(None, None, Some(in_child));
        }
    });
    FORKS.load(SeqCst)
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("cores", &self.cores.len())
            .finish()
    }
}

impl Runtime {
    /// Probes io_uring, then starts the cores. A kernel without io_uring or
    /// without an operation the engine needs is one error naming what is
    /// missing.
    pub fn start(cfg: RuntimeConfig) -> Result<Runtime, RtError> {
        if cfg.cores == 0 {
            return Err(RtError::Start {
                core: 0,
                reason: "the runtime needs at least one core".into(),
            });
        }
        let born = forks();
        match cfg.simulate_unavailable {
            Some(errno) => probe::check(|| Err(std::io::Error::from_raw_os_error(errno)))?,
            None => probe::check(|| io_uring::IoUring::new(8))?,
        }
        let mut cores = Vec::with_capacity(cfg.cores);
        let mut threads = Vec::with_capacity(cfg.cores);
        let mut failure = None;
        for id in 0..cfg.cores {
            let shared = match CoreShared::new(id) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    failure = Some(RtError::Start {
                        core: id,
                        reason: format!("eventfd: {e}"),
                    });
                    break;
                }
            };
            let (tx, rx) = std::sync::mpsc::channel();
            let (s, c) = (shared.clone(), cfg.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("dashi-core-{id}"))
                .spawn(move || core_thread::main(s, c, tx));
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    failure = Some(RtError::Start {
                        core: id,
                        reason: format!("spawning the thread: {e}"),
                    });
                    break;
                }
            };
            let ready = rx.recv().unwrap_or_else(|_| {
                Err(RtError::Start {
                    core: id,
                    reason: "the core thread exited during start-up".into(),
                })
            });
            cores.push(shared);
            threads.push(CoreThread {
                handle: Some(handle),
            });
            if let Err(e) = ready {
                failure = Some(e);
                break;
            }
        }
        let rt = Runtime {
            cores,
            threads: Mutex::new(threads),
            cfg,
            born,
        };
        match failure {
            Some(e) => {
                let _ = rt.stop();
                Err(e)
            }
            None => {
                tracing::debug!(cores = rt.cores.len(), "runtime started");
                Ok(rt)
            }
        }
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.cores.len()
    }

    /// The core that owns `key` (a queue name): a fixed hash, the same in every
    /// process and run.
    pub fn core_for(&self, key: &[u8]) -> usize {
        let h = foldhash::fast::FixedState::with_seed(0x6461_7368_6921).hash_one(key);
        (h % self.cores.len() as u64) as usize
    }

    /// Runs `f()`'s future on core `core`. `f` is sent to the core and called
    /// there, so the future itself may be `!Send` and may use [`io`].
    /// Tasks sent from one thread to one core start in the order sent.
    pub fn spawn<F, Fut, T>(&self, core: usize, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let slot = task::JoinSlot::new();
        let handle = JoinHandle { slot: slot.clone() };
        if !self.started_here() {
            slot.complete(Err(RtError::Forked));
            return handle;
        }
        match self.cores.get(core) {
            None => slot.complete(Err(RtError::NoSuchCore {
                core,
                cores: self.cores.len(),
            })),
            Some(c) => c.send(Msg::Job(Box::new(SpawnJob { f, slot }))),
        }
        handle
    }

    /// Figures of every core.
    pub fn stats(&self) -> Vec<CoreStats> {
        self.cores
            .iter()
            .map(|c| {
                let s = &c.stats;
                let submitted = s.submitted.load(Relaxed);
                let completed = s.completed.load(Relaxed);
                let up = core_thread::uptime(c).as_nanos().max(1) as f64;
                CoreStats {
                    core: c.id,
                    submitted,
                    completed,
                    in_flight: submitted.saturating_sub(completed),
                    enters: s.enters.load(Relaxed),
                    tasks_spawned: s.tasks_spawned.load(Relaxed),
                    tasks_done: s.tasks_done.load(Relaxed),
                    busy_ratio: (1.0 - s.idle_ns.load(Relaxed) as f64 / up).clamp(0.0, 1.0),
                    panicked: c.dead.get().is_some(),
                }
            })
            .collect()
    }

    /// `Err` with the first core that panicked, if any did, or
    /// [`RtError::Forked`] in a process forked from the one that started
    /// the runtime (its cores do not run there).
    pub fn health(&self) -> Result<(), RtError> {
        if !self.started_here() {
            return Err(RtError::Forked);
        }
        match self.cores.iter().find(|c| c.dead.get().is_some()) {
            Some(c) => Err(c.closed_error()),
            None => Ok(()),
        }
    }

    /// Test hook: makes core `core` panic in its loop, outside any task.
    #[doc(hidden)]
    pub fn inject_core_panic(&self, core: usize) {
        if let Some(c) = self.cores.get(core) {
            c.send(Msg::Panic);
        }
    }

    fn stop(&self) -> Result<(), RtError> {
        if !self.started_here() {
            // A copy in a forked child: its cores are the parent's threads
            // (none here), and their eventfds are shared with the parent.
            return Ok(());
        }
        for c in &self.cores {
            c.stopping.store(true, SeqCst);
            c.kick();
        }
        // Each core stops within shutdown_timeout (then fails what is left
        // and spends at most shutdown_timeout more cancelling I/O).
        let limit = self.cfg.shutdown_timeout * 2 + Duration::from_millis(500);
        let until = Instant::now() + limit;
        let mut stuck = 0;
        let mut threads = self.threads.lock();
        for t in threads.iter_mut() {
            let Some(h) = t.handle.take() else { continue };
            while !h.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(1));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                // Never hang: leave it detached and say so.
                stuck += 1;
            }
        }
        if stuck > 0 {
            Err(RtError::ShutdownTimedOut {
                stuck,
                timeout: limit,
            })
        } else {
            Ok(())
        }
    }

    /// False in a process forked from the one that started the runtime:
    /// there its cores do not run, and work sent to them fails with
    /// [`RtError::Forked`].
    pub fn started_here(&self) -> bool {
        // The child's count was raised on its only thread before `fork`
        // returned: a relaxed load sees it.
        FORKS.load(Relaxed) == self.born
    }

    /// Stops the cores: running tasks get `shutdown_timeout` to finish, then
    /// are failed with [`RtError::ShuttingDown`]; new work is refused.
    pub fn shutdown(self) -> Result<(), RtError> {
        self.stop()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
