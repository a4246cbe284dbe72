//! Tasks on a core, and the handles their spawners wait on.
//!
//! # Invariants
//! - A join slot is completed at most once (first completion wins): by the task
//!   finishing, by the task panicking, by the core panicking, or by shutdown.
//!   A task dropped without finishing completes its slot with an error, so no
//!   waiter can hang.
//! - Completions reach the waiter as a `Waker` (async) or an unpark (blocking).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::RtError;

enum Waiter {
    None,
    Task(Waker),
    Thread(std::thread::Thread),
}

struct State<T> {
    result: Option<Result<T, RtError>>,
    taken: bool,
    waiter: Waiter,
}

pub(crate) struct JoinSlot<T> {
    state: Mutex<State<T>>,
}

impl<T> JoinSlot<T> {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(JoinSlot {
            state: Mutex::new(State {
                result: None,
                taken: false,
                waiter: Waiter::None,
            }),
        })
    }

    /// Completes the slot unless it already was; wakes the waiter.
    pub(crate) fn complete(&self, r: Result<T, RtError>) {
        let waiter = {
            let mut s = self.state.lock();
            if s.result.is_some() || s.taken {
                return;
            }
            s.result = Some(r);
            std::mem::replace(&mut s.waiter, Waiter::None)
        };
        match waiter {
            Waiter::None => {}
            Waiter::Task(w) => w.wake(),
            Waiter::Thread(t) => t.unpark(),
        }
    }
}

/// Something the type-erased core can fail without knowing `T`.
pub(crate) trait Fail: Send + Sync {
    fn fail(&self, e: RtError);
}

impl<T: Send> Fail for JoinSlot<T> {
    fn fail(&self, e: RtError) {
        self.complete(Err(e))
    }
}

/// The result of a task spawned on a core: a `Future` (any executor) and a
/// blocking [`JoinHandle::wait`].
pub struct JoinHandle<T> {
    pub(crate) slot: Arc<JoinSlot<T>>,
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl<T> JoinHandle<T> {
    /// True once the result is available.
    pub fn is_finished(&self) -> bool {
        let s = self.slot.state.lock();
        s.result.is_some() || s.taken
    }

    /// Blocks this thread until the task's result is available.
    pub fn wait(self) -> Result<T, RtError> {
        loop {
            if let Some(r) = self.wait_until(None) {
                return r;
            }
        }
    }

    /// Blocks up to `timeout`; `None` when the task has not finished by then
    /// (the handle stays usable).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<Result<T, RtError>> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Option<Result<T, RtError>> {
        // A core answers a short request within microseconds: poll briefly
        // before parking, as waking a parked thread costs far more.
        for i in 0..200u32 {
            if self.is_finished() {
                break;
            }
            if i < 100 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        loop {
            {
                let mut s = self.slot.state.lock();
                if let Some(r) = s.result.take() {
                    s.taken = true;
                    return Some(r);
                }
                if s.taken {
                    return Some(Err(RtError::ResultTaken));
                }
                s.waiter = Waiter::Thread(std::thread::current());
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        let mut s = self.slot.state.lock();
                        s.waiter = Waiter::None;
                        return s.result.take().inspect(|_| s.taken = true);
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, RtError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.slot.state.lock();
        if let Some(r) = s.result.take() {
            s.taken = true;
            return Poll::Ready(r);
        }
        if s.taken {
            return Poll::Ready(Err(RtError::ResultTaken));
        }
        s.waiter = Waiter::Task(cx.waker().clone());
        Poll::Pending
    }
}

/// Completes a join slot with an error if the task is dropped unfinished.
pub(crate) struct Completer<T: Send> {
    pub(crate) slot: Option<Arc<JoinSlot<T>>>,
    pub(crate) on_drop: fn() -> RtError,
}

impl<T: Send> Completer<T> {
    pub(crate) fn finish(mut self, v: T) {
        if let Some(s) = self.slot.take() {
            s.complete(Ok(v));
        }
    }
}

impl<T: Send> Drop for Completer<T> {
    fn drop(&mut self) {
        // Unwinding out of the task's poll: the executor fails the slot with
        // the panic message right after.
        if std::thread::panicking() {
            return;
        }
        if let Some(s) = self.slot.take() {
            s.complete(Err((self.on_drop)()));
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn first_completion_wins_and_wait_timeout_keeps_the_handle() {
        let slot = JoinSlot::<u32>::new();
        let mut h = JoinHandle { slot: slot.clone() };
        assert!(!h.is_finished());
        assert!(h.wait_timeout(Duration::from_millis(5)).is_none());
        slot.complete(Ok(1));
        slot.complete(Ok(2));
        assert!(h.is_finished());
        assert_eq!(h.wait_timeout(Duration::ZERO).unwrap().unwrap(), 1);
        assert!(matches!(h.wait(), Err(RtError::ResultTaken)));
    }

    #[test]
    fn completer_fails_the_slot_when_dropped() {
        let slot = JoinSlot::<u32>::new();
        drop(Completer {
            slot: Some(slot.clone()),
            on_drop: || RtError::ShuttingDown,
        });
        let h = JoinHandle { slot };
        assert!(matches!(h.wait(), Err(RtError::ShuttingDown)));
    }

    #[test]
    fn wakes_a_blocked_thread() {
        let slot = JoinSlot::<&'static str>::new();
        let s2 = slot.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            s2.complete(Ok("done"));
        });
        assert_eq!(JoinHandle { slot }.wait().unwrap(), "done");
        t.join().unwrap();
    }
}
