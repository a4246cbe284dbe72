//! Claims: consumers in any process take records by a compare-and-swap of
//! each record's claim word, settle them in place, and return them to ready
//! (restore, reclaim) ahead of everything newer.
//!
//! # Invariants
//! - Each record is claimed by exactly one consumer in any process (one CAS
//!   from a ready word to claimed-by-owner); `next` only moves forward, and
//!   only past records that are committed or skippable, never past a
//!   reservation. A run moves it once for its stretch, so `next` may trail
//!   records already claimed; a claim walking from it passes them.
//! - A run that fails after claiming ends with its claims (`claim_run`
//!   reports a failure only when it claimed nothing): every claim made
//!   reaches the caller.
//! - A restore returns a record to ready in place, then counts it in
//!   `restored`, then lowers the restore mark (`fetch_min`). A consumer that
//!   walked from the mark to `next` without finding a ready record clears the
//!   mark with a compare-and-swap against the value it walked from, and then,
//!   if `restored` moved since it started, lowers the mark again to where it
//!   started: a restore that raced the walk is either seen by the walk, or
//!   lowers the mark after the clear, or is covered by the re-mark. Walks
//!   start at `max(mark, head)` and clear only when they reached `next`.
//! - Every reclaim lowers the mark to the first ready, readable record it
//!   passes below `next`: a restorer killed between its CAS and its mark
//!   strands nothing for longer than one reclaim period. A mark nobody
//!   needed costs one walk that finds nothing.
//! - Only the owner settles or restores its claim (the owner and the claim
//!   generation are checked in the word before the CAS); another process
//!   reclaims a claim only when its owner is dead or its lease (tagged with
//!   the claim's generation, so a stale deadline never applies to a newer
//!   claim) passed long ago.

use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::Arc;

use crate::segment::claim::{Claim, ACKED, CLAIMED, DEAD, READY};
use crate::segment::{RecordMeta, Segment, Slot};

use super::layout::at;
use super::{Claimed, Lane, LaneError, Pos, NO_POS};

/// What the restored records at the head of a lane gave a claim.
enum Head {
    /// One was claimed.
    Claimed(Claimed),
    /// The first ready one was not accepted (or a reservation blocks): stop.
    Refused,
    /// None is ready: go on with the never-delivered records.
    Nothing,
}

/// How a walk over a range of records ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Walk {
    /// It reached the end of the range.
    Done,
    /// The visitor asked to stop.
    Stopped,
    /// A reservation not yet committed stands in the way.
    Blocked,
}

impl Lane {
    /// Claims one record (the CAS of its word) and counts it at once: the
    /// counts are figures only, but a count left for later is a count a
    /// kill loses, and the reclaim that brings the record back counts it
    /// ready again (the queue's figures would stay too high for good).
    fn claim_one(
        &self,
        seg: &Arc<Segment>,
        pos: Pos,
        meta: RecordMeta,
        owner: u32,
        w: u64,
        c: Claim,
    ) -> Option<Claimed> {
        let got = cas_claim(seg, pos, meta, owner, w, c)?;
        self.word(at::TAKEN).fetch_add(1, AcqRel);
        self.word(at::TAKEN_BYTES)
            .fetch_add(u64::from(meta.body_len), AcqRel);
        self.word(at::UNACKED).fetch_add(1, AcqRel);
        // Tests stop a consumer here, a claim made and counted.
        crate::failpoint!("lane::claimed");
        Some(got)
    }

    /// Claims up to `max` ready records for `owner` into `out`, in the
    /// order [`Lane::claim`] would take them one by one; returns how many.
    /// A stretch of never-delivered records in one segment is claimed in
    /// one pass: one look-up of the segment and one move of `next` for the
    /// stretch, not one each per record (each record is still claimed by
    /// the CAS of its own word, so several processes claiming at once still
    /// take each record once, and counted right after it).
    /// What a stretch stops at (restored records, a segment's end, a gap,
    /// a damaged word or record) is handled by [`Lane::claim`] itself.
    /// `Err` only when nothing was claimed: a failure after some claims
    /// ends the run with them (they are held, and must reach the caller),
    /// and shows again on the next call.
    pub(crate) fn claim_run(
        &self,
        owner: u32,
        max: usize,
        out: &mut Vec<Claimed>,
    ) -> Result<usize, LaneError> {
        claim_failpoint()?;
        self.reading();
        let mut n = 0;
        while n < max {
            if !self.restore_marked() {
                match self.claim_stretch(owner, max - n, out) {
                    Ok(0) => {}
                    Ok(k) => {
                        n += k;
                        continue;
                    }
                    Err(e) if n == 0 => return Err(e),
                    Err(_) => break,
                }
            }
            match self.claim(owner) {
                Ok(Some(c)) => {
                    out.push(c);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) if n == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(n)
    }

    /// True when restored records may wait below `next`.
    fn restore_marked(&self) -> bool {
        let low = self.load(at::RESTORE_LOW);
        low != NO_POS && low != 0
    }

    /// Claims ready records from `next` on, within `next`'s segment, up to
    /// `max`; stops (before it) at anything that is not a committed record
    /// or padding, or at a claim word that fails its check. Moves `next`
    /// forward past what it walked, once.
    fn claim_stretch(
        &self,
        owner: u32,
        max: usize,
        out: &mut Vec<Claimed>,
    ) -> Result<usize, LaneError> {
        let packed = self.load(at::NEXT);
        let start = Pos::unpack(packed);
        let Some(seg) = self.segment(start.seq)? else {
            return Ok(0);
        };
        seg.prepare_claims(start.off);
        let mut pos = start;
        let mut n = 0usize;
        while n < max {
            match seg.read(pos.off) {
                Slot::Record { len, meta } => {
                    let w = seg.claim_word(pos.off).load(Acquire);
                    match Claim::decode(w) {
                        Some(c) if c.state == READY => {
                            // A CAS lost to another consumer: it has the
                            // record; go on past it.
                            if let Some(got) = self.claim_one(&seg, pos, meta, owner, w, c) {
                                n += 1;
                                out.push(got);
                            }
                        }
                        Some(_) => {}
                        // Set aside by `claim` (it reports it).
                        None => break,
                    }
                    pos.off += len;
                }
                Slot::Padding { len } | Slot::Moved { len } => pos.off += len,
                Slot::Corrupt { .. } | Slot::Pending { .. } | Slot::End => break,
            }
        }
        if pos != start {
            // Forward only: another consumer may have moved it further.
            let mut cur = packed;
            while Pos::unpack(cur) < pos {
                match self
                    .word(at::NEXT)
                    .compare_exchange(cur, pos.pack(), AcqRel, Acquire)
                {
                    Ok(_) => break,
                    Err(now) => cur = now,
                }
            }
        }
        Ok(n)
    }

    /// Walks records from `from` to `until` (exclusive), calling `f` on each
    /// committed one (stops when `f` returns true). Segments retention
    /// deleted are skipped; a segment missing above them (deleted by hand) is
    /// skipped with a warning. Checksums are verified only if `verify`.
    pub(crate) fn walk(
        &self,
        from: Pos,
        until: Pos,
        verify: bool,
        mut f: impl FnMut(&Arc<Segment>, Pos, &RecordMeta) -> bool,
    ) -> Result<Walk, LaneError> {
        let mut pos = from;
        // The segment of the last step: records of one segment are walked
        // with one lookup (a lookup behind the newest segment takes the
        // segment map's lock). Holding it keeps its mapping, as each
        // step's lookup would; a segment retired meanwhile holds only
        // settled records, which a walk passes over.
        let mut here: Option<Arc<Segment>> = None;
        while pos < until {
            if here.as_ref().is_none_or(|s| s.header().seq != pos.seq) {
                here = self.segment(pos.seq)?;
            }
            let Some(seg) = here.as_ref() else {
                let low = self.load(at::LOW_SEG);
                if pos.seq < low {
                    pos = Pos::start(low);
                    continue;
                }
                if pos.seq < until.seq {
                    pos = Pos::start(self.past_gap(pos.seq, until.seq)?);
                    continue;
                }
                return Ok(Walk::Done);
            };
            let slot = if verify {
                seg.read(pos.off)
            } else {
                seg.skim(pos.off)
            };
            match slot {
                Slot::Record { len, meta } => {
                    if f(seg, pos, &meta) {
                        return Ok(Walk::Stopped);
                    }
                    pos.off += len;
                }
                Slot::Padding { len } | Slot::Moved { len } => pos.off += len,
                Slot::Corrupt { .. } => pos.off = seg.next_valid(pos.off),
                Slot::Pending { .. } => return Ok(Walk::Blocked),
                Slot::End => {
                    if pos.seq >= until.seq {
                        return Ok(Walk::Done);
                    }
                    pos = Pos::start(pos.seq + 1);
                }
            }
        }
        Ok(Walk::Done)
    }

    /// Where to go on from `seq`, a segment missing below `limit`: the next
    /// segment there is, or `limit` when none is below it. One look at the
    /// directory, not a step per missing number: a position a damaged
    /// state page put far from every segment must not cost a walk over
    /// billions of names.
    fn past_gap(&self, seq: u64, limit: u64) -> Result<u64, LaneError> {
        if self
            .gap_warned
            .swap(seq, std::sync::atomic::Ordering::Relaxed)
            != seq
        {
            tracing::warn!(lane = %self.name(), seq, "segment missing from its lane (deleted by hand?); its records are skipped");
        }
        Ok(self
            .storage
            .next_segment(seq)?
            .map_or(limit, |next| next.min(limit)))
    }

    /// Claims the oldest ready record for `owner`: restored ones first (in
    /// their original order), then the never-delivered ones in log order.
    /// `None` when nothing is ready.
    pub(crate) fn claim(&self, owner: u32) -> Result<Option<Claimed>, LaneError> {
        self.reading();
        self.claim_if(owner, |_, _, _| true)
    }

    /// Claims the record [`Lane::claim`] would, but only if `accept` says
    /// so; `None` (and nothing claimed, nothing skipped) otherwise. Expiry
    /// uses it to take a lane's head only when its time ran out: that does
    /// not count as reading the lane (every process sweeps a queue with a
    /// TTL, producers too, and a producer keeps few segments mapped).
    pub(crate) fn claim_if(
        &self,
        owner: u32,
        accept: impl Fn(&Arc<Segment>, Pos, &RecordMeta) -> bool,
    ) -> Result<Option<Claimed>, LaneError> {
        claim_failpoint()?;
        match self.claim_restored(owner, &accept)? {
            Head::Claimed(c) => Ok(Some(c)),
            Head::Refused => Ok(None),
            Head::Nothing => self.claim_next(owner, &accept),
        }
    }

    fn claim_restored(
        &self,
        owner: u32,
        accept: &impl Fn(&Arc<Segment>, Pos, &RecordMeta) -> bool,
    ) -> Result<Head, LaneError> {
        loop {
            let low = self.load(at::RESTORE_LOW);
            if low == NO_POS || low == 0 {
                return Ok(Head::Nothing);
            }
            let restores = self.load(at::RESTORED);
            let from = Pos::unpack(low).max(self.pos(at::HEAD));
            let next = self.pos(at::NEXT);
            let mut got = None;
            let mut refused = false;
            let walk = self.walk(from, next, false, |seg, pos, _| {
                let w = seg.claim_word(pos.off).load(Acquire);
                if let Some(c) = Claim::decode(w).filter(|c| c.state == READY) {
                    // Verified once, when claimed.
                    if let Slot::Record { meta, .. } = seg.read(pos.off) {
                        if !accept(seg, pos, &meta) {
                            refused = true;
                            return true;
                        }
                        got = self.claim_one(seg, pos, meta, owner, w, c);
                    }
                }
                got.is_some()
            })?;
            match walk {
                Walk::Stopped if refused => return Ok(Head::Refused),
                Walk::Stopped => return Ok(got.map_or(Head::Nothing, Head::Claimed)),
                Walk::Blocked => return Ok(Head::Refused),
                Walk::Done => {}
            }
            // Nothing restored is left: clear the mark, unless it moved.
            if self
                .word(at::RESTORE_LOW)
                .compare_exchange(low, NO_POS, AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            if self.load(at::RESTORED) != restores {
                // A restore raced the walk: look again from where we began.
                self.word(at::RESTORE_LOW).fetch_min(from.pack(), AcqRel);
            }
            return Ok(Head::Nothing);
        }
    }

    fn claim_next(
        &self,
        owner: u32,
        accept: &impl Fn(&Arc<Segment>, Pos, &RecordMeta) -> bool,
    ) -> Result<Option<Claimed>, LaneError> {
        loop {
            let packed = self.load(at::NEXT);
            let pos = Pos::unpack(packed);
            let advance = |to: Pos| {
                let _ = self
                    .word(at::NEXT)
                    .compare_exchange(packed, to.pack(), AcqRel, Acquire);
            };
            let Some(seg) = self.segment(pos.seq)? else {
                let (low, write) = (self.load(at::LOW_SEG), self.load(at::WRITE_SEG));
                let to = if pos.seq < low {
                    low
                } else if pos.seq < write {
                    self.past_gap(pos.seq, write)?
                } else {
                    // The write segment is not made yet: nothing to read.
                    return Ok(None);
                };
                // Forward only, and only to a segment a position can name:
                // damaged words must not send the walk round in a circle.
                if to <= pos.seq || to > u64::from(u32::MAX) {
                    return Ok(None);
                }
                advance(Pos::start(to));
                continue;
            };
            match seg.read(pos.off) {
                Slot::Record { len, meta } => {
                    let w = seg.claim_word(pos.off).load(Acquire);
                    let got = match Claim::decode(w) {
                        Some(c) if c.state == READY => {
                            if !accept(&seg, pos, &meta) {
                                return Ok(None);
                            }
                            self.claim_one(&seg, pos, meta, owner, w, c)
                        }
                        Some(_) => None,
                        None => {
                            self.set_aside(&seg, pos, w);
                            None
                        }
                    };
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
                Slot::Corrupt { reason, .. } => {
                    tracing::warn!(lane = %self.name(), seq = pos.seq, offset = pos.off, reason, "corrupt record skipped");
                    advance(Pos {
                        seq: pos.seq,
                        off: seg.next_valid(pos.off),
                    })
                }
                Slot::Pending { .. } => return Ok(None),
                Slot::End => {
                    // A segment below the write segment is done at its end.
                    // Seal it before moving on (a writer with a stale view
                    // of the write segment cannot append behind `next`),
                    // and look again if one got in before the seal.
                    if pos.seq >= self.load(at::WRITE_SEG) {
                        return Ok(None);
                    }
                    seg.seal();
                    if matches!(seg.read(pos.off), Slot::End) {
                        advance(Pos::start(pos.seq + 1));
                    }
                }
            }
        }
    }

    /// A claim word that fails its check: the record's state is unknown, so
    /// it is neither delivered nor dropped silently; it is marked dead (set
    /// aside) and reported.
    pub(super) fn set_aside(&self, seg: &Segment, pos: Pos, w: u64) {
        let dead = Claim {
            state: DEAD,
            redelivered: false,
            generation: 0,
            owner: 0,
        };
        if seg
            .claim_word(pos.off)
            .compare_exchange(w, dead.encode(), AcqRel, Acquire)
            .is_ok()
        {
            tracing::warn!(lane = %self.name(), seq = pos.seq, offset = pos.off, word = w, "damaged claim word: record set aside");
            self.damaged_claims.fetch_add(1, AcqRel);
        }
    }

    /// The claim word of `c` if `owner` still holds exactly that claim.
    fn held(&self, c: &Claimed, owner: u32) -> Option<(u64, Claim)> {
        let w = c.segment.claim_word(c.pos.off).load(Acquire);
        let k = Claim::decode(w)?;
        (k.state == CLAIMED && k.owner == owner && k.generation == c.generation).then_some((w, k))
    }

    /// Settles a claimed record: `to` is [`ACKED`] or [`DEAD`]. False if
    /// `owner` no longer holds it.
    pub(crate) fn settle(&self, c: &Claimed, owner: u32, to: u64) -> bool {
        debug_assert!(to == ACKED || to == DEAD);
        let Some((w, k)) = self.held(c, owner) else {
            return false;
        };
        let done = Claim { state: to, ..k };
        let ok = c
            .segment
            .claim_word(c.pos.off)
            .compare_exchange(w, done.encode(), AcqRel, Acquire)
            .is_ok();
        if ok {
            // Tests stop a consumer here: settled, its count not yet moved
            // (the unacked figure stays one high until recovery).
            crate::failpoint!("lane::settled_uncounted");
            self.word(at::UNACKED).fetch_sub(1, AcqRel);
        }
        ok
    }

    /// Returns a claimed record to ready in place, ahead of everything newer.
    /// `redelivered` marks it as delivered before (a restore after the
    /// application saw it); one put back unseen keeps the mark it had. False
    /// if `owner` no longer holds it.
    pub(crate) fn restore(&self, c: &Claimed, owner: u32, redelivered: bool) -> bool {
        let Some((w, k)) = self.held(c, owner) else {
            return false;
        };
        self.make_ready(
            &c.segment,
            c.pos,
            w,
            k,
            redelivered,
            u64::from(c.meta.body_len),
        )
    }

    /// The one way a claim goes back to ready: CAS, count, lower the mark.
    fn make_ready(
        &self,
        seg: &Segment,
        pos: Pos,
        w: u64,
        k: Claim,
        redelivered: bool,
        body_len: u64,
    ) -> bool {
        let ready = Claim {
            state: READY,
            redelivered: redelivered || k.redelivered,
            generation: k.generation,
            owner: 0,
        };
        if seg
            .claim_word(pos.off)
            .compare_exchange(w, ready.encode(), AcqRel, Acquire)
            .is_err()
        {
            return false;
        }
        self.word(at::UNACKED).fetch_sub(1, AcqRel);
        self.word(at::RESTORED).fetch_add(1, AcqRel);
        self.word(at::RESTORED_BYTES).fetch_add(body_len, AcqRel);
        self.word(at::RESTORE_LOW).fetch_min(pos.pack(), AcqRel);
        true
    }

    /// Sets the lease deadline of a record `owner` holds, in `CLOCK_MONOTONIC`
    /// nanoseconds (see [`crate::clock::shared_now_ns`]; 0 = none), tagged
    /// with the claim's generation. False if `owner` no longer holds it.
    pub(crate) fn set_deadline(&self, c: &Claimed, owner: u32, deadline_ns: u64) -> bool {
        if self.held(c, owner).is_none() {
            return false;
        }
        let ms = deadline_ns.div_ceil(1_000_000).min((1 << 48) - 1);
        let tagged = if deadline_ns == 0 {
            0
        } else {
            (ms << 16) | u64::from(c.generation)
        };
        c.segment.deadline_word(c.pos.off).store(tagged, Release);
        // Restored by another process meanwhile (its earlier deadline had
        // run out): the word is tagged with this claim's generation, so it
        // does not apply to the next claim, but the record is not ours.
        // (A reclaimer that read the old deadline may still win after this
        // look: both then deliver it, past the lease and its grace.)
        self.held(c, owner).is_some()
    }

    /// Restores every claimed record whose owner `alive` says is gone, or
    /// whose lease deadline lies more than `grace_ns` before `now_ns` and
    /// whose owner is not `me` (this process's own leases are its engine's to
    /// expire; the grace leaves a live owner time to do so). Returns how many
    /// came back. Also moves `head` up to the first unsettled record, and
    /// lowers the restore mark to the first ready record it passed.
    pub(crate) fn reclaim(
        &self,
        mut alive: impl FnMut(u32) -> bool,
        me: u32,
        now_ns: u64,
        grace_ns: u64,
    ) -> Result<usize, LaneError> {
        self.reading();
        let head = self.load(at::HEAD);
        let from = Pos::unpack(head);
        let until = self.pos(at::NEXT);
        let mut n = 0;
        // The first record still ready or claimed: `head` can move up to it.
        let mut first_open: Option<Pos> = None;
        let mut first_ready: Option<Pos> = None;
        let walk = self.walk(from, until, false, |seg, pos, meta| {
            let word = seg.claim_word(pos.off);
            let w = word.load(Acquire);
            let Some(k) = Claim::decode(w) else {
                self.set_aside(seg, pos, w);
                return false;
            };
            if first_open.is_none() && (k.state == READY || k.state == CLAIMED) {
                first_open = Some(pos);
            }
            // Readable only: a record whose checksum fails is skipped by
            // claims and stays ready-looking; marking it would send a walk
            // to it every reclaim, for nothing.
            if first_ready.is_none()
                && k.state == READY
                && matches!(seg.read(pos.off), Slot::Record { .. })
            {
                first_ready = Some(pos);
            }
            if k.state != CLAIMED || k.owner == me {
                return false;
            }
            let d = seg.deadline_word(pos.off).load(Acquire);
            let expired = d != 0
                && (d & 0xffff) as u16 == k.generation
                && now_ns > (d >> 16).saturating_mul(1_000_000).saturating_add(grace_ns);
            if (expired || !alive(k.owner))
                && self.make_ready(seg, pos, w, k, true, u64::from(meta.body_len))
            {
                n += 1;
            }
            false
        })?;
        // A ready record below `next` is found from the restore mark. A
        // restorer killed between its CAS and lowering the mark left one
        // unmarked (no walk from `next` reaches it): mark it, so it is
        // delivered now rather than at the next recovery. A mark that is
        // not needed costs one walk that finds nothing.
        if let Some(p) = first_ready {
            self.word(at::RESTORE_LOW).fetch_min(p.pack(), AcqRel);
        }
        let to = match (first_open, walk) {
            (Some(p), _) => p,
            (None, Walk::Done) => until,
            (None, _) => from,
        };
        if to > from {
            let _ = self
                .word(at::HEAD)
                .compare_exchange(head, to.pack(), AcqRel, Acquire);
        }
        Ok(n)
    }
}

/// The CAS of one claim word from ready (`expect`, decoded as `was`) to
/// claimed by `owner`; the claim when it won.
fn cas_claim(
    seg: &Arc<Segment>,
    pos: Pos,
    meta: RecordMeta,
    owner: u32,
    expect: u64,
    was: Claim,
) -> Option<Claimed> {
    // Generation 0 is never a claim's: it tags the "pending since" time
    // a reservation's deadline word may still hold (see `unblock`).
    let generation = was.generation.wrapping_add(1).max(1);
    let mine = Claim {
        state: CLAIMED,
        redelivered: was.redelivered,
        generation,
        owner,
    };
    seg.claim_word(pos.off)
        .compare_exchange(expect, mine.encode(), AcqRel, Acquire)
        .ok()?;
    Some(Claimed {
        pos,
        segment: seg.clone(),
        meta,
        redelivered: was.redelivered,
        generation,
    })
}

/// Tests make a lane unreadable where claims start:
/// `lane::claim_error` = `return(<errno>)`.
fn claim_failpoint() -> Result<(), LaneError> {
    #[cfg(feature = "failpoints")]
    fail::fail_point!("lane::claim_error", |errno: Option<String>| {
        let n = errno.and_then(|e| e.parse().ok()).unwrap_or(5);
        Err(LaneError::Io {
            dir: "claim failpoint".into(),
            source: std::io::Error::from_raw_os_error(n),
        })
    });
    Ok(())
}
