//! The shared memory the log protocol runs on: a file mapped shared by every
//! process that uses it, seen as 64- and 32-bit atomic words and as byte
//! ranges. Under `--cfg loom` a region is a vector of loom atomics instead,
//! so the model checks in `lane/loom_model.rs` run the real protocol code over
//! memory loom can interleave.
//!
//! # Invariants
//! - Every word that more than one process writes is only accessed through
//!   the atomics here. Byte ranges are written only by the owner of a
//!   reservation (or by recovery with exclusive access) and read only after
//!   an acquire load of the word that publishes them.

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64};

/// A mapped (or, under loom, modelled) region of shared memory.
#[derive(Debug)]
pub(crate) struct Region {
    /// Declared before `map`: unregistered before the mapping goes.
    #[cfg(not(loom))]
    _cut: crate::cut::Registration,
    #[cfg(not(loom))]
    map: memmap2::MmapRaw,
    #[cfg(loom)]
    words: Box<[AtomicU64]>,
    len: u64,
}

#[cfg(not(loom))]
impl Region {
    /// Maps `file` shared, read-write, for its whole length.
    pub(crate) fn map(file: &std::fs::File) -> std::io::Result<Region> {
        let len = file.metadata()?.len();
        let map = memmap2::MmapRaw::map_raw(file)?;
        // A cut under it, met by the store's own code, is survived and
        // reported (`cut.rs`).
        let _cut = crate::cut::register(map.as_ptr() as usize, map.len());
        Ok(Region { _cut, map, len })
    }

    /// An anonymous private region of `len` zero bytes: what Miri can run
    /// the accessors below over (it emulates no file mapping).
    #[cfg(test)]
    pub(crate) fn anon(len: u64) -> Region {
        let map = memmap2::MmapOptions::new()
            .len(len as usize)
            .map_anon()
            .expect("an anonymous mapping");
        Region {
            _cut: crate::cut::Registration::none(),
            map: map.into(),
            len,
        }
    }

    /// Whether `[at, at + n)` lies in the region (no overflow: an offset
    /// read from a damaged page can be anything).
    fn holds(&self, at: u64, n: u64) -> bool {
        at.checked_add(n).is_some_and(|end| end <= self.len)
    }

    /// The 64-bit word at `at`.
    pub(crate) fn u64_at(&self, at: u64) -> &AtomicU64 {
        assert!(at % 8 == 0 && self.holds(at, 8), "word out of bounds");
        // SAFETY: in bounds and 8-aligned (asserted; the mapping is page
        // aligned); every process accesses this word only atomically; the
        // mapping lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(at as usize) as *const AtomicU64) }
    }

    /// The 32-bit word at `at` (futex words).
    pub(crate) fn u32_at(&self, at: u64) -> &AtomicU32 {
        assert!(at % 4 == 0 && self.holds(at, 4), "word out of bounds");
        // SAFETY: as for `u64_at`, with 4-byte alignment.
        unsafe { &*(self.map.as_mut_ptr().add(at as usize) as *const AtomicU32) }
    }

    /// Writes `bytes` at `at`.
    pub(crate) fn write(&self, at: u64, bytes: &[u8]) {
        assert!(self.holds(at, bytes.len() as u64), "write out of bounds");
        // SAFETY: in bounds (asserted); the caller owns the range (a
        // reservation it made, a header at format time, a cut tail during
        // exclusive recovery), which no other process reads before the
        // release that publishes it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at as usize),
                bytes.len(),
            )
        }
    }

    /// The bytes `[at, at + len)`, in place (clamped to the region).
    pub(crate) fn slice(&self, at: u64, len: u64) -> &[u8] {
        let at = at.min(self.len);
        let len = len.min(self.len - at);
        // SAFETY: in bounds (clamped); callers read only bytes published by an
        // acquire load of their record's state word, which no process writes
        // again; the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at as usize), len as usize) }
    }

    /// The bytes `[at, at + len)`, copied out (clamped to the region).
    pub(crate) fn read(&self, at: u64, len: u64) -> Vec<u8> {
        self.slice(at, len).to_vec()
    }

    /// Maps the pages of `[at, at + len)` (page-aligned, clamped) writable in
    /// this process in one call, as writes to each would, without writing:
    /// a consumer about to set the claim words there takes one system call
    /// instead of a read fault and a write fault per page. Best effort
    /// (an old kernel says `EINVAL`; the faults then happen as before).
    pub(crate) fn populate_write(&self, at: u64, len: u64) {
        self.advise(at, len, rustix::mm::Advice::LinuxPopulateWrite);
    }

    /// Brings the pages of `[at, at + len)` (page-aligned, clamped) into the
    /// page cache, as reads of each would, without dirtying them: pages of
    /// a file's allocated but unwritten blocks are made and zeroed here, so
    /// the process that writes them later does not (the zeroing was a
    /// quarter of a publisher's time). Best effort, as `populate_write`.
    pub(crate) fn populate_read(&self, at: u64, len: u64) {
        self.advise(at, len, rustix::mm::Advice::LinuxPopulateRead);
    }

    fn advise(&self, at: u64, len: u64, advice: rustix::mm::Advice) {
        let at = at.min(self.len);
        let len = len.min(self.len - at);
        if len == 0 {
            return;
        }
        // SAFETY: the range lies in the mapping (clamped); the advice
        // changes no byte, only which pages this process has mapped.
        let _ = unsafe {
            rustix::mm::madvise(
                self.map.as_mut_ptr().add(at as usize).cast(),
                len as usize,
                advice,
            )
        };
    }

    /// Runs `f` over the bytes `[at, at + len)` (clamped), in place.
    pub(crate) fn with_bytes<R>(&self, at: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.slice(at, len))
    }
}

#[cfg(loom)]
impl Region {
    /// Files are not modelled: loom models use [`Region::new_model`].
    pub(crate) fn map(_file: &std::fs::File) -> std::io::Result<Region> {
        Err(std::io::Error::other("files are not modelled under loom"))
    }

    /// A zero-filled region of `len` bytes (a multiple of 8).
    #[cfg(test)]
    pub(crate) fn new_model(len: u64) -> Region {
        Region {
            words: (0..len / 8).map(|_| AtomicU64::new(0)).collect(),
            len,
        }
    }

    pub(crate) fn u64_at(&self, at: u64) -> &AtomicU64 {
        assert!(at % 8 == 0 && at + 8 <= self.len, "word out of bounds");
        &self.words[(at / 8) as usize]
    }

    pub(crate) fn u32_at(&self, _at: u64) -> &AtomicU32 {
        unreachable!("the loom models use no futex words")
    }

    /// Word by word (one relaxed store per word: what a writer publishes
    /// with a later release), so models stay small.
    pub(crate) fn write(&self, at: u64, bytes: &[u8]) {
        use loom::sync::atomic::Ordering::Relaxed;
        let end = at + bytes.len() as u64;
        let mut w = at & !7;
        while w < end {
            let word = &self.words[(w / 8) as usize];
            let mut v = if w >= at && w + 8 <= end {
                0
            } else {
                word.load(Relaxed)
            };
            for i in 0..8 {
                let p = w + i;
                if p >= at && p < end {
                    let shift = i * 8;
                    v = (v & !(0xff << shift)) | (u64::from(bytes[(p - at) as usize]) << shift);
                }
            }
            word.store(v, Relaxed);
            w += 8;
        }
    }

    pub(crate) fn read(&self, at: u64, len: u64) -> Vec<u8> {
        use loom::sync::atomic::Ordering::Relaxed;
        let at = at.min(self.len);
        let len = len.min(self.len - at);
        let mut out = Vec::with_capacity(len as usize);
        let mut w = at & !7;
        while w < at + len {
            let v = self.words[(w / 8) as usize].load(Relaxed);
            for i in 0..8 {
                let p = w + i;
                if p >= at && p < at + len {
                    out.push((v >> (i * 8)) as u8);
                }
            }
            w += 8;
        }
        out
    }

    pub(crate) fn with_bytes<R>(&self, at: u64, len: u64, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.read(at, len))
    }

    /// Nothing to map in a model.
    pub(crate) fn populate_write(&self, _at: u64, _len: u64) {}

    /// Nothing to map in a model.
    pub(crate) fn populate_read(&self, _at: u64, _len: u64) {}
}

/// The accessors' bounds and their `unsafe` over real memory. `ci/miri.sh`
/// runs these under Miri (over an anonymous mapping: Miri emulates no file
/// mapping).
#[cfg(all(test, not(loom)))]
mod tests {
    use super::Region;
    use std::sync::atomic::Ordering::{Acquire, Release, SeqCst};

    #[test]
    fn words_and_bytes_land_where_they_are_asked_to() {
        let r = Region::anon(4096);
        r.u64_at(0).store(u64::MAX, Release);
        r.u64_at(4088).store(0x0102_0304_0506_0708, Release);
        assert_eq!(r.u64_at(4088).fetch_add(1, SeqCst), 0x0102_0304_0506_0708);
        assert_eq!(r.read(4088, 8), 0x0102_0304_0506_0709u64.to_le_bytes());
        // A futex word: never the half of a 64-bit word (mixed-size atomic
        // accesses to one place are outside Rust's memory model).
        r.u32_at(12).store(7, Release);
        assert_eq!(r.u32_at(12).swap(9, SeqCst), 7);
        assert_eq!(r.read(8, 8), [0, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(r.u64_at(0).load(Acquire), u64::MAX);
        r.write(100, b"hello");
        assert_eq!(r.slice(100, 5), b"hello");
        assert_eq!(r.with_bytes(99, 7, <[u8]>::to_vec), b"\0hello\0");
        // Reads are clamped to the region, never past it.
        assert_eq!(r.slice(4090, 100).len(), 6);
        assert!(r.slice(u64::MAX, u64::MAX).is_empty());
        assert!(r.read(5000, 8).is_empty());
        r.write(4096, b"");
    }

    #[test]
    fn a_word_at_an_offset_that_wraps_is_refused_not_reached() {
        let r = Region::anon(4096);
        for at in [u64::MAX - 7, u64::MAX - 3, 4096, 4092] {
            let w = std::panic::catch_unwind(|| r.u64_at(at).load(Acquire));
            assert!(w.is_err(), "u64 at {at}");
        }
        for at in [u64::MAX - 3, 4096] {
            let w = std::panic::catch_unwind(|| r.u32_at(at).load(Acquire));
            assert!(w.is_err(), "u32 at {at}");
        }
        for at in [u64::MAX - 1, 4095] {
            let w = std::panic::catch_unwind(|| r.write(at, b"xy"));
            assert!(w.is_err(), "write at {at}");
        }
        // Misaligned words too.
        assert!(std::panic::catch_unwind(|| r.u64_at(4).load(Acquire)).is_err());
        assert!(std::panic::catch_unwind(|| r.u32_at(2).load(Acquire)).is_err());
    }
}
