//! The wake-up handshake between threads that hand work to a core and the core
//! that sleeps in `io_uring_enter` when it has none.
//!
//! # Invariants
//! - A submitter makes its work visible (pushes to a core queue), then calls
//!   [`Doorbell::ring`], which costs one fence and one load while the core is
//!   awake: no syscall when the core is busy.
//! - The core calls [`Doorbell::prepare_sleep`] (sets `sleeping`, fence), then
//!   re-checks its queues, and only then blocks. With a `SeqCst` fence on each
//!   side, either the core sees the work or the submitter sees `sleeping` (and
//!   then writes the core's eventfd, which completes a read armed on its ring).
//! - `rung` makes only the first submitter per sleep pay the syscall.

use crate::sync::{fence, AtomicBool, Ordering::SeqCst};

#[derive(Debug, Default)]
pub(crate) struct Doorbell {
    sleeping: AtomicBool,
    rung: AtomicBool,
}

impl Doorbell {
    /// Call after making work visible; true when the caller must wake the core
    /// (write its eventfd).
    pub(crate) fn ring(&self) -> bool {
        fence(SeqCst);
        self.sleeping.load(SeqCst) && !self.rung.swap(true, SeqCst)
    }

    /// The core is about to sleep; it must re-check its queues afterwards.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, SeqCst);
        fence(SeqCst);
    }

    /// The core is awake again (it found work, or it woke up).
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, SeqCst);
        self.rung.store(false, SeqCst);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, AtomicUsize, Ordering::Acquire, Ordering::Release};

    /// A submission racing the core going to sleep: if the core sleeps without
    /// having seen the work, the submitter was told to wake it.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::default());
            let queue = Arc::new(AtomicUsize::new(0));
            let (b, q) = (bell.clone(), queue.clone());
            // The queue push is modelled as a release store: the doorbell must
            // not rely on the queue's own orderings.
            let submitter = loom::thread::spawn(move || {
                q.store(1, Release);
                b.ring()
            });
            bell.prepare_sleep();
            let slept_empty = queue.load(Acquire) == 0;
            if !slept_empty {
                bell.awake();
            }
            let rang = submitter.join().unwrap();
            assert!(
                !(slept_empty && !rang),
                "core slept on work nobody woke it for"
            );
        });
    }

    /// Two submitters while the core sleeps: exactly one pays the syscall.
    #[test]
    fn one_syscall_per_sleep() {
        loom::model(|| {
            let bell = Arc::new(Doorbell::default());
            bell.prepare_sleep();
            let spawn = |b: Arc<Doorbell>| loom::thread::spawn(move || b.ring() as u32);
            let (x, y) = (spawn(bell.clone()), spawn(bell.clone()));
            assert_eq!(x.join().unwrap() + y.join().unwrap(), 1);
        });
    }
}
