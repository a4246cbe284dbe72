//! Claims: consumers in any process take records by a compare-and-swap of
//! each record's claim word, settle them in place, and return them to ready
//! (restore, reclaim) ahead of everything newer.
//!
//! # Invariants
//! - Each record is claimed by exactly one consumer in any process (one CAS
//!   from ready to claimed-by-owner); `next` only moves forward.
//! - A restored record goes back to ready in place, flagged redelivered, and
//!   the shared restore mark (generation + lowest restored position, one
//!   word) makes consumers look there before `next`. A consumer clears the
//!   mark only with a compare-and-swap against the generation it scanned
//!   under, so a restore never slips past unseen.
//! - Only the owner settles or restores its claim (the owner is checked in
//!   the word before the CAS); another process reclaims a claim only when its
//!   owner is dead or its lease deadline passed long ago.

use std::sync::atomic::{Ordering::AcqRel, Ordering::Acquire, Ordering::Release};
use std::sync::Arc;

use crate::segment::{RecordMeta, Segment, Slot, HEADER_LEN};

use super::layout::{at, claim};
use super::position::{NO_POS, OFF_BITS, SEQ_BITS};
use super::{Claimed, Lane, LaneError, Pos};

impl Lane {
    pub(super) fn try_claim(
        &self,
        seg: &Arc<Segment>,
        pos: Pos,
        meta: RecordMeta,
        owner: u64,
        expect: u64,
    ) -> Option<Claimed> {
        let word = seg.claim_word(pos.off);
        let mine = claim::CLAIMED | (expect & claim::REDELIVERED) | claim::owner(owner);
        word.compare_exchange(expect, mine, AcqRel, Acquire).ok()?;
        self.word(at::TAKEN).fetch_add(1, AcqRel);
        self.word(at::TAKEN_BYTES)
            .fetch_add(u64::from(meta.body_len), AcqRel);
        self.signed(at::UNACKED).fetch_add(1, AcqRel);
        Some(Claimed {
            pos,
            segment: seg.clone(),
            meta,
            redelivered: expect & claim::REDELIVERED != 0,
        })
    }

    /// Walks records from `from` to `until` (exclusive), calling `f` on each
    /// (stops when `f` returns true); checksums are verified only if `verify`.
    pub(super) fn walk_with(
        &self,
        from: Pos,
        until: Pos,
        verify: bool,
        mut f: impl FnMut(&Arc<Segment>, Pos) -> bool,
    ) -> Result<(), LaneError> {
        let mut pos = from;
        while pos < until {
            let Some(seg) = self.segment(pos.seq)? else {
                return Ok(());
            };
            let slot = if verify {
                seg.read(pos.off)
            } else {
                seg.skim(pos.off)
            };
            match slot {
                Slot::Record { len, .. } => {
                    if f(&seg, pos) {
                        return Ok(());
                    }
                    pos.off += len;
                }
                Slot::Padding { len } | Slot::Moved { len } => pos.off += len,
                Slot::Corrupt { .. } => pos.off = seg.next_valid(pos.off),
                Slot::Pending => return Ok(()),
                Slot::End => {
                    if pos.seq >= until.seq {
                        return Ok(());
                    }
                    pos = Pos {
                        seq: pos.seq + 1,
                        off: HEADER_LEN,
                    };
                }
            }
        }
        Ok(())
    }

    /// Claims the oldest ready record for `owner`: restored ones first, then
    /// the never-delivered ones in log order. `None` when nothing is ready.
    pub(crate) fn claim(&self, owner: u64) -> Result<Option<Claimed>, LaneError> {
        // Restored records, below `next`.
        loop {
            let mark = self.word(at::RESTORE).load(Acquire);
            let low = mark & NO_POS;
            if low == NO_POS {
                break;
            }
            let next = Pos::unpack(self.word(at::NEXT).load(Acquire));
            let mut got = None;
            self.walk_with(Pos::unpack(low), next, false, |seg, pos| {
                let w = seg.claim_word(pos.off).load(Acquire);
                if claim::state(w) == claim::READY {
                    if let Slot::Record { meta, .. } = seg.read(pos.off) {
                        got = self.try_claim(seg, pos, meta, owner, w);
                    }
                }
                got.is_some()
            })?;
            if got.is_some() {
                return Ok(got);
            }
            // Nothing restored is left: clear the mark unless a restore came in.
            let cleared = (mark & !NO_POS) | NO_POS;
            if self
                .word(at::RESTORE)
                .compare_exchange(mark, cleared, AcqRel, Acquire)
                .is_ok()
            {
                break;
            }
        }
        // Never-delivered records, at `next`.
        loop {
            let packed = self.word(at::NEXT).load(Acquire);
            let pos = Pos::unpack(packed);
            let Some(seg) = self.segment(pos.seq)? else {
                return Ok(None);
            };
            let advance = |to: Pos| {
                let _ = self
                    .word(at::NEXT)
                    .compare_exchange(packed, to.pack(), AcqRel, Acquire);
            };
            match seg.read(pos.off) {
                Slot::Record { len, meta } => {
                    let got = self.try_claim(&seg, pos, meta, owner, claim::READY);
                    advance(Pos {
                        seq: pos.seq,
                        off: pos.off + len,
                    });
                    if got.is_some() {
                        return Ok(got);
                    }
                }
                Slot::Padding { len } | Slot::Moved { len } => advance(Pos {
                    seq: pos.seq,
                    off: pos.off + len,
                }),
                Slot::Corrupt { .. } => advance(Pos {
                    seq: pos.seq,
                    off: seg.next_valid(pos.off),
                }),
                Slot::Pending => return Ok(None),
                Slot::End => {
                    let done = seg.is_sealed()
                        || pos.off + crate::segment::RECORD_HEADER_LEN > seg.header().capacity;
                    if done && self.segment(pos.seq + 1)?.is_some() {
                        advance(Pos {
                            seq: pos.seq + 1,
                            off: HEADER_LEN,
                        });
                    } else {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Settles a claimed record: `to` is [`claim::ACKED`] or [`claim::DEAD`].
    /// False if `owner` no longer holds it.
    pub(crate) fn settle(&self, c: &Claimed, owner: u64, to: u64) -> bool {
        let word = c.segment.claim_word(c.pos.off);
        let cur = word.load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        let ok = word.compare_exchange(cur, to, AcqRel, Acquire).is_ok();
        if ok {
            self.signed(at::UNACKED).fetch_sub(1, AcqRel);
        }
        ok
    }

    /// Returns a claimed record to ready, flagged redelivered, ahead of
    /// everything newer. False if `owner` no longer holds it.
    /// `redelivered` marks it as delivered before (a restore after the
    /// application saw it); a record put back unseen keeps the mark it had.
    pub(crate) fn restore(&self, c: &Claimed, owner: u64, redelivered: bool) -> bool {
        let word = c.segment.claim_word(c.pos.off);
        let cur = word.load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        // A ready record has no lease: the next claimer starts without one.
        c.segment.deadline_word(c.pos.off).store(0, Release);
        if word
            .compare_exchange(
                cur,
                claim::READY
                    | if redelivered {
                        claim::REDELIVERED
                    } else {
                        cur & claim::REDELIVERED
                    },
                AcqRel,
                Acquire,
            )
            .is_err()
        {
            return false;
        }
        self.signed(at::UNACKED).fetch_sub(1, AcqRel);
        self.word(at::RESTORED).fetch_add(1, AcqRel);
        self.word(at::RESTORED_BYTES)
            .fetch_add(u64::from(c.meta.body_len), AcqRel);
        self.mark_restored(c.pos);
        true
    }

    pub(super) fn mark_restored(&self, pos: Pos) {
        let w = self.word(at::RESTORE);
        let mut cur = w.load(Acquire);
        loop {
            let gen = (cur >> (OFF_BITS + SEQ_BITS)).wrapping_add(1) & 0xff;
            let low = (cur & NO_POS).min(pos.pack());
            let new = (gen << (OFF_BITS + SEQ_BITS)) | low;
            match w.compare_exchange(cur, new, AcqRel, Acquire) {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }

    /// Sets the lease deadline of a record `owner` holds (`CLOCK_MONOTONIC`
    /// ns, see [`crate::clock::shared_now_ns`]; 0 = none). False if `owner`
    /// no longer holds it.
    pub(crate) fn set_deadline(&self, c: &Claimed, owner: u64, deadline: u64) -> bool {
        let cur = c.segment.claim_word(c.pos.off).load(Acquire);
        if claim::state(cur) != claim::CLAIMED || claim::owner(cur) != owner {
            return false;
        }
        c.segment.deadline_word(c.pos.off).store(deadline, Release);
        true
    }

    /// Restores every claimed record whose owner `alive` says is gone, or
    /// whose lease deadline lies more than `grace` ns before `now` and whose
    /// owner is not `me` (this process's own leases are its engine's to
    /// expire; the grace leaves a live owner time to do so). Returns how many
    /// came back. Also moves `head` up to the first unsettled record.
    pub(crate) fn reclaim(
        &self,
        mut alive: impl FnMut(u64) -> bool,
        me: u64,
        now: u64,
        grace: u64,
    ) -> Result<usize, LaneError> {
        let head = self.word(at::HEAD).load(Acquire);
        let from = Pos::unpack(head);
        let until = Pos::unpack(self.word(at::NEXT).load(Acquire));
        let mut n = 0;
        // The first record still ready or claimed: `head` can move up to it.
        let mut first_open: Option<Pos> = None;
        self.walk_with(from, until, false, |seg, pos| {
            let word = seg.claim_word(pos.off);
            let cur = word.load(Acquire);
            let state = claim::state(cur);
            if first_open.is_none() && (state == claim::READY || state == claim::CLAIMED) {
                first_open = Some(pos);
            }
            if state != claim::CLAIMED {
                return false;
            }
            let owner = claim::owner(cur);
            let deadline = seg.deadline_word(pos.off).load(Acquire);
            let expired = owner != me && deadline != 0 && now > deadline.saturating_add(grace);
            if !expired && (owner == me || alive(owner)) {
                return false;
            }
            seg.deadline_word(pos.off).store(0, Release);
            let back = claim::READY | claim::REDELIVERED;
            if word.compare_exchange(cur, back, AcqRel, Acquire).is_ok() {
                if let Slot::Record { meta, .. } = seg.skim(pos.off) {
                    self.signed(at::UNACKED).fetch_sub(1, AcqRel);
                    self.word(at::RESTORED).fetch_add(1, AcqRel);
                    self.word(at::RESTORED_BYTES)
                        .fetch_add(u64::from(meta.body_len), AcqRel);
                }
                self.mark_restored(pos);
                n += 1;
            }
            false
        })?;
        let to = first_open.unwrap_or(until);
        if to > from {
            let _ = self
                .word(at::HEAD)
                .compare_exchange(head, to.pack(), AcqRel, Acquire);
        }
        Ok(n)
    }
}
