//! A consumer's prefetch (QoS) window: how many deliveries and body bytes it
//! may hold unsettled at once.
//!
//! # Invariants
//! - Only the consumer's dispatcher acquires; settles from any thread release.
//! - A release wakes waiters only when it turns a full window into one with
//!   room: a waiter sleeps on a window only after seeing it full and
//!   re-checks after registering, so no wake-up is lost and releases into a
//!   window with room cost no notification.

use crate::notify::Notify;
use crate::sync::{AtomicUsize, Ordering::SeqCst};

/// A consumer's prefetch window. Only the consumer's dispatcher acquires;
/// settles from any thread release.
#[derive(Debug)]
pub(crate) struct Window {
    count: AtomicUsize,
    bytes: AtomicUsize,
    max_count: usize,
    max_bytes: usize,
    pub(crate) notify: Notify,
}

impl Window {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        Window {
            count: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_count: max_count.max(1),
            max_bytes: max_bytes.max(1),
            notify: Notify::new(),
        }
    }

    /// Room for one more delivery: below the count limit and below the byte
    /// limit (the delivery that crosses the byte limit is allowed, so one large
    /// message never blocks a window forever).
    pub(crate) fn has_room(&self) -> bool {
        self.count.load(SeqCst) < self.max_count && self.bytes.load(SeqCst) < self.max_bytes
    }

    /// How many more deliveries fit by count (0 when the bytes are full).
    pub(crate) fn room(&self) -> usize {
        if self.bytes.load(SeqCst) >= self.max_bytes {
            return 0;
        }
        self.max_count.saturating_sub(self.count.load(SeqCst))
    }

    /// Takes the shares of `count` deliveries of `bytes` in all at once (a
    /// dispatcher's run).
    pub(crate) fn acquire_many(&self, count: usize, bytes: usize) {
        if count == 0 {
            return;
        }
        self.count.fetch_add(count, SeqCst);
        self.bytes.fetch_add(bytes, SeqCst);
    }

    /// Whether a window holding `count` deliveries of `bytes` has room for
    /// one more (as [`Window::has_room`] for those figures).
    pub(crate) fn room_at(&self, count: usize, bytes: usize) -> bool {
        count < self.max_count && bytes < self.max_bytes
    }

    /// Returns a delivery's share. Wakes waiters only when this turns a full
    /// window into one with room: a waiter sleeps on a window only after
    /// seeing it full (and re-checks after registering), so releases into a
    /// window that had room cannot be what it waits for.
    pub(crate) fn release(&self, size: usize) {
        let was_count = self.count.fetch_sub(1, SeqCst);
        let was_bytes = self.bytes.fetch_sub(size, SeqCst);
        if was_count >= self.max_count || was_bytes >= self.max_bytes {
            self.notify.notify_all();
        }
    }

    pub(crate) fn in_flight(&self) -> (usize, usize) {
        (self.count.load(SeqCst), self.bytes.load(SeqCst))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn window_room() {
        let w = Window::new(2, 10);
        assert!(w.has_room());
        w.acquire_many(1, 4);
        assert!(w.has_room());
        w.acquire_many(1, 20);
        assert!(!w.has_room());
        assert_eq!(w.in_flight(), (2, 24));
        w.release(20);
        assert!(w.has_room());
    }

    /// A run's shares are taken at once, and `room_at` answers for figures
    /// as `has_room` does for the window's own.
    #[test]
    fn a_run_takes_its_shares_at_once() {
        let w = Window::new(4, 100);
        w.acquire_many(0, 0);
        assert_eq!(w.in_flight(), (0, 0));
        w.acquire_many(3, 60);
        assert_eq!(w.in_flight(), (3, 60));
        assert!(w.room_at(3, 60) && w.has_room());
        assert!(!w.room_at(4, 60) && !w.room_at(3, 100));
        w.acquire_many(1, 1);
        assert!(!w.has_room());
        assert_eq!(w.room(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// A consumer that found its window full and sleeps on it is woken by the
    /// release that makes room (releases only notify on full → room).
    #[test]
    fn release_of_a_full_window_wakes_the_waiter() {
        use crate::notify::{thread_waker, ThreadWaker};
        loom::model(|| {
            let w = Arc::new(Window::new(1, 1_000));
            w.acquire_many(1, 10);
            let w2 = w.clone();
            let acker = loom::thread::spawn(move || w2.release(10));
            let tw = ThreadWaker::current();
            loop {
                let id = w.notify.register(&thread_waker(&tw));
                if w.has_room() {
                    w.notify.unregister(id);
                    break;
                }
                tw.wait(None);
                w.notify.unregister(id);
            }
            acker.join().unwrap();
        });
    }
}
