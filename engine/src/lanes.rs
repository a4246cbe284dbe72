//! Priority lanes: one lock-free FIFO per priority level plus a bitmap of
//! non-empty lanes, so the most urgent ready lane is found with a few bit scans.
//!
//! # Invariants
//! - `len[l]` counts items pushed to lane `l` and not yet popped. A push
//!   increments it *before* the item is visible, a pop decrements it *after* the
//!   item was taken, so it never underflows and is never below the true count.
//! - At quiescence, bit `l` of the bitmap is set exactly when `len[l] > 0`: the
//!   pusher that moves `len` from 0 sets the bit; whoever clears a bit re-reads
//!   `len` afterwards and sets it again if it is non-zero (all `SeqCst`, so one of
//!   the two always sees the other). A stale set bit only costs a skipped lane.
//! - Restored items go to a per-lane front list that is drained before the FIFO,
//!   so a restore puts a message ahead of everything in its lane. The front list
//!   is behind a mutex because restore is a slow path; the fast path checks an
//!   atomic length and never takes it when empty.
//! - Pushing and popping never block on each other: the FIFO is crossbeam's
//!   `SegQueue` (in loom builds, a model mutex-backed deque with the same
//!   linearizable behaviour, so loom checks our protocol around it).

use std::collections::VecDeque;

use crate::sync::{AtomicU64, AtomicUsize, Mutex, Ordering::SeqCst};

#[cfg(not(loom))]
type Fifo<T> = crossbeam_queue::SegQueue<T>;

#[cfg(loom)]
#[derive(Debug)]
struct Fifo<T>(Mutex<VecDeque<T>>);

#[cfg(loom)]
impl<T> Fifo<T> {
    fn new() -> Self {
        Fifo(Mutex::new(VecDeque::new()))
    }
    fn push(&self, v: T) {
        self.0.lock().push_back(v)
    }
    fn pop(&self) -> Option<T> {
        self.0.lock().pop_front()
    }
}

#[derive(Debug)]
struct Lane<T> {
    fifo: Fifo<T>,
    front: Mutex<VecDeque<T>>,
    front_len: AtomicUsize,
    len: AtomicUsize,
}

/// Priority lanes `0..=max_priority`; higher index = more urgent.
#[derive(Debug)]
pub(crate) struct Lanes<T> {
    lanes: Box<[Lane<T>]>,
    bitmap: [AtomicU64; 4],
}

impl<T> Lanes<T> {
    /// Lanes for priorities `0..=max_priority`.
    pub(crate) fn new(max_priority: u8) -> Self {
        let lanes = (0..=max_priority as usize)
            .map(|_| Lane {
                fifo: Fifo::new(),
                front: Mutex::new(VecDeque::new()),
                front_len: AtomicUsize::new(0),
                len: AtomicUsize::new(0),
            })
            .collect();
        Lanes {
            lanes,
            bitmap: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
        }
    }

    /// Number of lanes.
    pub(crate) fn lane_count(&self) -> usize {
        self.lanes.len()
    }

    fn set_bit(&self, lane: usize) {
        self.bitmap[lane / 64].fetch_or(1 << (lane % 64), SeqCst);
    }

    fn clear_bit(&self, lane: usize) {
        self.bitmap[lane / 64].fetch_and(!(1 << (lane % 64)), SeqCst);
        if self.lanes[lane].len.load(SeqCst) > 0 {
            self.set_bit(lane);
        }
    }

    fn count_in(&self, lane: usize) {
        if self.lanes[lane].len.fetch_add(1, SeqCst) == 0 {
            self.set_bit(lane);
        }
    }

    fn count_out(&self, lane: usize) {
        if self.lanes[lane].len.fetch_sub(1, SeqCst) == 1 {
            self.clear_bit(lane);
        }
    }

    /// Appends to the back of `lane` (clamped to the top lane).
    pub(crate) fn push(&self, lane: usize, item: T) {
        let lane = lane.min(self.lanes.len() - 1);
        self.count_in(lane);
        self.lanes[lane].fifo.push(item);
    }

    /// Puts `items` at the front of `lane`, `items[0]` first.
    pub(crate) fn push_front(&self, lane: usize, items: impl DoubleEndedIterator<Item = T>) {
        let lane = lane.min(self.lanes.len() - 1);
        let l = &self.lanes[lane];
        let mut front = l.front.lock();
        for item in items.rev() {
            self.count_in(lane);
            front.push_front(item);
            l.front_len.fetch_add(1, SeqCst);
        }
    }

    fn pop_lane(&self, lane: usize) -> Option<T> {
        let l = &self.lanes[lane];
        let item = if l.front_len.load(SeqCst) > 0 {
            let mut front = l.front.lock();
            match front.pop_front() {
                Some(v) => {
                    l.front_len.fetch_sub(1, SeqCst);
                    Some(v)
                }
                None => None,
            }
        } else {
            None
        };
        let item = item.or_else(|| l.fifo.pop());
        match item {
            Some(v) => {
                self.count_out(lane);
                Some(v)
            }
            None => {
                if l.len.load(SeqCst) == 0 {
                    self.clear_bit(lane);
                }
                None
            }
        }
    }

    /// Takes the oldest item of the most urgent non-empty lane, with its lane.
    pub(crate) fn pop(&self) -> Option<(usize, T)> {
        for word in (0..4).rev() {
            let mut bits = self.bitmap[word].load(SeqCst);
            while bits != 0 {
                let bit = 63 - bits.leading_zeros() as usize;
                let lane = word * 64 + bit;
                if let Some(v) = self.pop_lane(lane) {
                    return Some((lane, v));
                }
                bits &= !(1 << bit);
            }
        }
        None
    }

    /// Takes the oldest item of the least urgent non-empty lane (drop-head).
    pub(crate) fn pop_least_urgent(&self) -> Option<(usize, T)> {
        for word in 0..4 {
            let mut bits = self.bitmap[word].load(SeqCst);
            while bits != 0 {
                let bit = bits.trailing_zeros() as usize;
                let lane = word * 64 + bit;
                if let Some(v) = self.pop_lane(lane) {
                    return Some((lane, v));
                }
                bits &= bits - 1;
            }
        }
        None
    }

    /// Items in `lane` (pushed and not yet popped).
    pub(crate) fn len(&self, lane: usize) -> usize {
        self.lanes[lane].len.load(SeqCst)
    }

    /// True when no lane holds anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.bitmap.iter().all(|w| w.load(SeqCst) == 0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn strict_priority_and_fifo_per_lane() {
        let l = Lanes::new(9);
        for (i, p) in [0, 5, 9, 5, 0, 9].iter().enumerate() {
            l.push(*p, i);
        }
        let order: Vec<_> = std::iter::from_fn(|| l.pop()).collect();
        assert_eq!(order, vec![(9, 2), (9, 5), (5, 1), (5, 3), (0, 0), (0, 4)]);
        assert!(l.is_empty());
    }

    #[test]
    fn front_restore_goes_first_in_given_order() {
        let l = Lanes::new(0);
        l.push(0, 1);
        l.push(0, 2);
        l.push_front(0, [10, 11].into_iter());
        assert_eq!(l.len(0), 4);
        let order: Vec<_> = std::iter::from_fn(|| l.pop().map(|x| x.1)).collect();
        assert_eq!(order, vec![10, 11, 1, 2]);
    }

    #[test]
    fn lanes_above_64_and_least_urgent() {
        let l = Lanes::new(255);
        assert_eq!(l.lane_count(), 256);
        l.push(200, "a");
        l.push(70, "b");
        l.push(3, "c");
        l.push(300, "clamped");
        assert_eq!(l.pop_least_urgent(), Some((3, "c")));
        assert_eq!(l.pop(), Some((255, "clamped")));
        assert_eq!(l.pop(), Some((200, "a")));
        assert_eq!(l.pop(), Some((70, "b")));
        assert_eq!(l.pop(), None);
        assert_eq!(l.pop_least_urgent(), None);
    }

    #[test]
    fn concurrent_producers_consumers_lose_nothing() {
        let l = std::sync::Arc::new(Lanes::new(3));
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        l.push((i % 4) as usize, (p, i));
                    }
                })
            })
            .collect();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut idle = 0;
                    while idle < 1_000_000 {
                        match l.pop() {
                            Some(v) => {
                                got.push(v);
                                idle = 0;
                            }
                            None => idle += 1,
                        }
                        if got.len() == 40_000 {
                            break;
                        }
                    }
                    got
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        let mut all: Vec<_> = consumers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        while let Some(v) = l.pop() {
            all.push(v);
        }
        assert_eq!(all.len(), 40_000);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 40_000);
        assert!(l.is_empty());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// A push racing a pop that empties the lane never leaves the bit cleared
    /// while an item is in the lane.
    #[test]
    fn bitmap_never_hides_an_item() {
        loom::model(|| {
            let l = Arc::new(Lanes::new(1));
            l.push(1, 1u32);
            let l2 = l.clone();
            let pusher = loom::thread::spawn(move || l2.push(1, 2));
            let first = l.pop();
            pusher.join().unwrap();
            let mut rest = Vec::new();
            while let Some(v) = l.pop() {
                rest.push(v);
            }
            let total = first.iter().count() + rest.len();
            assert_eq!(total, 2, "an item was hidden by a cleared bit");
            assert!(l.is_empty());
        });
    }

    /// Two poppers and a pusher: every item is taken exactly once.
    #[test]
    fn concurrent_pops_take_each_item_once() {
        loom::model(|| {
            let l = Arc::new(Lanes::new(0));
            l.push(0, 1u32);
            let a = {
                let l = l.clone();
                loom::thread::spawn(move || l.pop())
            };
            let b = {
                let l = l.clone();
                loom::thread::spawn(move || {
                    l.push(0, 2);
                    l.pop()
                })
            };
            let mut got: Vec<u32> = [a.join().unwrap(), b.join().unwrap()]
                .into_iter()
                .flatten()
                .map(|x| x.1)
                .collect();
            while let Some((_, v)) = l.pop() {
                got.push(v);
            }
            got.sort();
            assert_eq!(got, vec![1, 2]);
        });
    }

    /// A restore to the front racing a push: both end up in the lane, restored first
    /// when it was there first.
    #[test]
    fn restore_and_push_race() {
        loom::model(|| {
            let l = Arc::new(Lanes::new(0));
            let l2 = l.clone();
            let t = loom::thread::spawn(move || l2.push(0, 2u32));
            l.push_front(0, [1u32].into_iter());
            t.join().unwrap();
            let got: Vec<u32> = std::iter::from_fn(|| l.pop().map(|x| x.1)).collect();
            assert_eq!(got, vec![1, 2]);
        });
    }
}
