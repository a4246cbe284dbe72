//! Unacked tracking: one [`Slot`] per delivery, settled exactly once.
//!
//! # Invariants
//! - A slot's state and lease deadline live in one atomic word
//!   (`deadline_us << 2 | state`), so ack, reject, restore-by-close,
//!   restore-by-lease-expiry and `extend_lease` race through compare-and-swap
//!   alone: exactly one settles the slot, and a lease restore whose deadline was
//!   extended in the meantime fails its CAS (no ABA: the word changed).
//! - Per-message settle takes no lock. The channel's registry of slots (tag order,
//!   for ack-by-tag, ack-multiple and restore-on-close) is locked once per
//!   delivery batch, by close, and by the lease reaper's pass.
//! - The QoS window is released exactly once per slot, by whoever settles it
//!   (`Slot::release_window`).

use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Settled;
use crate::session::consumer::ConsumerShared;
use crate::sync::{AtomicU64, Ordering::SeqCst};
use crate::transport::{Envelope, QueueStore};

pub(crate) const UNACKED: u64 = 0;
pub(crate) const ACKED: u64 = 1;
pub(crate) const REJECTED: u64 = 2;
pub(crate) const RESTORED: u64 = 3;

/// Deadline meaning "no lease".
pub(crate) const NO_DEADLINE: u64 = u64::MAX >> 2;

fn pack(deadline_us: u64, state: u64) -> u64 {
    (deadline_us.min(NO_DEADLINE) << 2) | state
}

fn settled(state: u64) -> Settled {
    match state {
        ACKED => Settled::Acked,
        REJECTED => Settled::Rejected,
        _ => Settled::Restored,
    }
}

/// A delivery's settle state and lease deadline.
#[derive(Debug)]
pub(crate) struct LeaseState(AtomicU64);

impl LeaseState {
    pub(crate) fn new(deadline_us: u64) -> Self {
        LeaseState(AtomicU64::new(pack(deadline_us, UNACKED)))
    }

    /// Settles to `to` (ACKED, REJECTED, RESTORED) if still unacked.
    pub(crate) fn settle(&self, to: u64) -> Result<(), Settled> {
        let mut cur = self.0.load(SeqCst);
        loop {
            if cur & 3 != UNACKED {
                return Err(settled(cur & 3));
            }
            match self
                .0
                .compare_exchange(cur, (cur & !3) | to, SeqCst, SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    /// Restores if unacked and the deadline is at or before `now_us`.
    pub(crate) fn expire(&self, now_us: u64) -> bool {
        let cur = self.0.load(SeqCst);
        if cur & 3 != UNACKED || cur >> 2 > now_us {
            return false;
        }
        self.0
            .compare_exchange(cur, (cur & !3) | RESTORED, SeqCst, SeqCst)
            .is_ok()
    }

    /// Moves the deadline if still unacked.
    pub(crate) fn extend(&self, deadline_us: u64) -> Result<(), Settled> {
        let mut cur = self.0.load(SeqCst);
        loop {
            if cur & 3 != UNACKED {
                return Err(settled(cur & 3));
            }
            match self
                .0
                .compare_exchange(cur, pack(deadline_us, UNACKED), SeqCst, SeqCst)
            {
                Ok(_) => return Ok(()),
                Err(now) => cur = now,
            }
        }
    }

    pub(crate) fn is_unacked(&self) -> bool {
        self.0.load(SeqCst) & 3 == UNACKED
    }
}

/// One delivery: what was delivered, from where, to whom, and its state.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) state: LeaseState,
    pub(crate) tag: u64,
    pub(crate) env: Envelope,
    pub(crate) queue: Arc<dyn QueueStore>,
    /// The consumer it went to (`None` for `get`).
    pub(crate) consumer: Option<Arc<ConsumerShared>>,
    /// Holds a share of the consumer's prefetch window.
    pub(crate) windowed: bool,
}

impl Slot {
    /// Releases the window share after this slot was settled.
    pub(crate) fn release_window(&self) {
        if self.windowed {
            if let Some(c) = &self.consumer {
                c.window.release(self.env.size());
            }
        }
    }
}

/// A channel's outstanding deliveries in tag order.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Last tag issued (tags start at 1).
    pub(crate) last_tag: u64,
    pub(crate) slots: VecDeque<Arc<Slot>>,
    /// Set (under the lock) when the channel closes: no delivery is tracked
    /// after that, so none can escape the close's restore.
    pub(crate) closed: bool,
}

impl Registry {
    /// True once the channel closed: a delivery batch must not be tracked
    /// (its caller puts it back instead).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// The channel closes: nothing is tracked from now on; returns what was.
    pub(crate) fn close(&mut self) -> VecDeque<Arc<Slot>> {
        self.closed = true;
        std::mem::take(&mut self.slots)
    }

    pub(crate) fn next_tag(&mut self) -> u64 {
        self.last_tag += 1;
        self.last_tag
    }

    /// Drops settled slots from the front.
    pub(crate) fn compact(&mut self) {
        while self.slots.front().is_some_and(|s| !s.state.is_unacked()) {
            self.slots.pop_front();
        }
    }

    /// The slot with `tag`, if still tracked.
    pub(crate) fn find(&self, tag: u64) -> Option<&Arc<Slot>> {
        let first = self.slots.front()?.tag;
        let idx = tag.checked_sub(first)? as usize;
        // Tags are contiguous except for no_ack deliveries, which have no slot:
        // search from the likely position downwards.
        let start = idx.min(self.slots.len().saturating_sub(1));
        self.slots
            .range(..=start)
            .rev()
            .find(|s| s.tag <= tag)
            .filter(|s| s.tag == tag)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn settle_once() {
        let s = LeaseState::new(NO_DEADLINE);
        assert!(s.is_unacked());
        s.settle(ACKED).unwrap();
        assert_eq!(s.settle(REJECTED), Err(Settled::Acked));
        assert_eq!(s.extend(5), Err(Settled::Acked));
        assert!(!s.expire(u64::MAX));
    }

    #[test]
    fn expire_respects_deadline_and_extension() {
        let s = LeaseState::new(100);
        assert!(!s.expire(99));
        s.extend(200).unwrap();
        assert!(!s.expire(150));
        assert!(s.expire(200));
        assert_eq!(s.settle(ACKED), Err(Settled::Restored));
        let r = LeaseState::new(1);
        r.settle(REJECTED).unwrap();
        assert_eq!(r.settle(ACKED), Err(Settled::Rejected));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// A delivery racing its channel's close is either tracked before the
    /// close (and handed to the close's restore) or refused (and put back by
    /// its deliverer): never tracked after the close, never neither.
    #[test]
    fn a_delivery_racing_close_is_restored_or_refused() {
        use crate::memory::MemQueue;
        use crate::model::message::Message;
        use crate::model::queue::Queue;
        loom::model(|| {
            let reg = Arc::new(crate::sync::Mutex::new(Registry::default()));
            let queue: std::sync::Arc<dyn QueueStore> =
                std::sync::Arc::new(MemQueue::new(Queue::new("q"), None, std::sync::Weak::new()));
            let slot = std::sync::Arc::new(Slot {
                state: LeaseState::new(NO_DEADLINE),
                tag: 1,
                env: Envelope::new(Message::new("m"), "", "q"),
                queue,
                consumer: None,
                windowed: false,
            });
            let (r2, s2) = (reg.clone(), slot.clone());
            let deliverer = loom::thread::spawn(move || {
                let mut r = r2.lock();
                if r.is_closed() {
                    false
                } else {
                    r.slots.push_back(s2);
                    true
                }
            });
            let restored = reg.lock().close();
            let tracked = deliverer.join().unwrap();
            let in_restore = restored.iter().any(|s| std::sync::Arc::ptr_eq(s, &slot));
            assert_eq!(tracked, in_restore);
            assert!(reg.lock().slots.is_empty(), "nothing tracked after close");
        });
    }

    /// Ack, lease expiry and extension race: exactly one of ack / expire
    /// settles, and an expiry never wins against an extension that completed
    /// before it read the word.
    #[test]
    fn ack_expire_extend_race() {
        loom::model(|| {
            let s = Arc::new(LeaseState::new(10));
            let (a, b) = (s.clone(), s.clone());
            let acker = loom::thread::spawn(move || a.settle(ACKED).is_ok());
            let extender = loom::thread::spawn(move || b.extend(1_000).is_ok());
            let expired = s.expire(20);
            let acked = acker.join().unwrap();
            let extended = extender.join().unwrap();
            assert!(acked ^ expired, "exactly one settles");
            // An extension that landed first moves the deadline past 20, so the
            // expiry cannot also have won.
            assert!(!(expired && extended));
        });
    }
}
