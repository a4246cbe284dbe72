//! Wake-ups between publishers and waiting consumers.
//!
//! # Invariants
//! - The notifier's fast path is one `SeqCst` load of `waiting`: a publish into a
//!   queue nobody waits on costs no lock and no syscall.
//! - No lost wake-up: a waiter registers (increments `waiting`) *before* it
//!   re-checks its condition; a notifier makes its change visible *before* it
//!   reads `waiting`. A `SeqCst` fence on each side between the write and the
//!   read means either the waiter sees the change or the notifier sees the
//!   waiter (Dekker; fences rather than `SeqCst` accesses alone, because the
//!   change is made by other code with its own orderings).
//! - Waiters are `Waker`s, so the same list serves blocking threads (a waker
//!   that unparks) and async tasks.

use std::task::{Wake, Waker};
use std::time::Instant;

#[cfg(not(loom))]
use crate::sync::AtomicBool;
use crate::sync::{fence, Arc, AtomicU64, AtomicUsize, Mutex, Ordering::SeqCst};

/// A set of waiters woken together when something changes.
#[derive(Debug, Default)]
pub struct Notify {
    waiting: AtomicUsize,
    next_id: AtomicU64,
    list: Mutex<Vec<(u64, Waker)>>,
}

impl Notify {
    /// An empty notifier.
    pub fn new() -> Self {
        Notify {
            waiting: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            list: Mutex::new(Vec::new()),
        }
    }

    /// Registers `waker`; the caller must re-check its condition afterwards and
    /// call [`Notify::unregister`] with the returned id when it stops waiting.
    pub fn register(&self, waker: &Waker) -> u64 {
        let id = self.next_id.fetch_add(1, SeqCst);
        let mut list = self.list.lock();
        list.push((id, waker.clone()));
        self.waiting.fetch_add(1, SeqCst);
        drop(list);
        fence(SeqCst);
        id
    }

    /// Removes a registration (a no-op if a notification already took it).
    pub fn unregister(&self, id: u64) {
        let mut list = self.list.lock();
        if let Some(i) = list.iter().position(|(x, _)| *x == id) {
            list.swap_remove(i);
            self.waiting.fetch_sub(1, SeqCst);
        }
    }

    /// Wakes every registered waiter. Call after the change is visible.
    pub fn notify_all(&self) {
        fence(SeqCst);
        if self.waiting.load(SeqCst) == 0 {
            return;
        }
        let taken = {
            let mut list = self.list.lock();
            self.waiting.fetch_sub(list.len(), SeqCst);
            std::mem::take(&mut *list)
        };
        for (_, w) in taken {
            w.wake();
        }
    }

    /// Number of registered waiters.
    pub fn waiters(&self) -> usize {
        self.waiting.load(SeqCst)
    }
}

/// A waker that unparks one blocked thread.
#[derive(Debug)]
pub(crate) struct ThreadWaker {
    #[cfg(not(loom))]
    thread: std::thread::Thread,
    #[cfg(not(loom))]
    notified: AtomicBool,
    // loom: a flag under a mutex and a condvar, which loom models exactly.
    #[cfg(loom)]
    flag: loom::sync::Mutex<bool>,
    #[cfg(loom)]
    cv: loom::sync::Condvar,
}

impl ThreadWaker {
    /// A waker for the current thread.
    pub(crate) fn current() -> Arc<Self> {
        Arc::new(ThreadWaker {
            #[cfg(not(loom))]
            thread: std::thread::current(),
            #[cfg(not(loom))]
            notified: AtomicBool::new(false),
            #[cfg(loom)]
            flag: loom::sync::Mutex::new(false),
            #[cfg(loom)]
            cv: loom::sync::Condvar::new(),
        })
    }

    /// Parks until woken or until `deadline` (None = forever). Returns true when
    /// woken.
    #[cfg(not(loom))]
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        loop {
            if self.notified.swap(false, SeqCst) {
                return true;
            }
            match deadline {
                None => std::thread::park(),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return self.notified.swap(false, SeqCst);
                    }
                    std::thread::park_timeout(d - now);
                }
            }
        }
    }

    /// Parks until woken (loom has no timeouts).
    #[cfg(loom)]
    pub(crate) fn wait(&self, _deadline: Option<Instant>) -> bool {
        let mut flag = self.flag.lock().unwrap();
        while !*flag {
            flag = self.cv.wait(flag).unwrap();
        }
        *flag = false;
        true
    }
}

#[cfg(not(loom))]
impl Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.notified.store(true, SeqCst);
        self.thread.unpark();
    }
}

#[cfg(not(loom))]
pub(crate) fn thread_waker(w: &Arc<ThreadWaker>) -> Waker {
    Waker::from(w.clone())
}

#[cfg(loom)]
pub(crate) fn thread_waker(w: &Arc<ThreadWaker>) -> Waker {
    // loom's Arc is not std's, so build the waker by hand over a leaked-count
    // std Arc holding a loom Arc.
    struct Holder(Arc<ThreadWaker>);
    impl Wake for Holder {
        fn wake(self: std::sync::Arc<Self>) {
            *self.0.flag.lock().unwrap() = true;
            self.0.cv.notify_one();
        }
    }
    Waker::from(std::sync::Arc::new(Holder(w.clone())))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn register_notify_unregister() {
        let n = Notify::new();
        let tw = ThreadWaker::current();
        let id = n.register(&thread_waker(&tw));
        assert_eq!(n.waiters(), 1);
        n.notify_all();
        assert_eq!(n.waiters(), 0);
        assert!(tw.wait(Some(Instant::now() + Duration::from_millis(1))));
        n.unregister(id);
        assert_eq!(n.waiters(), 0);
        let id = n.register(&thread_waker(&tw));
        n.unregister(id);
        assert_eq!(n.waiters(), 0);
        assert!(!tw.wait(Some(Instant::now() + Duration::from_millis(1))));
    }

    /// A thread parked on the notifier is woken by `notify_all`, not by its
    /// timeout: it must report a wake-up well before the deadline, and the
    /// test fails (it does not loop) if the wake-up is lost.
    #[test]
    fn wakes_a_parked_thread() {
        let n = std::sync::Arc::new(Notify::new());
        let (registered_tx, registered_rx) = std::sync::mpsc::channel();
        let n2 = n.clone();
        let t = std::thread::spawn(move || {
            let tw = ThreadWaker::current();
            let _id = n2.register(&thread_waker(&tw));
            registered_tx.send(()).unwrap();
            let start = Instant::now();
            let woken = tw.wait(Some(start + Duration::from_secs(10)));
            (woken, start.elapsed())
        });
        registered_rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        n.notify_all();
        let (woken, waited) = t.join().unwrap();
        assert!(woken, "the waiter timed out: the wake-up was lost");
        assert!(
            waited < Duration::from_secs(5),
            "woken only after {waited:?}"
        );
        assert_eq!(n.waiters(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::AtomicBool;

    /// The register / re-check / park handshake against set-then-notify never
    /// loses the wake-up: the waiter always terminates.
    #[test]
    fn no_lost_wakeup() {
        loom::model(|| {
            let n = Arc::new(Notify::new());
            let ready = Arc::new(AtomicBool::new(false));
            let (n2, r2) = (n.clone(), ready.clone());
            let waiter = loom::thread::spawn(move || {
                let tw = ThreadWaker::current();
                loop {
                    let id = n2.register(&thread_waker(&tw));
                    if r2.load(SeqCst) {
                        n2.unregister(id);
                        return;
                    }
                    tw.wait(None);
                    n2.unregister(id);
                }
            });
            ready.store(true, SeqCst);
            n.notify_all();
            waiter.join().unwrap();
        });
    }
}
