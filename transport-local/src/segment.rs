//! A segment file: a preallocated, memory-mapped, append-only run of records
//! that several processes write and read at once (see `FORMAT.md`).
//!
//! # Invariants
//! - Every record starts with one atomic state word (kind and length). A
//!   writer reserves a record by a compare-and-swap of the free (zero) word
//!   at the tail to `RESERVED | len`, so every reservation's extent is known
//!   from the moment it exists; the shared `tail` is a hint every writer
//!   helps forward past reserved words.
//! - Past the tail everything is zero after recovery (which clears the rest
//!   of the last segment, not only up to the tail hint); a writer still
//!   clears its record's claim and lease words when it reserves, so nothing
//!   a power loss left there is read as consumer state.
//! - A reservation is owned by its writer alone until it commits by a
//!   compare-and-swap `RESERVED | len -> COMMITTED | len` (the release that
//!   publishes the record). Anyone may turn a reservation whose writer is dead
//!   or stalled into padding with `RESERVED | len -> PADDING | len` on the same
//!   word: exactly one of commit and padding wins, the padding covers exactly
//!   that reservation, and a writer that loses publishes again elsewhere.
//! - A writer reserves only a free (zero) state word at a tail word that
//!   passes its check, and steps over anything else that looks like a record,
//!   so a damaged or hand-edited tail word cannot make it write over
//!   committed records: it refuses with an error naming the segment.
//! - Every record says where it is (`offset`) and carries a checksum
//!   (CRC-32C since layout 3, CRC-32 in a layout-2 segment) of its
//!   immutable header fields and payload, so a scan can tell a record from
//!   leftover bytes and find the next record after a hole.
//! - The claim word is self-checking (a CRC-8 byte), so a damaged claim word
//!   is recognised and set aside rather than read as "acked".

use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
use std::sync::Arc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::mem::{AtomicU64, Region};

/// Size of the segment header; records start here.
pub(crate) const HEADER_LEN: u64 = 4096;
/// Size of a record header; the payload follows it.
pub(crate) const RECORD_HEADER_LEN: u64 = 64;
/// Segment layout version this build writes: records checked by CRC-32C.
pub(crate) const SEGMENT_VERSION: u32 = 3;
/// The earlier layout, still read: the same records, checked by CRC-32
/// (IEEE). A lane may hold segments of both; each says its own.
pub(crate) const SEGMENT_VERSION_CRC32: u32 = 2;
/// First bytes of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"DASHISEG";
/// `magic` of every record header (layout 2).
pub(crate) const RECORD_MAGIC: u32 = 0xD45A_12ED;

const TAIL_AT: u64 = 64;

/// The tail word: the offset in bits 0..40 and a 24-bit check of it in bits
/// 40..64, so a damaged or hand-edited tail is recognised instead of
/// trusted.
mod tail {
    fn check(off: u64) -> u64 {
        (off.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) & 0xff_ffff
    }

    pub(super) fn encode(off: u64) -> u64 {
        off | (check(off) << 40)
    }

    pub(super) fn decode(w: u64) -> Option<u64> {
        let off = w & ((1 << 40) - 1);
        (w >> 40 == check(off)).then_some(off)
    }
}

/// The record state word (offset 0 of a record): kind in bits 56..64,
/// length in bits 0..40, bits 40..56 zero.
pub(crate) mod state {
    /// Never reserved (the whole word is zero).
    pub(crate) const FREE: u64 = 0;
    /// Reserved by a writer that has not committed.
    pub(crate) const RESERVED: u64 = 1;
    /// A committed record.
    pub(crate) const COMMITTED: u64 = 2;
    /// Padding: nothing to read (a full segment's tail, a dead writer's
    /// reservation).
    pub(crate) const PADDING: u64 = 3;
    /// A corrupt record that recovery copied aside; skip it.
    pub(crate) const MOVED: u64 = 4;

    const LEN_MASK: u64 = (1 << 40) - 1;

    /// The word for `kind` over `len` bytes.
    pub(crate) fn word(kind: u64, len: u64) -> u64 {
        (kind << 56) | (len & LEN_MASK)
    }

    /// `(kind, len)` of a well-formed word: a known kind, a length that is a
    /// multiple of 8 and at least 8, nothing in the reserved bits.
    pub(crate) fn decode(w: u64) -> Option<(u64, u64)> {
        let (kind, len) = (w >> 56, w & LEN_MASK);
        let well_formed = (RESERVED..=MOVED).contains(&kind)
            && (w >> 40) & 0xffff == 0
            && len >= 8
            && len % 8 == 0;
        well_formed.then_some((kind, len))
    }
}

/// The claim word of a record (offset 8): who has it and in what state,
/// self-checking.
///
/// ```text
/// bits 0..2   state: 0 ready, 1 claimed, 2 acked, 3 dead
/// bit  2      redelivered
/// bits 3..8   zero
/// bits 8..24  claim generation (+1 on every claim; tags the lease deadline)
/// bits 24..56 owner: the claiming (or settling) process's id, 0 when ready
/// bits 56..64 CRC-8 of bits 0..56
/// ```
pub(crate) mod claim {
    /// Not delivered (or restored).
    pub(crate) const READY: u64 = 0;
    /// Delivered to its owner; not settled.
    pub(crate) const CLAIMED: u64 = 1;
    /// Acknowledged.
    pub(crate) const ACKED: u64 = 2;
    /// Rejected, expired, dropped or set aside.
    pub(crate) const DEAD: u64 = 3;

    /// A decoded claim word.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Claim {
        /// One of the states above.
        pub(crate) state: u64,
        /// Delivered before and returned.
        pub(crate) redelivered: bool,
        /// Claim generation.
        pub(crate) generation: u16,
        /// The process holding (or that settled) it; 0 when ready.
        pub(crate) owner: u32,
    }

    /// CRC-8 (polynomial 0x07) of every byte value, computed at build time.
    const TABLE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let mut crc = i as u8;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 0x80 != 0 {
                    (crc << 1) ^ 0x07
                } else {
                    crc << 1
                };
                bit += 1;
            }
            t[i] = crc;
            i += 1;
        }
        t
    };

    /// The CRC-8 of byte value `b` at byte `i` of the 7 (table `i`): CRC
    /// is linear, so the CRC of a word is the XOR of its bytes' entries,
    /// 7 look-ups that do not wait on each other (the byte-at-a-time loop
    /// chains 7 dependent look-ups; a claim word is checked several times
    /// a message). Computed at build time from [`TABLE`].
    const BY_POSITION: [[u8; 256]; 7] = {
        let mut t = [[0u8; 256]; 7];
        let mut b = 0;
        while b < 256 {
            // Byte `b` followed by `k` zero bytes: what the loop gives for
            // byte `b` at position `6 - k`.
            let mut crc = TABLE[b];
            let mut k = 0;
            while k < 7 {
                t[6 - k][b] = crc;
                crc = TABLE[crc as usize];
                k += 1;
            }
            b += 1;
        }
        t
    };

    /// CRC-8 of the low 7 bytes (it catches every single flipped bit).
    pub(super) fn crc8(v: u64) -> u64 {
        let b = v.to_le_bytes();
        let mut crc = 0u8;
        let mut i = 0;
        while i < 7 {
            crc ^= BY_POSITION[i][b[i] as usize];
            i += 1;
        }
        u64::from(crc)
    }

    /// The byte-at-a-time definition [`crc8`] must agree with.
    #[cfg(test)]
    pub(crate) fn crc8_bytewise(v: u64) -> u64 {
        let mut crc: u8 = 0;
        for b in &v.to_le_bytes()[..7] {
            crc = TABLE[(crc ^ b) as usize];
        }
        u64::from(crc)
    }

    impl Claim {
        /// The word for this claim.
        pub(crate) fn encode(self) -> u64 {
            let body = (self.state & 3)
                | (u64::from(self.redelivered) << 2)
                | (u64::from(self.generation) << 8)
                | (u64::from(self.owner) << 24);
            body | (crc8(body) << 56)
        }

        /// The claim a word holds, or `None` when it fails its check or
        /// names an impossible claim (ready with an owner, claimed by none).
        pub(crate) fn decode(w: u64) -> Option<Claim> {
            let body = w & ((1 << 56) - 1);
            if crc8(body) != w >> 56 || body & 0xf8 != 0 {
                return None;
            }
            let c = Claim {
                state: body & 3,
                redelivered: body & 4 != 0,
                generation: (body >> 8) as u16,
                owner: (body >> 24) as u32,
            };
            let consistent = match c.state {
                READY => c.owner == 0,
                CLAIMED => c.owner != 0,
                _ => true,
            };
            consistent.then_some(c)
        }
    }
}

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
    /// Checksum of bytes 8.. of this struct and of the payload: CRC-32C,
    /// or CRC-32 in a segment of layout 2 (`crc`).
    pub(crate) crc: u32,
    /// Where the record starts in its segment.
    pub(crate) offset: u64,
    /// Writer: the id of the process that appended it.
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
/// Where the checksum sits in [`RecordMeta`].
const CRC_IN_META: u64 = std::mem::offset_of!(RecordMeta, crc) as u64;
const CLAIM_AT: u64 = 8;
const DEADLINE_AT: u64 = 16;

/// The system's page size (a power of two).
fn page_size() -> u64 {
    #[cfg(not(loom))]
    {
        rustix::param::page_size() as u64
    }
    #[cfg(loom)]
    {
        4096
    }
}

/// Total bytes a record with `payload_len` bytes of payload takes.
pub(crate) fn record_len(payload_len: usize) -> u64 {
    (RECORD_HEADER_LEN + payload_len as u64 + 7) & !7
}

/// The checksum of a record of a segment of layout `version`: CRC-32C
/// (Castagnoli; one instruction per 8 bytes where the CPU has it,
/// `checksum.rs`) since layout 3, CRC-32 (IEEE) in layout 2.
fn crc(version: u32, meta: &RecordMeta, payload: &[u8]) -> u32 {
    let head = &meta.as_bytes()[8..];
    if version == SEGMENT_VERSION_CRC32 {
        let mut h = crc32fast::Hasher::new();
        h.update(head);
        h.update(payload);
        return h.finalize();
    }
    crate::checksum::append(crate::checksum::append(0, head), payload)
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
    /// Something other than a regular file where a segment should be (a
    /// directory, a FIFO, a device: put there by hand).
    #[error("segment {path}: not a regular file")]
    NotAFile {
        /// The path.
        path: String,
    },
    /// A layout version this build does not read.
    #[error(
        "segment {path}: format version {found}, this build reads versions \
         {SEGMENT_VERSION_CRC32} and {SEGMENT_VERSION}"
    )]
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum AppendError {
    /// No room left: the segment is full; append to the next one.
    #[error("segment is full")]
    Full,
    /// The record is larger than a segment can ever hold.
    #[error("a record of {0} bytes does not fit in a segment")]
    TooLarge(u64),
    /// Another process turned this reservation into padding before it was
    /// committed (it took the writer for dead); append again.
    #[error("reservation was padded over before commit")]
    Stolen,
    /// The place the tail names holds something other than free space (a
    /// damaged tail word or record): nothing was written.
    #[error("segment {path} is damaged at offset {offset}: {reason}; not appending there")]
    Damaged {
        /// The file.
        path: String,
        /// Where.
        offset: u64,
        /// What was found.
        reason: &'static str,
    },
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
    Pending {
        /// Total length of the reservation.
        len: u64,
    },
    /// Nothing has been reserved here (or the segment is full).
    End,
    /// Something that is not a well-formed record.
    Corrupt {
        /// Its committed length, when the state word names one.
        len: u64,
        /// What failed.
        reason: &'static str,
    },
}

/// A committed record's payload inside a mapping, owned by a `Bytes`.
#[cfg(not(loom))]
struct MappedSlice {
    seg: Arc<Segment>,
    start: u64,
    len: u64,
}

#[cfg(not(loom))]
impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        self.seg.region.slice(self.start, self.len)
    }
}

/// A file's identity: its device and inode numbers.
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// An open, mapped segment.
#[derive(Debug)]
pub(crate) struct Segment {
    region: Region,
    header: SegmentHeader,
    path: String,
    /// The file's identity (device, inode) when it was mapped; none for a
    /// modelled segment. A mapped segment keeps no descriptor: a process
    /// maps any number of segments within its `RLIMIT_NOFILE`, and opens
    /// one by path only to `fdatasync` it (checked against this identity:
    /// a file put in its place since is not the one written).
    identity: Option<(u64, u64)>,
    /// The descriptor for `fdatasync`, opened by the first sync this
    /// process needs of the segment (a publisher with `fsync` on).
    sync_file: std::sync::OnceLock<Arc<File>>,
    /// How far this process has mapped the pages writable ahead of its
    /// claims ([`Segment::prepare_claims`]); a hint, never shared.
    populated: std::sync::atomic::AtomicU64,
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
        let meta = file.metadata().map_err(Self::io(path))?;
        let capacity = meta.len();
        if capacity < HEADER_LEN + RECORD_HEADER_LEN || capacity % 4096 != 0 {
            return Err(SegmentError::Inconsistent {
                path: path.display().to_string(),
                reason: format!("size {capacity} is not a multiple of 4096 above 4096"),
            });
        }
        let region = Region::map(&file).map_err(Self::io(path))?;
        let seg = Segment {
            region,
            header: SegmentHeader {
                magic: SEGMENT_MAGIC,
                version: SEGMENT_VERSION,
                lane,
                seq,
                capacity,
            },
            path: path.display().to_string(),
            identity: Some(identity(&meta)),
            sync_file: std::sync::OnceLock::new(),
            populated: std::sync::atomic::AtomicU64::new(0),
        };
        seg.init();
        Ok(seg)
    }

    /// A new, empty segment in modelled memory.
    #[cfg(all(loom, test))]
    pub(crate) fn new_model(capacity: u64, lane: u32, seq: u64) -> Segment {
        let seg = Segment {
            region: Region::new_model(capacity),
            header: SegmentHeader {
                magic: SEGMENT_MAGIC,
                version: SEGMENT_VERSION,
                lane,
                seq,
                capacity,
            },
            path: format!("model-{lane}-{seq}"),
            identity: None,
            sync_file: std::sync::OnceLock::new(),
            populated: std::sync::atomic::AtomicU64::new(0),
        };
        seg.init();
        seg
    }

    fn init(&self) {
        self.region.write(0, self.header.as_bytes());
        self.tail().store(tail::encode(HEADER_LEN), Release);
    }

    /// Opens and maps an existing segment, checking its header.
    pub(crate) fn open(path: &Path, file: File) -> Result<Segment, SegmentError> {
        let meta = file.metadata().map_err(Self::io(path))?;
        let name = path.display().to_string();
        if !meta.is_file() {
            return Err(SegmentError::NotAFile { path: name });
        }
        let len = meta.len();
        if len < HEADER_LEN {
            return Err(SegmentError::BadMagic { path: name });
        }
        let region = Region::map(&file).map_err(Self::io(path))?;
        let raw = region.read(0, std::mem::size_of::<SegmentHeader>() as u64);
        let header = SegmentHeader::read_from_bytes(&raw[..])
            .map_err(|_| SegmentError::BadMagic { path: name.clone() })?;
        if header.magic != SEGMENT_MAGIC {
            return Err(SegmentError::BadMagic { path: name });
        }
        if header.version != SEGMENT_VERSION && header.version != SEGMENT_VERSION_CRC32 {
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
            region,
            header,
            path: name,
            identity: Some(identity(&meta)),
            sync_file: std::sync::OnceLock::new(),
            populated: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The immutable header.
    pub(crate) fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The segment's file, for `fdatasync` (`None` for a modelled
    /// segment): opened by path the first time, and kept. An error names
    /// the segment: the file cannot be opened (no descriptor left, say), or
    /// the file at its path is no longer the one mapped (retention deleted
    /// it, or something was put in its place), so a sync of it would not
    /// cover what was written.
    pub(crate) fn file(&self) -> Result<Option<Arc<File>>, SegmentError> {
        let Some(mapped) = self.identity else {
            return Ok(None);
        };
        if let Some(f) = self.sync_file.get() {
            return Ok(Some(f.clone()));
        }
        let f = self.reopen(mapped)?;
        // Two threads may race here: one file is kept, the other closed.
        Ok(Some(self.sync_file.get_or_init(|| Arc::new(f)).clone()))
    }

    /// Opens the mapped file again by its path, checking it is the same.
    fn reopen(&self, mapped: (u64, u64)) -> Result<File, SegmentError> {
        let path = Path::new(&self.path);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(Self::io(path))?;
        let meta = f.metadata().map_err(Self::io(path))?;
        if identity(&meta) != mapped {
            return Err(SegmentError::Inconsistent {
                path: self.path.clone(),
                reason: "the file at its path is no longer the one mapped".into(),
            });
        }
        Ok(f)
    }

    fn capacity(&self) -> u64 {
        self.header.capacity
    }

    fn tail(&self) -> &AtomicU64 {
        self.region.u64_at(TAIL_AT)
    }

    fn state_word(&self, off: u64) -> &AtomicU64 {
        self.region.u64_at(off)
    }

    /// Next offset to be reserved, as the shared hint says (the capacity
    /// when the hint is damaged: scans then go by the records themselves).
    pub(crate) fn reserved_to(&self) -> u64 {
        tail::decode(self.tail().load(Acquire))
            .unwrap_or(self.capacity())
            .min(self.capacity())
    }

    /// Reserves `total` bytes; returns their offset. Helps the tail past
    /// reservations made by others; pads the rest and reports `Full` when
    /// `total` does not fit.
    fn reserve(&self, total: u64) -> Result<u64, AppendError> {
        let cap = self.capacity();
        loop {
            let tw = self.tail().load(Acquire);
            let Some(t) = tail::decode(tw) else {
                return Err(self.damaged(TAIL_AT, "the tail word fails its check"));
            };
            if t + 8 > cap {
                return Err(AppendError::Full);
            }
            if t < HEADER_LEN || t % 8 != 0 {
                return Err(self.damaged(t, "the tail word is not a record boundary"));
            }
            let word = self.state_word(t);
            let w = word.load(Acquire);
            if w != state::FREE {
                // Someone reserved here already: help the tail past it.
                match state::decode(w) {
                    Some((_, len)) if t + len <= cap => {
                        let _ = self.tail().compare_exchange(
                            tw,
                            tail::encode(t + len),
                            AcqRel,
                            Acquire,
                        );
                    }
                    _ => return Err(self.damaged(t, "the record there is corrupt")),
                }
                continue;
            }
            let fits = t + total <= cap;
            let (kind, len) = if fits {
                (state::RESERVED, total)
            } else {
                (state::PADDING, cap - t)
            };
            if word
                .compare_exchange(state::FREE, state::word(kind, len), AcqRel, Acquire)
                .is_err()
            {
                continue;
            }
            let _ = self
                .tail()
                .compare_exchange(tw, tail::encode(t + len), AcqRel, Acquire);
            if fits {
                // The record's consumer words are its writer's to set until
                // it commits: clear, whatever a power loss left there
                // (recovery clears past the tail too; see `clear_from`).
                self.claim_word(t).store(0, Release);
                self.deadline_word(t).store(0, Release);
                return Ok(t);
            }
            return Err(AppendError::Full);
        }
    }

    fn damaged(&self, offset: u64, reason: &'static str) -> AppendError {
        AppendError::Damaged {
            path: self.path.clone(),
            offset,
            reason,
        }
    }

    /// Makes the segment full at once (no further append succeeds): pads
    /// from the tail to the end. Used after its `fdatasync` failed, so that
    /// new records go to a fresh file, and by a consumer leaving a segment
    /// below the write segment, so that nothing lands behind it.
    pub(crate) fn seal(&self) {
        loop {
            match self.reserve(self.capacity()) {
                Err(AppendError::Full) | Err(AppendError::Damaged { .. }) => return,
                Err(_) => continue,
                // A reservation of the whole capacity never fits.
                Ok(off) => {
                    self.pad(off);
                    return;
                }
            }
        }
    }

    /// Appends one record; returns its offset. On `Full` the caller moves on
    /// to the next segment. (Lanes use [`Segment::append_within`].)
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn append(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        timestamp_ns: u64,
    ) -> Result<u64, AppendError> {
        self.append_within(payload, body_len, writer, timestamp_ns, self.capacity())
    }

    /// [`Segment::append`] for a writer whose segments may be as large as
    /// `largest` bytes: a record too large for this segment but not for
    /// that seals this one (`Full`: the rest of it padded) so the writer
    /// moves on to a segment made large enough. `TooLarge` only past
    /// `largest`.
    pub(crate) fn append_within(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
        timestamp_ns: u64,
        largest: u64,
    ) -> Result<u64, AppendError> {
        let total = record_len(payload.len());
        let largest = largest.max(self.capacity());
        if total > largest - HEADER_LEN || u32::try_from(payload.len()).is_err() {
            return Err(AppendError::TooLarge(total));
        }
        let off = self.reserve(total)?;
        crate::failpoint!("segment::reserved");
        let mut meta = RecordMeta {
            magic: RECORD_MAGIC,
            crc: 0,
            offset: off,
            writer,
            timestamp_ns,
            payload_len: payload.len() as u32,
            body_len,
        };
        // The header first, its checksum still 0: from here on the
        // reservation names its writer, and a writer that dies is seen dead
        // at once (`Lane::unblock`) instead of after the wait for an
        // unnamed one. Checksumming the payload first kept that window open
        // for the whole checksum (a large body, a debug build: the
        // full-disk torture's kills landed there about one run in six).
        self.region.write(off + META_AT, meta.as_bytes());
        crate::failpoint!("segment::named");
        meta.crc = crc(self.header.version, &meta, payload);
        self.region.write(off + RECORD_HEADER_LEN, payload);
        self.region
            .write(off + META_AT + CRC_IN_META, meta.crc.as_bytes());
        crate::failpoint!("segment::written");
        match self.state_word(off).compare_exchange(
            state::word(state::RESERVED, total),
            state::word(state::COMMITTED, total),
            AcqRel,
            Acquire,
        ) {
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
        let cap = self.capacity();
        if off + 8 > cap {
            return Slot::End;
        }
        if off % 8 != 0 || off < HEADER_LEN {
            return Slot::Corrupt {
                len: 0,
                reason: "not a record boundary",
            };
        }
        let w = self.state_word(off).load(Acquire);
        if w == state::FREE {
            return Slot::End;
        }
        let Some((kind, len)) = state::decode(w) else {
            return Slot::Corrupt {
                len: 0,
                reason: "state word is not well formed",
            };
        };
        if off + len > cap {
            return Slot::Corrupt {
                len: 0,
                reason: "length runs past the segment",
            };
        }
        match kind {
            state::RESERVED => return Slot::Pending { len },
            state::PADDING => return Slot::Padding { len },
            state::MOVED => return Slot::Moved { len },
            _ => {}
        }
        if len < RECORD_HEADER_LEN {
            return Slot::Corrupt {
                len,
                reason: "committed length shorter than a header",
            };
        }
        // In place: a committed header is never written again (a copy into
        // a fresh `Vec` was an allocation per read, three reads a record).
        let read = self
            .region
            .with_bytes(off + META_AT, RECORD_HEADER_LEN - META_AT, |b| {
                RecordMeta::read_from_bytes(b).ok()
            });
        let Some(meta) = read else {
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
        if verify {
            let sum =
                self.region
                    .with_bytes(off + RECORD_HEADER_LEN, u64::from(meta.payload_len), |p| {
                        crc(self.header.version, &meta, p)
                    });
            if sum != meta.crc {
                return Slot::Corrupt {
                    len,
                    reason: "checksum mismatch",
                };
            }
        }
        Slot::Record { meta, len }
    }

    /// The first offset after `from` (exclusive) where a committed record
    /// that checks out (its header names its own offset) starts, or the
    /// reserved end: where a scan resumes after a hole.
    pub(crate) fn next_valid(&self, from: u64) -> u64 {
        let end = self.reserved_to();
        let mut p = (from + 8) & !7;
        while p + RECORD_HEADER_LEN <= end {
            if matches!(self.read(p), Slot::Record { .. }) {
                return p;
            }
            p += 8;
        }
        end.max(p.min(self.capacity()))
    }

    /// Turns the reservation at `off` (its writer is gone or stalled) into
    /// padding of exactly its own length. False if it was committed (or
    /// padded) first, or is not a reservation.
    pub(crate) fn pad(&self, off: u64) -> bool {
        let w = self.state_word(off).load(Acquire);
        let Some((state::RESERVED, len)) = state::decode(w) else {
            return false;
        };
        self.state_word(off)
            .compare_exchange(w, state::word(state::PADDING, len), AcqRel, Acquire)
            .is_ok()
    }

    /// The writer named in the header of the reservation at `off`, if its
    /// header has been written (it names its own offset).
    pub(crate) fn pending_writer(&self, off: u64) -> Option<u64> {
        let raw = self.region.read(off + META_AT, RECORD_HEADER_LEN - META_AT);
        let meta = RecordMeta::read_from_bytes(&raw[..]).ok()?;
        (meta.magic == RECORD_MAGIC && meta.offset == off && meta.writer != 0)
            .then_some(meta.writer)
    }

    /// Makes `[off, off + len)` one padding record (recovery with exclusive
    /// access only: a hole before an intact record).
    pub(crate) fn mark_padding(&self, off: u64, len: u64) {
        self.state_word(off)
            .store(state::word(state::PADDING, len), Release);
    }

    /// Marks the corrupt record at `off` (its bytes copied aside by the
    /// caller) as moved over `len` bytes, so scans skip it (recovery with
    /// exclusive access only).
    pub(crate) fn mark_moved(&self, off: u64, len: u64) {
        self.state_word(off)
            .store(state::word(state::MOVED, len), Release);
    }

    /// The raw bytes of `len` at `off` (to copy a corrupt record aside).
    pub(crate) fn raw(&self, off: u64, len: u64) -> Vec<u8> {
        self.region.read(off, len)
    }

    /// The payload of a committed record as `Bytes` that point into the
    /// mapping (no copy); the mapping stays alive while they do.
    pub(crate) fn payload_bytes(self: &Arc<Self>, offset: u64, meta: &RecordMeta) -> bytes::Bytes {
        let (start, len) = self.payload_range(offset, meta);
        self.bytes_of(start, len)
    }

    /// Where the payload of the record at `offset` is, as (start, length)
    /// within the segment (clamped to it).
    pub(crate) fn payload_range(&self, offset: u64, meta: &RecordMeta) -> (usize, usize) {
        let start = (offset + RECORD_HEADER_LEN).min(self.capacity());
        let len = u64::from(meta.payload_len).min(self.capacity() - start);
        (start as usize, len as usize)
    }

    /// Runs `f` over `len` bytes at `start` of a committed record's
    /// payload, in place (nobody writes them again).
    pub(crate) fn with_bytes<R>(&self, start: usize, len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        self.region.with_bytes(start as u64, len as u64, f)
    }

    /// `len` bytes at `start`, inside one committed record's payload, as
    /// `Bytes` that point into the mapping (no copy; the mapping stays
    /// alive while they do). Only such bytes: nobody writes them again,
    /// while a record's header words are written by claims and leases.
    pub(crate) fn bytes_of(self: &Arc<Self>, start: usize, len: usize) -> bytes::Bytes {
        let (start, len) = (start as u64, len as u64);
        #[cfg(not(loom))]
        {
            bytes::Bytes::from_owner(MappedSlice {
                seg: self.clone(),
                start,
                len,
            })
        }
        #[cfg(loom)]
        {
            bytes::Bytes::from(self.region.read(start, len))
        }
    }

    /// The payload bytes of a record found by [`Segment::read`] (copied out).
    #[cfg(test)]
    pub(crate) fn payload(&self, offset: u64, meta: &RecordMeta) -> Vec<u8> {
        self.region
            .read(offset + RECORD_HEADER_LEN, u64::from(meta.payload_len))
    }

    /// Before claiming from `off`: maps the next stretch of reserved
    /// records writable in this process in one call, when `off` is within
    /// half a stretch of what was mapped so far. A consumer reads a record's
    /// header, then sets its claim word: a read fault and a write fault on
    /// every page it passes, about a sixth of its time in the kernel
    /// (`perf`, 64-byte bodies); one call per 256 KiB takes their place.
    /// Nothing is written, and a page beyond the end of a file cut short is
    /// refused (`EFAULT`), never a `SIGBUS`.
    pub(crate) fn prepare_claims(&self, off: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        const STRETCH: u64 = 256 * 1024;
        let page = page_size();
        let done = self.populated.load(Relaxed);
        if off.saturating_add(STRETCH / 2) < done {
            return;
        }
        let from = done.max(off & !(page - 1));
        let to = off.saturating_add(STRETCH).min(self.reserved_to()) & !(page - 1);
        if to > from {
            self.region.populate_write(from, to - from);
            self.populated.store(to, Relaxed);
        }
    }

    /// Brings the whole segment into the page cache (a new one, made ahead
    /// of need off the publish path): its pages are made and zeroed here,
    /// not by the publisher's first write to each.
    pub(crate) fn warm(&self) {
        self.region.populate_read(0, self.capacity());
    }

    /// How far [`Segment::prepare_claims`] has mapped (tests; the loom
    /// models map no file).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn prepared_to(&self) -> u64 {
        self.populated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where this process maps the segment (tests read its figures in
    /// `/proc/self/smaps`).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn mapped_at(&self) -> usize {
        self.region.slice(0, 0).as_ptr() as usize
    }

    /// The shared claim word of the record at `off` (consumer state).
    pub(crate) fn claim_word(&self, off: u64) -> &AtomicU64 {
        self.region.u64_at(off + CLAIM_AT)
    }

    /// The shared lease word of the record at `off`: the deadline in
    /// `CLOCK_MONOTONIC` milliseconds `<< 16`, tagged with the claim
    /// generation it belongs to; 0 = none.
    pub(crate) fn deadline_word(&self, off: u64) -> &AtomicU64 {
        self.region.u64_at(off + DEADLINE_AT)
    }

    /// Reserves `payload_len` bytes of payload without writing or committing
    /// them, as a writer that dies right after reserving would (tests).
    #[cfg(test)]
    pub(crate) fn reserve_only(&self, payload_len: usize) -> u64 {
        self.reserve(record_len(payload_len))
            .expect("room to reserve")
    }

    /// Reserves and writes a record without committing it, as a live writer
    /// between its write and its commit (tests); commit with
    /// [`Segment::commit_reserved`].
    #[cfg(test)]
    pub(crate) fn reserve_and_write(
        &self,
        payload: &[u8],
        body_len: u32,
        writer: u64,
    ) -> (u64, u64) {
        let total = record_len(payload.len());
        let off = self.reserve(total).expect("room to reserve");
        let mut meta = RecordMeta {
            magic: RECORD_MAGIC,
            crc: 0,
            offset: off,
            writer,
            timestamp_ns: 0,
            payload_len: payload.len() as u32,
            body_len,
        };
        meta.crc = crc(self.header.version, &meta, payload);
        self.region.write(off + META_AT, meta.as_bytes());
        self.region.write(off + RECORD_HEADER_LEN, payload);
        (off, total)
    }

    /// Commits a reservation made by [`Segment::reserve_and_write`]; false
    /// if it was padded over first.
    #[cfg(test)]
    pub(crate) fn commit_reserved(&self, (off, total): (u64, u64)) -> bool {
        self.state_word(off)
            .compare_exchange(
                state::word(state::RESERVED, total),
                state::word(state::COMMITTED, total),
                AcqRel,
                Acquire,
            )
            .is_ok()
    }

    /// Clears everything from `off` to the end and sets the tail there
    /// (recovery with exclusive access only, for the lane's last segment):
    /// appends go on at `off`, over zeros.
    ///
    /// The bytes past the tail hint are not always zero. After a power
    /// loss a disk may keep any of the pages written after the last sync,
    /// in any order: records whose tail-hint update was lost, claim words
    /// of records that did not survive. A record laid over them would meet
    /// a stale state word (refused as corrupt, or stepped over) or inherit
    /// a stale claim word (read as acked: a confirmed message never
    /// delivered). So the whole rest of the file is cleared, not only up to
    /// the tail: by `FALLOC_FL_ZERO_RANGE` where the filesystem has it (one
    /// call, the blocks stay allocated), else by writing zeros over what is
    /// not zero already.
    pub(crate) fn clear_from(&self, off: u64) -> std::io::Result<()> {
        let cap = self.capacity();
        let off = off.min(cap);
        // (Recovery, with exclusive access: the file at the path is the one
        // mapped unless something is very wrong; then zeros are written
        // through the mapping.)
        let file = self.identity.and_then(|id| self.reopen(id).ok());
        let zeroed = off == cap
            || file.as_ref().is_some_and(|f| {
                use rustix::fs::{fallocate, FallocateFlags};
                fallocate(
                    f,
                    FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE,
                    off,
                    cap - off,
                )
                .is_ok()
            });
        if !zeroed {
            const CHUNK: u64 = 1 << 20;
            let mut buf = Vec::new();
            let mut at = off;
            while at < cap {
                let len = (cap - at).min(CHUNK);
                let stale = match &file {
                    Some(f) => {
                        use std::os::unix::fs::FileExt;
                        buf.resize(len as usize, 0);
                        f.read_exact_at(&mut buf, at)?;
                        buf.iter().any(|&b| b != 0)
                    }
                    None => self
                        .region
                        .with_bytes(at, len, |b| b.iter().any(|&b| b != 0)),
                };
                if stale {
                    self.region.write(at, &vec![0u8; len as usize]);
                }
                at += len;
            }
        }
        self.tail().store(tail::encode(off), Release);
        Ok(())
    }

    /// Pads everything from `off` to the end with one padding record
    /// (recovery with exclusive access only, for a segment below the lane's
    /// last: it is done, whatever was reserved after `off` was never
    /// committed).
    pub(crate) fn pad_to_end(&self, off: u64) {
        let cap = self.capacity();
        if off + 8 <= cap {
            self.state_word(off)
                .store(state::word(state::PADDING, cap - off), Release);
        }
        self.tail().store(tail::encode(cap), Release);
    }

    /// Sets the tail hint (tests).
    #[cfg(test)]
    pub(crate) fn set_tail(&self, off: u64) {
        self.tail()
            .store(tail::encode(off.min(self.capacity())), Release);
    }

    /// Writes a raw value into the tail word, as a damaged or hand-edited
    /// file would have (tests).
    #[cfg(test)]
    pub(crate) fn set_tail_raw(&self, raw: u64) {
        self.tail().store(raw, Release);
    }
}

#[cfg(test)]
mod tests {
    use super::claim::{Claim, ACKED, CLAIMED, READY};
    use super::*;

    /// The claim word's CRC-8, taken a byte position at a time, is the
    /// byte-at-a-time CRC-8 it was defined as (every byte value at every
    /// position, and a million pseudo-random words).
    #[test]
    fn the_claim_check_is_the_bytewise_crc8() {
        for i in 0..7 {
            for b in 0..=255u64 {
                let v = b << (8 * i);
                assert_eq!(claim::crc8(v), claim::crc8_bytewise(v), "{v:#x}");
            }
        }
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x & ((1 << 56) - 1);
            assert_eq!(claim::crc8(v), claim::crc8_bytewise(v), "{v:#x}");
        }
    }

    #[test]
    fn tail_words_check_themselves() {
        for off in [HEADER_LEN, 4104, 1 << 35] {
            assert_eq!(tail::decode(tail::encode(off)), Some(off));
            assert_eq!(tail::decode(off), None, "a plain offset is not a tail word");
            assert_eq!(tail::decode(tail::encode(off) - 8), None);
        }
    }

    #[test]
    fn state_words_round_trip_and_reject_garbage() {
        for kind in [
            state::RESERVED,
            state::COMMITTED,
            state::PADDING,
            state::MOVED,
        ] {
            assert_eq!(state::decode(state::word(kind, 4096)), Some((kind, 4096)));
        }
        assert_eq!(state::decode(0), None);
        assert_eq!(state::decode(state::word(5, 64)), None, "unknown kind");
        assert_eq!(
            state::decode(state::word(state::COMMITTED, 12)),
            None,
            "unaligned"
        );
        assert_eq!(state::decode(state::word(state::COMMITTED, 0)), None);
        assert_eq!(
            state::decode(state::word(state::COMMITTED, 64) | (1 << 45)),
            None
        );
    }

    #[test]
    fn claim_words_check_themselves() {
        assert_eq!(
            Claim::decode(0),
            Some(Claim {
                state: READY,
                redelivered: false,
                generation: 0,
                owner: 0
            }),
            "a fresh record is ready"
        );
        let c = Claim {
            state: CLAIMED,
            redelivered: true,
            generation: 513,
            owner: 77,
        };
        let w = c.encode();
        assert_eq!(Claim::decode(w), Some(c));
        // Every single flipped bit is caught.
        for bit in 0..64 {
            assert_eq!(Claim::decode(w ^ (1 << bit)), None, "bit {bit}");
        }
        // Impossible claims are refused even with a good check byte.
        let ready_with_owner = Claim {
            state: READY,
            owner: 5,
            ..c
        };
        assert_eq!(Claim::decode(ready_with_owner.encode()), None);
        let claimed_by_none = Claim {
            state: CLAIMED,
            owner: 0,
            ..c
        };
        assert_eq!(Claim::decode(claimed_by_none.encode()), None);
        let acked = Claim { state: ACKED, ..c };
        assert_eq!(Claim::decode(acked.encode()), Some(acked));
    }
}
