//! A segment file: a preallocated, memory-mapped, append-only run of records
//! that several processes write and read at once (see `FORMAT.md`).
//!
//! # Invariants
//! - Writers in any process reserve space with one `fetch_add` on the shared
//!   `tail` in the mapped header; a reservation is owned by its writer alone
//!   until it commits by compare-and-swapping the record's `len` from 0 (the
//!   release that publishes the record). Readers touch a record's immutable
//!   bytes only after an acquire load of a non-zero `len`.
//! - A reservation whose writer died is turned into padding by a compare-and-
//!   swap of the same `len` word, so exactly one of "commit" and "pad" wins;
//!   a writer that loses gets `AppendError::Stolen` and publishes again
//!   elsewhere: nothing is lost.
//! - Every record says where it is (`offset`) and carries a CRC-32 of its
//!   immutable header fields and payload, so a scan can tell a record from
//!   leftover bytes and find the next record after a hole.
//! - Mutable per-record words (`len`, `flags`, `claim`, `deadline`) are only
//!   accessed atomically.

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{
    AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Release,
};
use std::sync::Arc;

use memmap2::MmapRaw;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of the segment header; records start here.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Size of a record header; the payload follows it.
pub(crate) const RECORD_HEADER_LEN: u64 = 64;
/// Segment layout version.
pub(crate) const SEGMENT_VERSION: u32 = 1;
/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"DASHISEG";
/// `magic` of every record header.
pub(crate) const RECORD_MAGIC: u32 = 0xD45A_12EC;

/// Record flag: padding (a full segment's tail, or a dead writer's hole).
pub(crate) const FLAG_PADDING: u32 = 1;
/// Record flag: corrupt, copied aside, to be skipped.
pub(crate) const FLAG_MOVED: u32 = 2;

const TAIL_AT: usize = 64;
const SEALED_AT: usize = 192;

/// The immutable start of a segment (offset 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct SegmentHeader {
    /// [`SEGMENT_MAGIC`].
    pub(crate) magic: [u8; 8],
    /// [`SEGMENT_VERSION`].
    pub(crate) version: u32,
    /// Priority lane the segment belongs to.
    pub(crate) lane: u32,
    /// Sequence number of the segment within its lane.
    pub(crate) seq: u64,
    /// File size in bytes.
    pub(crate) capacity: u64,
}

/// The immutable part of a record header (bytes 24..64 of the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(crate) struct RecordMeta {
    /// [`RECORD_MAGIC`].
    pub(crate) magic: u32,
    /// CRC-32 of bytes 8.. of this struct and of the payload.
    pub(crate) crc: u32,
    /// Where the record starts in its segment.
    pub(crate) offset: u64,
    /// Writer: process id << 32 | low 32 bits of its start time.
    pub(crate) writer: u64,
    /// Publish time, nanoseconds since the Unix epoch.
    pub(crate) timestamp_ns: u64,
    /// Payload length in bytes.
    pub(crate) payload_len: u32,
    /// Length of the message body inside the payload (what queue byte limits
    /// and prefetch windows count).
    pub(crate) body_len: u32,
}

const META_AT: u64 = 24;
const CLAIM_AT: u64 = 8;
const DEADLINE_AT: u64 = 16;

/// Total bytes a record with `payload_len` bytes of payload takes.
pub(crate) fn record_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len as u64 + 7) & !7
}

fn crc(meta: &RecordMeta, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&meta.as_bytes()[8..]);
    h.update(payload);
    h.finalize()
}

/// Why a segment could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum SegmentError {
    /// I/O on the file or the mapping.
    #[error("segment {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a segment file.
    #[error("segment {path}: not a dashi segment (bad magic)")]
    BadMagic {
        /// The file.
        path: String,
    },
    /// A layout version this build does not read.
    #[error("segment {path}: format version {found}, this build reads version {SEGMENT_VERSION}")]
    UnknownVersion {
        /// The file.
        path: String,
        /// The version found.
        found: u32,
    },
    /// The header and the file disagree.
    #[error("segment {path}: {reason}")]
    Inconsistent {
        /// The file.
        path: String,
        /// What disagrees.
        reason: String,
    },
}

/// Why an append did not happen (the payload was not written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AppendError {
    /// No room left: the segment is sealed; append to the next one.
    #[error("segment is full")]
    Full,
    /// The record is larger than a segment can ever hold.
    #[error("a record of {0} bytes does not fit in a segment")]
    TooLarge(u64),
    /// Another process took this reservation for a dead writer's; append again.
    #[error("reservation was padded over before commit")]
    Stolen,
}

/// What is at an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A committed record that checks out.
    Record {
        /// Its header.
        meta: RecordMeta,
        /// Total length (next record at offset + len).
        len: u64,
    },
    /// Padding to skip.
    Padding {
        /// Total length.
        len: u64,
    },
    /// A corrupt record that recovery copied aside; skip it.
    Moved {
        /// Total length.
        len: u64,
    },
    /// Reserved but not (yet) committed.
    Pending,
    /// Nothing more has been reserved here.
    End,
    /// A committed length whose record does not check out.
    Corrupt {
        /// Its committed length (may itself be garbage).
        len: u64,
        /// What failed.
        reason: &'static str,
    },
}

/// A committed record's payload inside a mapping, owned by a `Bytes`.
struct MappedSlice {
    seg: Arc<Segment>,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: the range is inside the mapping (clamped at construction),
        // which `seg` keeps alive; it is a committed record's payload, which no
        // process writes after the commit (only the separate atomic header words
        // change).
        unsafe { std::slice::from_raw_parts(self.seg.map.as_ptr().add(self.start), self.len) }
    }
}

/// An open, mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    map: MmapRaw,
    header: SegmentHeader,
    path: String,
    file: Arc<File>,
}

impl Segment {
    fn io(path: &Path) -> impl Fn(std::io::Error) -> SegmentError + '_ {
        move |source| SegmentError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// Formats `file` (already sized to `capacity` bytes, zero-filled, e.g.
    /// by `fallocate`) as an empty segment and maps it.
    pub(crate) fn format(
        path: &Path,
        file: File,
        lane: u32,
        seq: u64,
    ) -> Result<Segment, SegmentError> {
        let capacity = file.metadata().map_err(Self::io(path))?.len();
        if capacity < HEADER_LEN + RECORD_HEADER_LEN || capacity % 4096 != 0 {
            return Err(SegmentError::Inconsistent {
                path: path.display().to_string(),
                reason: format!("size {capacity} is not a multiple of 4096 above 4096"),
            });
        }
        let map = MmapRaw::map_raw(&file).map_err(Self::io(path))?;
        let header = SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: SEGMENT_VERSION,
            lane,
            seq,
            capacity,
        };
        let seg = Segment {
            map,
            header,
            path: path.display().to_string(),
            file: Arc::new(file),
        };
        seg.write_bytes(0, header.as_bytes());
        seg.tail().store(HEADER_LEN, Release);
        Ok(seg)
    }

    /// Opens and maps an existing segment, checking its header.
    pub(crate) fn open(path: &Path, file: File) -> Result<Segment, SegmentError> {
        let len = file.metadata().map_err(Self::io(path))?.len();
        let name = path.display().to_string();
        if len < HEADER_LEN {
            return Err(SegmentError::BadMagic { path: name });
        }
        let map = MmapRaw::map_raw(&file).map_err(Self::io(path))?;
        let mut raw = [0u8; std::mem::size_of::<SegmentHeader>()];
        // SAFETY: the mapping is at least HEADER_LEN bytes (checked above) and
        // the header is written once, at format time, before any process opens
        // the segment.
        unsafe { std::ptr::copy_nonoverlapping(map.as_ptr(), raw.as_mut_ptr(), raw.len()) };
        let header = SegmentHeader::read_from_bytes(&raw[..])
            .map_err(|_| SegmentError::BadMagic { path: name.clone() })?;
        if header.magic != SEGMENT_MAGIC {
            return Err(SegmentError::BadMagic { path: name });
        }
        if header.version != SEGMENT_VERSION {
            return Err(SegmentError::UnknownVersion {
                path: name,
                found: header.version,
            });
        }
        if header.capacity != len {
            return Err(SegmentError::Inconsistent {
                path: name,
                reason: format!("header says {} bytes, the file has {len}", header.capacity),
            });
        }
        Ok(Segment {
            map,
            header,
            path: name,
            file: Arc::new(file),
        })
    }

    /// The immutable header.
    pub(crate) fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The segment's file (for `fdatasync`).
    pub(crate) fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    fn capacity(&self) -> u64 {
        self.header.capacity
    }

    fn atomic_u64(&self, at: u64) -> &AtomicU64 {
        assert!(
            at % 8 == 0 && at + 8 <= self.capacity(),
            "atomic word out of bounds"
        );
        // SAFETY: in bounds (asserted) and 8-aligned (the mapping is page
        // aligned and `at` is a multiple of 8); every process accesses this
        // word only through atomics; the mapping lives as long as `self`.
        unsafe { &*(self.map.as_mut_ptr().add(at as usize) as *const AtomicU64) }
    }

    fn atomic_u32(&self, at: u64) -> &AtomicU32 {
        assert!(
            at % 4 == 0 && at + 4 <= self.capacity(),
            "atomic word out of bounds"
        );
        // SAFETY: as for `atomic_u64`, with 4-byte alignment.
        unsafe { &*(self.map.as_mut_ptr().add(at as usize) as *const AtomicU32) }
    }

    fn tail(&self) -> &AtomicU64 {
        self.atomic_u64(TAIL_AT as u64)
    }

    /// Next offset to be reserved.
    pub(crate) fn reserved_to(&self) -> u64 {
        self.tail().load(Acquire).min(self.capacity())
    }

    /// True once a writer found the segment full.
    pub(crate) fn is_sealed(&self) -> bool {
        self.atomic_u32(SEALED_AT as u64).load(Acquire) != 0
    }

    fn write_bytes(&self, at: u64, bytes: &[u8]) {
        assert!(
            at + bytes.len() as u64 <= self.capacity(),
            "write out of bounds"
        );
        // SAFETY: in bounds (asserted); the range belongs to a reservation this
        // caller owns (or the header at format time, or a cut tail during
        // recovery with exclusive access), which no other process reads before
        // the release that commits it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(at as usize),
                bytes.len(),
            )
        }
    }

    /// The bytes of a committed record's range, in place.
    fn committed(&self, at: u64, len: u64) -> &[u8] {
        let len = len.min(self.capacity().saturating_sub(at));
        // SAFETY: in bounds (clamped); called only for the immutable part of a
        // record after an acquire load of its committed length, which no
        // process writes again; the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at as usize), len as usize) }
    }

    fn read_bytes(&self, at: u64, len: u64) -> Vec<u8> {
        let len = len.min(self.capacity().saturating_sub(at));
        let mut out = vec![0u8; len as usize];
        // SAFETY: in bounds (clamped above); callers read a record's immutable
        // bytes only after an acquire load of its committed length.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(at as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        out
    }

    /// The payload of a committed record as `Bytes` that point into the
    /// mapping (no copy); the mapping stays alive while they do.
    pub(crate) fn payload_bytes(self: &Arc<Self>, offset: u64, meta: &RecordMeta) -> bytes::Bytes {
        let start = offset + RECORD_HEADER_LEN;
        let len = u64::from(meta.payload_len).min(self.capacity().saturating_sub(start));
        bytes::Bytes::from_owner(MappedSlice {
            seg: self.clone(),
            start: start as usize,
            len: len as usize,
        })
    }

    #[cfg(test)]
    /// The payload bytes of a record found by [`Segment::read`] (copied out).
    pub(crate) fn payload(&self, offset: u64, meta: &RecordMeta) -> Vec<u8> {
        self.read_bytes(offset + RECORD_HEADER_LEN, u64::from(meta.payload_len))
    }

    /// Appends one record; returns its offset. On `Full` the segment is sealed
    /// and the caller moves on to the next segment.
    pub(crate) fn append(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        timestamp_ns: u64,
    ) -> Result<u64, AppendError> {
        let total = record_len(payload.len());
        if total > self.capacity() - HEADER_LEN {
            return Err(AppendError::TooLarge(total));
        }
        let off = self.tail().fetch_add(total, AcqRel);
        if off + total > self.capacity() {
            // The first writer to cross the end pads what is left, if a header fits.
            if off < self.capacity() && off + RECORD_HEADER_LEN <= self.capacity() {
                let meta = RecordMeta {
                    magic: RECORD_MAGIC,
                    crc: 0,
                    offset: off,
                    writer,
                    timestamp_ns,
                    payload_len: 0,
                    body_len: 0,
                };
                self.write_bytes(off + META_AT, meta.as_bytes());
                self.atomic_u32(off + 4).store(FLAG_PADDING, Release);
                let _ = self.atomic_u32(off).compare_exchange(
                    0,
                    (self.capacity() - off) as u32,
                    AcqRel,
                    Acquire,
                );
            }
            self.atomic_u32(SEALED_AT as u64).store(1, Release);
            return Err(AppendError::Full);
        }
        let mut meta = RecordMeta {
            magic: RECORD_MAGIC,
            crc: 0,
            offset: off,
            writer,
            timestamp_ns,
            payload_len: payload.len() as u32,
            body_len,
        };
        meta.crc = crc(&meta, payload);
        self.write_bytes(off + META_AT, meta.as_bytes());
        self.write_bytes(off + RECORD_HEADER_LEN, payload);
        match self
            .atomic_u32(off)
            .compare_exchange(0, total as u32, AcqRel, Acquire)
        {
            Ok(_) => Ok(off),
            Err(_) => Err(AppendError::Stolen),
        }
    }

    /// What is at `off` (a record start).
    pub(crate) fn read(&self, off: u64) -> Slot {
        self.read_with(off, true)
    }

    /// What is at `off` without verifying a record's checksum: for scans over
    /// records already verified when they were claimed (bounds, magic and
    /// offset are still checked).
    pub(crate) fn skim(&self, off: u64) -> Slot {
        self.read_with(off, false)
    }

    fn read_with(&self, off: u64, verify: bool) -> Slot {
        if off + RECORD_HEADER_LEN > self.capacity() || off >= self.reserved_to() {
            return Slot::End;
        }
        if off % 8 != 0 || off < HEADER_LEN {
            return Slot::Corrupt {
                len: 0,
                reason: "not a record boundary",
            };
        }
        let len = u64::from(self.atomic_u32(off).load(Acquire));
        if len == 0 {
            return Slot::Pending;
        }
        let flags = self.atomic_u32(off + 4).load(Acquire);
        if len % 8 != 0 || len < RECORD_HEADER_LEN || off + len > self.capacity() {
            if flags & FLAG_MOVED != 0 && len % 8 == 0 && len >= 8 && off + len <= self.capacity() {
                return Slot::Moved { len };
            }
            return Slot::Corrupt {
                len,
                reason: "committed length out of bounds",
            };
        }
        if flags & FLAG_PADDING != 0 {
            return Slot::Padding { len };
        }
        if flags & FLAG_MOVED != 0 {
            // Moved aside by recovery: skip without checking it again.
            return Slot::Moved { len };
        }
        let raw = self.committed(off + META_AT, RECORD_HEADER_LEN - META_AT);
        let Ok(meta) = RecordMeta::read_from_bytes(raw) else {
            return Slot::Corrupt {
                len,
                reason: "header unreadable",
            };
        };
        if meta.magic != RECORD_MAGIC {
            return Slot::Corrupt {
                len,
                reason: "bad magic",
            };
        }
        if meta.offset != off {
            return Slot::Corrupt {
                len,
                reason: "header belongs elsewhere",
            };
        }
        if record_len(meta.payload_len as usize) != len {
            return Slot::Corrupt {
                len,
                reason: "length disagrees with payload",
            };
        }
        let payload = self.committed(off + RECORD_HEADER_LEN, u64::from(meta.payload_len));
        if verify && crc(&meta, payload) != meta.crc {
            return Slot::Corrupt {
                len,
                reason: "checksum mismatch",
            };
        }
        Slot::Record { meta, len }
    }

    /// The first offset after `from` (exclusive) where a committed, valid
    /// record starts, or the reserved end: where a scan resumes after a hole.
    pub(crate) fn next_valid(&self, from: u64) -> u64 {
        let end = self.reserved_to();
        let mut p = (from + 8) & !7;
        while p + RECORD_HEADER_LEN <= end {
            if matches!(self.read(p), Slot::Record { .. } | Slot::Padding { .. }) {
                let raw = self.read_bytes(p + META_AT, 16);
                // Padding and records both name their own offset.
                if raw.len() == 16
                    && u64::from_le_bytes(raw[8..16].try_into().unwrap_or([0; 8])) == p
                {
                    return p;
                }
            }
            p += 8;
        }
        end
    }

    /// Turns the uncommitted reservation at `off` (its writer is gone) into
    /// padding up to the next valid record. Returns false if the writer
    /// committed first.
    pub(crate) fn pad_over(&self, off: u64) -> bool {
        let next = self.next_valid(off);
        let len = next - off;
        if len < RECORD_HEADER_LEN {
            return false;
        }
        self.atomic_u32(off + 4).fetch_or(FLAG_PADDING, AcqRel);
        let won = self
            .atomic_u32(off)
            .compare_exchange(0, len as u32, AcqRel, Acquire)
            .is_ok();
        if !won {
            // The writer committed after all: it is a record, not padding.
            self.atomic_u32(off + 4).fetch_and(!FLAG_PADDING, AcqRel);
        }
        won
    }

    /// Marks a corrupt record as moved aside (its bytes copied elsewhere by
    /// the caller) so scans skip it.
    pub(crate) fn mark_moved(&self, off: u64) {
        self.atomic_u32(off + 4).fetch_or(FLAG_MOVED, AcqRel);
    }

    /// The raw bytes of `len` at `off` (to copy a corrupt record aside).
    pub(crate) fn raw(&self, off: u64, len: u64) -> Vec<u8> {
        self.read_bytes(off, len)
    }

    /// The shared claim word of the record at `off` (consumer state).
    pub(crate) fn claim_word(&self, off: u64) -> &AtomicU64 {
        self.atomic_u64(off + CLAIM_AT)
    }

    /// The shared lease-deadline word of the record at `off`: `CLOCK_MONOTONIC`
    /// nanoseconds after which another process may restore the claim, 0 = none.
    pub(crate) fn deadline_word(&self, off: u64) -> &AtomicU64 {
        self.atomic_u64(off + DEADLINE_AT)
    }

    /// Overwrites the committed length of a record (recovery with exclusive
    /// access only: bridges a corrupt length to the next valid record).
    pub(crate) fn set_len(&self, off: u64, len: u64) {
        self.atomic_u32(off).store(len as u32, Release);
    }

    #[cfg(test)]
    /// Reserves `payload_len` bytes of payload without writing or committing
    /// them, as a writer that dies right after reserving would (tests).
    pub(crate) fn reserve_only(&self, payload_len: usize) -> u64 {
        self.tail().fetch_add(record_len(payload_len), AcqRel)
    }

    /// Cuts the reservation pointer back to `off` (recovery with exclusive
    /// access only: drops torn records at the tail).
    pub(crate) fn cut_tail(&self, off: u64) {
        // Zero what was reserved after the cut: an append there commits by a
        // compare-and-swap of a zero length, and no stale record may be found
        // by a later scan.
        let end = self.reserved_to();
        if off < end {
            let zeros = vec![0u8; (end - off) as usize];
            self.write_bytes(off, &zeros);
        }
        self.tail().store(off, Release);
        self.atomic_u32(SEALED_AT as u64).store(0, Release);
    }
}
