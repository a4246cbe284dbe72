//! Sleeping on a word of a shared mapping until another process changes it
//! (a shared futex: it keys on the file page, so it works across processes).

use std::time::Duration;

use crate::mem::AtomicU32;
#[cfg(not(loom))]
use rustix::thread::futex;

/// Sleeps while `word` holds `expected`, at most `timeout`. Returns on a
/// wake-up, a timeout, a changed value or a signal alike: callers re-check.
#[cfg(not(loom))]
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = futex::Timespec {
        tv_sec: timeout.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    // Not PRIVATE: the word is in a mapping other processes share.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// Wakes every process sleeping in [`wait`] on `word`.
#[cfg(not(loom))]
pub(crate) fn wake(word: &AtomicU32) {
    // The kernel reads the count as a signed int: u32::MAX would be -1 and
    // wake one waiter only.
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// The loom models have no futex words (they model one lane, not the store).
#[cfg(loom)]
pub(crate) fn wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) {}

/// See [`wait`].
#[cfg(loom)]
pub(crate) fn wake(_word: &AtomicU32) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::SeqCst};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// One wake reaches every sleeper (each process's watcher sleeps on the
    /// same word), well before their timeout.
    #[test]
    fn one_wake_wakes_every_sleeper() {
        let word = Arc::new(AtomicU32::new(7));
        let asleep = Arc::new(AtomicUsize::new(0));
        let sleepers: Vec<_> = (0..3)
            .map(|_| {
                let (w, a) = (word.clone(), asleep.clone());
                std::thread::spawn(move || {
                    a.fetch_add(1, SeqCst);
                    let start = Instant::now();
                    while w.load(SeqCst) == 7 && start.elapsed() < Duration::from_secs(20) {
                        super::wait(&w, 7, Duration::from_secs(20));
                    }
                    start.elapsed()
                })
            })
            .collect();
        while asleep.load(SeqCst) < 3 {
            std::thread::yield_now();
        }
        std::thread::sleep(Duration::from_millis(200));
        word.store(8, SeqCst);
        super::wake(&word);
        for s in sleepers {
            let waited = s.join().unwrap();
            assert!(
                waited < Duration::from_secs(10),
                "a sleeper was not woken: {waited:?}"
            );
        }
    }
}
