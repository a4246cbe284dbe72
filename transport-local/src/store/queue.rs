//! One queue of the store as this process uses it: its lanes (one per
//! priority ever used), the deliveries this process holds, and the upkeep a
//! consumer does on the way (reclaiming dead processes' claims, unblocking
//! dead writers' reservations, retention).
//!
//! # Invariants
//! - A delivery's token names its record (lane, segment, offset); the claim
//!   behind it is in `held` until it is settled or restored, so a settle
//!   applies to exactly the record that was delivered.
//! - Lanes are tried most urgent first and each lane is FIFO (restored
//!   records first), so a pop takes the most urgent ready message.
//! - The lanes-in-use bits (the queue's `state` page, never synced) are a
//!   cache of the lane directories: every open sets the bit of each
//!   directory there is, so a lost or damaged page hides no lane.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{
    AtomicBool, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::{Arc, OnceLock, Weak};
use std::task::Waker;

use dashi_engine::spi::{
    effective_ttl, now_ns, DeathReason, Envelope, QueueState, QueueStore, TransportEvent,
};
use dashi_engine::FailureKind;
use dashi_engine::{Error, Queue};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::clock;
use crate::codec;
use crate::file_names;
use crate::lane::{token, Claimed, Lane, Storage};
use crate::segment::claim;
use crate::shared_page::SharedPage;

use super::{store_err, store_fail, wall_ns, Inner, LocalOptions, GENERATION, PUBLISHED};
use crate::cut::CutFlag;

/// One queue of the store, as this process uses it.
pub(crate) struct LocalQueue {
    pub(super) decl: Queue,
    /// The queue's incarnation (see `meta_json.rs`).
    pub(super) id: u64,
    /// `<root>/q/<encoded name>/<incarnation>`.
    pub(super) dir: PathBuf,
    pub(super) lanes_used: SharedPage,
    pub(super) lanes: Vec<OnceLock<Arc<Lane>>>,
    pub(super) segment_size: u64,
    pub(super) alloc: Arc<Allocator>,
    pub(super) state: QueueState,
    /// Deliveries of this process not yet settled, by lane and token (a
    /// fast hash: tokens are positions, not attacker-chosen).
    pub(super) held: Mutex<HashMap<HeldKey, Claimed, foldhash::fast::RandomState>>,
    /// This process's id in the store (claims name it).
    pub(super) owner: u32,
    pub(super) transport: Weak<Inner>,
    /// When this process last did the queue's upkeep (coarse clock, ns;
    /// 0 = never).
    pub(super) last_upkeep_ns: AtomicU64,
    /// Whether this process did the queue's upkeep once before its first
    /// delivery (a dead consumer's records come back before anything newer
    /// is delivered).
    pub(super) first_upkeep: AtomicBool,
    /// The store's control page (its topology generation).
    pub(super) control: Arc<SharedPage>,
    /// The generation this queue last checked the topology at.
    pub(super) seen_generation: AtomicU64,
    /// This process's consumer slot in the queue's state page (0 = none).
    consumer_slot: parking_lot::Mutex<usize>,
    /// This process published a message with its own expiration here.
    pub(super) expiring: AtomicBool,
    /// Why this process could not open the queue's files (`meta.json`
    /// names it; see [`LocalQueue::unusable`]), as (kind, line).
    pub(super) unusable: Option<(FailureKind, String)>,
    /// The store's: set once one of its files was found cut short here.
    pub(super) cut: Arc<CutFlag>,
}

/// Most records one [`QueueStore::pop_many`] of a lone consumer claims.
const POP_BATCH: usize = 32;

/// A held delivery's key: its lane and token in two whole words (a
/// `(u8, u64)` pair is assembled from a byte and a word, which the copies of
/// a batch of claims paid for in stalled loads).
type HeldKey = (u64, u64);

fn held_key(env: &Envelope) -> HeldKey {
    (u64::from(env.lane), env.token)
}

/// How often a consumer looks for records held by dead processes (idle or
/// busy alike).
const UPKEEP_EVERY_NS: u64 = 100_000_000;
/// How long an uncommitted reservation may block a lane when its header
/// names a writer that is alive (stopped, or copying a large record): then
/// it is padded over, and a writer that was only stalled publishes again.
const UNBLOCK_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// The same for a reservation whose header names no writer. A writer names
/// itself a few instructions after it reserves, so one still unnamed after
/// a second died there (or is stopped there): its lane waited the full 10 s
/// behind a producer killed at that point.
const UNBLOCK_UNNAMED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long past its deadline another process's lease must be before this
/// process restores the claim (a live owner's engine restores at the
/// deadline itself; this catches owners that are stopped or hung).
const LEASE_GRACE_NS: u64 = 1_000_000_000;

impl std::fmt::Debug for LocalQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalQueue")
            .field("name", &self.decl.name)
            .field("id", &self.id)
            .finish()
    }
}

/// The directory of queue `name` (all its incarnations, and its `name`
/// file).
pub(super) fn queue_root(root: &Path, name: &str) -> Result<PathBuf, Error> {
    let comp = file_names::encode(name)
        .ok_or_else(|| store_fail(FailureKind::Invalid, "queue name", "empty"))?;
    Ok(root.join("q").join(comp))
}

/// Writes the queue's `name` file (its name in plain text, for people
/// looking at the store; nothing reads it back) unless it already holds
/// it. Opening an existing queue writes nothing there: it used to rewrite
/// the file, which truncates it first, so on a full disk a consumer could
/// fail to start (another process took the freed space before the write;
/// the torture's full-disk run found it) and a crash in between left the
/// file empty.
fn write_name_file(qdir: &Path, name: &str) -> Result<(), Error> {
    let path = qdir.join("name");
    if std::fs::read(&path).is_ok_and(|held| held == name.as_bytes()) {
        return Ok(());
    }
    std::fs::write(&path, name.as_bytes())
        .map_err(|e| store_err(&format!("queue {name:?} name file"), e))
}

/// Makes the files of incarnation `id` of queue `name` (its directory, the
/// name file, the state page with its blocks allocated), or none of them.
/// A declare makes them before `meta.json` names the queue: a queue named
/// there whose files cannot be made (a full disk, no inodes left) made
/// every later open of the store fail, so nothing could be consumed or
/// deleted to free the space.
pub(super) fn make_files(root: &Path, name: &str, id: u64) -> Result<(), Error> {
    let qdir = queue_root(root, name)?;
    let dir = qdir.join(format!("{id:016x}"));
    let made = (|| {
        std::fs::create_dir_all(&dir)
            .map_err(|e| store_err(&format!("queue {name:?} directory {}", dir.display()), e))?;
        write_name_file(&qdir, name)?;
        SharedPage::open(&dir.join("state"))
            .map_err(|e| store_err(&format!("queue {name:?} state page"), e))?;
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        // The name's directory too, when no other incarnation is in it (the
        // caller holds the metadata lock: none is being made meanwhile).
        let others = std::fs::read_dir(&qdir)
            .map(|d| d.flatten().any(|e| e.file_name() != "name"))
            .unwrap_or(true);
        if !others {
            let _ = std::fs::remove_dir_all(&qdir);
        }
    }
    made
}

/// What a queue of this process takes from its store.
pub(super) struct FromStore<'a> {
    pub(super) root: &'a Path,
    pub(super) opts: &'a LocalOptions,
    pub(super) alloc: Arc<Allocator>,
    pub(super) owner: u32,
    pub(super) control: Arc<SharedPage>,
    pub(super) transport: Weak<Inner>,
    pub(super) cut: Arc<CutFlag>,
}

impl LocalQueue {
    pub(super) fn open(store: FromStore<'_>, decl: Queue, id: u64) -> Result<LocalQueue, Error> {
        let qdir = queue_root(store.root, &decl.name)?;
        let dir = qdir.join(format!("{id:016x}"));
        std::fs::create_dir_all(&dir).map_err(|e| {
            store_err(
                &format!("queue {:?} directory {}", decl.name, dir.display()),
                e,
            )
        })?;
        // Tests hold an open here, its directory made, nothing opened yet.
        crate::failpoint!("queue::dir_made");
        write_name_file(&qdir, &decl.name)?;
        let lanes_used = SharedPage::open(&dir.join("state"))
            .map_err(|e| store_err(&format!("queue {:?} state page", decl.name), e))?;
        // The bits say which lanes exist, for the consumers' scans; the
        // page is never synced (a power loss can take them) and can be
        // damaged, so every open sets the bit of each lane directory there
        // is: no lane's messages stay hidden until someone publishes there.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let lane = e.file_name();
                let p = lane
                    .to_str()
                    .and_then(|n| n.strip_prefix("lane-"))
                    .and_then(|p| p.parse::<u8>().ok());
                if let Some(p) = p.filter(|&p| p <= decl.max_priority) {
                    lanes_used
                        .u64_at(8 * (p as usize / 64))
                        .fetch_or(1 << (p % 64), AcqRel);
                }
            }
        }
        Ok(LocalQueue::assemble(store, decl, id, dir, lanes_used, None))
    }

    /// A queue `meta.json` names whose files this process cannot open (a
    /// directory deleted by hand on a full disk, a file where a directory
    /// should be, no file descriptor left): known, so a publish routed to
    /// it is refused with `why` (never dropped as unroutable) and it can
    /// be deleted, while every other queue of the store works. Every use
    /// of it fails with `why`; its files are tried again once a second.
    pub(super) fn unusable(
        store: FromStore<'_>,
        decl: Queue,
        id: u64,
        why: &Error,
    ) -> Result<LocalQueue, Error> {
        let dir = queue_root(store.root, &decl.name)?.join(format!("{id:016x}"));
        let kind = match why {
            Error::Store(f) => f.kind,
            _ => FailureKind::Runtime,
        };
        tracing::warn!(queue = %decl.name, error = %why, "a queue's files cannot be opened; the store's other queues work");
        // A page of its own: no other process's bits, and none to set.
        let lanes_used = SharedPage::private().map_err(|e| store_err("queue state page", e))?;
        let why = Some((kind, why.to_string()));
        Ok(LocalQueue::assemble(store, decl, id, dir, lanes_used, why))
    }

    fn assemble(
        store: FromStore<'_>,
        decl: Queue,
        id: u64,
        dir: PathBuf,
        lanes_used: SharedPage,
        unusable: Option<(FailureKind, String)>,
    ) -> LocalQueue {
        let generation = store.control.u64_at(GENERATION).load(Acquire);
        LocalQueue {
            lanes: (0..=decl.max_priority).map(|_| OnceLock::new()).collect(),
            decl,
            id,
            dir,
            lanes_used,
            segment_size: store.opts.segment_size,
            alloc: store.alloc,
            state: QueueState::new(),
            held: Mutex::new(HashMap::default()),
            owner: store.owner,
            transport: store.transport,
            last_upkeep_ns: AtomicU64::new(0),
            first_upkeep: AtomicBool::new(false),
            seen_generation: AtomicU64::new(generation),
            consumer_slot: parking_lot::Mutex::new(0),
            expiring: AtomicBool::new(false),
            control: store.control,
            unusable,
            cut: store.cut,
        }
    }

    /// `Err` with why, for a queue whose files could not be opened.
    pub(super) fn usable(&self) -> Result<(), Error> {
        match &self.unusable {
            None => Ok(()),
            Some((kind, line)) => Err(Error::Store(dashi_engine::StoreFailure::new(
                *kind,
                format!("queue {:?} cannot be used", self.decl.name),
                line,
            ))),
        }
    }

    /// Deletes this incarnation's files (the queue was deleted), then,
    /// under the metadata lock, every other directory of the name that
    /// `meta.json` does not name as an incarnation, and the name's
    /// directory once none is left. A declare adds its incarnation and makes
    /// its directory under that lock, so nothing live goes; what goes is
    /// left over: a delete killed before it removed its files, or a lane a
    /// publish made in a queue deleted under it (each held its disk space,
    /// a whole preallocated segment, until a lone open recovered the store).
    pub(super) fn remove_files(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let (Some(parent), Some(t)) = (self.dir.parent(), self.transport.upgrade()) else {
            return;
        };
        let Ok(_lock) = t.lock_meta() else { return };
        let Ok(meta) = t.read_meta() else { return };
        // Every name of this directory: a store whose two long names hash
        // alike (declared before such a pair was refused) keeps the
        // other's incarnations.
        let mine = file_names::encode(&self.decl.name);
        let live: Vec<String> = meta
            .queues
            .iter()
            .filter(|q| file_names::encode(&q.decl.name) == mine)
            .map(|q| format!("{:016x}", q.id))
            .collect();
        let mut kept = 0;
        if let Ok(entries) = std::fs::read_dir(parent) {
            for e in entries.flatten() {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n == "name" {
                    continue;
                }
                let incarnation = n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit());
                // A number meta.json never gave out is newer than this
                // meta.json (an older copy put back): not a leftover.
                let given_out = u64::from_str_radix(&n, 16).is_ok_and(|id| id < meta.next_id);
                if !incarnation || !given_out || live.iter().any(|l| *l == n) {
                    kept += 1;
                } else {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        // Tests hold a delete here, between its look and its removal.
        crate::failpoint!("queue::name_dir_checked");
        if kept == 0 && live.is_empty() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }

    /// The queue's upkeep, at most every 100 ms unless `now`: records held
    /// by processes that ended (or whose lease ran out long ago) go back to
    /// their lanes, reservations of dead or stalled writers are padded over,
    /// and fully settled segments are deleted. True if any record came back
    /// or a lane was unblocked.
    pub(super) fn upkeep(&self, now: bool) -> bool {
        let t = clock::coarse_now_ns();
        let last = self.last_upkeep_ns.load(Acquire);
        let due = last == 0 || t.saturating_sub(last) >= UPKEEP_EVERY_NS;
        if !(now || due)
            || self
                .last_upkeep_ns
                .compare_exchange(last, t.max(1), AcqRel, Acquire)
                .is_err()
        {
            return false;
        }
        let Some(inner) = self.transport.upgrade() else {
            return false;
        };
        // One look at each owner's lock per pass.
        let mut seen: HashMap<u32, bool> = HashMap::new();
        let mut alive = |owner: u32| {
            *seen
                .entry(owner)
                .or_insert_with(|| crate::procs::alive(&inner.root, owner))
        };
        let shared_now = clock::shared_now_ns();
        let mut any = false;
        for p in self.used_lanes() {
            let Ok(l) = self.lane(p) else { continue };
            match l.reclaim(&mut alive, self.owner, shared_now, LEASE_GRACE_NS) {
                Ok(n) => any |= n > 0,
                Err(e) => tracing::warn!(queue = %self.decl.name, error = %e, "reclaiming failed"),
            }
            // A dead or stalled producer's uncommitted reservation must not
            // block the lane.
            let writer_alive =
                |w: u64| u32::try_from(w).is_ok_and(|id| crate::procs::alive(&inner.root, id));
            match l.unblock(writer_alive, UNBLOCK_AFTER, UNBLOCK_UNNAMED_AFTER) {
                Ok(padded) => any |= padded,
                Err(e) => tracing::warn!(queue = %self.decl.name, error = %e, "unblocking failed"),
            }
            // Retention follows the slowest consumer: only segments wholly
            // before the oldest unsettled record go.
            if let Err(e) = l.retire() {
                tracing::warn!(queue = %self.decl.name, error = %e, "retention failed");
            }
        }
        if any {
            // Consumers asleep in other processes may take these now.
            inner.wake_other_processes();
        }
        any
    }

    /// Counts a consumer of this process in or out of the store-wide figure.
    fn count_consumer(&self, delta: i64) {
        let Some(t) = self.transport.upgrade() else {
            return;
        };
        let Ok(_g) = self.cut.enter() else {
            return;
        };
        super::shared_stats::add_consumers(
            &self.lanes_used,
            &self.consumer_slot,
            self.owner,
            delta,
            |id| crate::procs::alive(&t.root, id),
        );
    }

    /// Whether a live process other than this one consumes this queue (its
    /// slot counts one). A process with no slot (63 others hold them all)
    /// is not seen here.
    fn consumed_elsewhere(&self) -> bool {
        self.transport.upgrade().is_some_and(|t| {
            super::shared_stats::consumers_elsewhere(&self.lanes_used, self.owner, |id| {
                crate::procs::alive(&t.root, id)
            }) > 0
        })
    }

    /// Consumers of this queue in every live process.
    pub(super) fn store_consumers(&self) -> u64 {
        match self.transport.upgrade() {
            Some(t) => super::shared_stats::consumers(&self.lanes_used, self.owner, |id| {
                crate::procs::alive(&t.root, id)
            }),
            None => self.state.consumers(),
        }
    }

    /// Inline: every claim, ack and publish asks; opening is out of line.
    #[inline]
    pub(super) fn lane(&self, p: u8) -> Result<&Arc<Lane>, Error> {
        match self.lanes[p as usize].get() {
            Some(l) => Ok(l),
            None => self.open_lane(p),
        }
    }

    /// Opens lane `p` in this process (its first use here).
    #[cold]
    fn open_lane(&self, p: u8) -> Result<&Arc<Lane>, Error> {
        let cell = &self.lanes[p as usize];
        self.usable()?;
        let storage = Storage::Files {
            dir: self.dir.join(format!("lane-{p}")),
            alloc: self.alloc.clone(),
        };
        let lane = Lane::open(storage, u32::from(p), self.segment_size)
            .map_err(|e| store_err(&format!("queue {:?}", self.decl.name), e))?;
        let _ = cell.set(Arc::new(lane));
        self.lanes_used
            .u64_at(8 * (p as usize / 64))
            .fetch_or(1 << (p % 64), AcqRel);
        cell.get()
            .ok_or_else(|| store_fail(FailureKind::Runtime, "lane", "vanished"))
    }

    /// Lanes any process ever used, most urgent first.
    pub(super) fn used_lanes(&self) -> impl DoubleEndedIterator<Item = u8> + '_ {
        (0..=self.decl.max_priority).rev().filter(|p| {
            self.lanes_used.u64_at(8 * (*p as usize / 64)).load(Acquire) & (1 << (p % 64)) != 0
        })
    }

    /// Ready messages and their body bytes, all lanes; with `exact` false,
    /// possibly overestimated (never under) and without reading what
    /// consumers write (see [`Lane::ready_at_most`]). No allocation: this runs
    /// on every publish for the queue's limits.
    pub(super) fn ready(&self, exact: bool) -> (u64, u64) {
        let (mut n, mut b) = (0, 0);
        for p in self.used_lanes() {
            if let Ok(l) = self.lane(p) {
                let (r, rb) = if exact {
                    let (r, rb, _) = l.counts();
                    (r, rb)
                } else {
                    l.ready_at_most()
                };
                // Saturating: counters a damaged page filled must not panic.
                n = r.saturating_add(n);
                b = rb.saturating_add(b);
            }
        }
        (n, b)
    }

    /// Ready messages, their body bytes, unacked messages and the ready
    /// messages of each lane; the error of a lane that cannot be opened (a
    /// count without it would pass for one: a delete `if_empty` would go
    /// ahead, a declare would report too few).
    pub(super) fn counts(&self) -> Result<(u64, u64, u64, Vec<u64>), Error> {
        self.usable()?;
        let mut depth = vec![0; self.decl.max_priority as usize + 1];
        let (mut n, mut b, mut u) = (0, 0, 0);
        {
            let _g = self.cut.enter()?;
            for p in self.used_lanes() {
                let (r, rb, ru) = self.lane(p)?.counts();
                depth[p as usize] = r;
                n = r.saturating_add(n);
                b = rb.saturating_add(b);
                u = ru.saturating_add(u);
            }
        }
        // Zeros read from a page replaced meanwhile would pass for empty.
        self.cut.check()?;
        Ok((n, b, u, depth))
    }

    pub(super) fn envelope(&self, lane: u8, c: &Claimed) -> Result<Envelope, Error> {
        self.envelope_with(lane, c, &mut codec::Names::default())
    }

    /// [`LocalQueue::envelope`], reusing the names of the records decoded
    /// before it in a run.
    fn envelope_with(
        &self,
        lane: u8,
        c: &Claimed,
        names: &mut codec::Names,
    ) -> Result<Envelope, Error> {
        let seg = &c.segment;
        let (start, len) = seg.payload_range(c.pos.off, &c.meta);
        // Read in place; only the body becomes `Bytes` of the mapping (one
        // owner for it, no copy).
        let p = seg
            .with_bytes(start, len, |payload| {
                codec::decode_in(payload, &mut |at, n| seg.bytes_of(start + at, n), names)
            })
            .map_err(|e| store_fail(FailureKind::Damaged, "record payload", e))?;
        let ttl = effective_ttl(self.decl.message_ttl, p.expiration());
        let expires_at = match ttl {
            None => u64::MAX,
            Some(ttl) => {
                // A record whose publish time was not recorded (no TTL
                // applied when it was written; only a queue deleted and
                // declared again with one under a racing publish) counts
                // from now.
                let from = match c.meta.timestamp_ns {
                    0 => wall_ns(),
                    t => t,
                };
                let deadline = from.saturating_add(ttl.as_nanos() as u64);
                now_ns().saturating_add(deadline.saturating_sub(wall_ns()))
            }
        };
        Ok(Envelope {
            body: p.body,
            properties: p.properties,
            exchange: p.exchange,
            routing_key: p.routing_key,
            redelivered: c.redelivered,
            expires_at,
            lane,
            token: token(c.pos),
        })
    }

    /// The claim behind a delivery of this process, no longer held.
    /// (Its lane is the envelope's: returning the claim alone, not paired
    /// with the lane, moves it out of the map without the misaligned copies
    /// a `(u8, Claimed)` costs, a twentieth of a consumer's time.)
    pub(super) fn take(&self, env: &Envelope) -> Option<Claimed> {
        self.held.lock().remove(&held_key(env))
    }

    /// True when messages of this queue can expire: it has a TTL, or this
    /// process published a message with its own expiration to it.
    pub(super) fn may_expire(&self) -> bool {
        self.decl.message_ttl.is_some() || self.expiring.load(Relaxed)
    }

    /// Expires the head of each lane whose time ran out (and the heads after
    /// it, while they have run out too), dead-lettering them: messages of a
    /// queue nobody reads expire on time. Only an expired head is claimed;
    /// nothing is taken and put back. True if any expired.
    pub(super) fn expire_heads(&self) -> bool {
        if self.state.is_deleted() {
            return false;
        }
        let Ok(_g) = self.cut.enter() else {
            return false;
        };
        let mut any = false;
        for p in self.used_lanes() {
            let Ok(l) = self.lane(p) else { continue };
            while let Ok(Some(c)) = l.claim_if(self.owner, |seg, pos, meta| {
                self.record_expired(seg, pos.off, meta)
            }) {
                match self.envelope(p, &c) {
                    Ok(env) => {
                        if let Some(t) = self.transport.upgrade() {
                            t.stats.counters.record(TransportEvent::Expired, 1);
                        }
                        self.kill(p, &c, env, DeathReason::Expired);
                        any = true;
                    }
                    // Unreadable: set aside, as a consumer would.
                    Err(_) => {
                        l.settle(&c, self.owner, claim::DEAD);
                    }
                }
            }
        }
        any
    }

    /// Whether the record at `off` has outlived its TTL (the queue's or its
    /// own, whichever is shorter), by the wall clock it was stamped with.
    fn record_expired(
        &self,
        seg: &Arc<crate::segment::Segment>,
        off: u64,
        meta: &crate::segment::RecordMeta,
    ) -> bool {
        let bytes = seg.payload_bytes(off, meta);
        // An unreadable record is the consumers' to set aside.
        let Ok(p) = codec::decode(&bytes) else {
            return false;
        };
        match effective_ttl(self.decl.message_ttl, p.expiration()) {
            None => false,
            // Publish time not recorded: its TTL counts from its delivery.
            Some(_) if meta.timestamp_ns == 0 => false,
            Some(ttl) => wall_ns() >= meta.timestamp_ns.saturating_add(ttl.as_nanos() as u64),
        }
    }

    pub(super) fn kill(&self, lane: u8, c: &Claimed, env: Envelope, reason: DeathReason) {
        // With a file cut short, the dead-letter publish is refused: the
        // record stays claimed (it comes back once this process closes the
        // store) rather than marked dead with its copy nowhere.
        if self.cut.is_set() {
            return;
        }
        if let Ok(l) = self.lane(lane) {
            l.settle(c, self.owner, claim::DEAD);
        }
        if let Some(t) = self.transport.upgrade() {
            t.dead_letter(&self.decl, env, reason);
        }
    }

    /// Takes up to `max` ready messages into `out`, most urgent lane first
    /// and FIFO within a lane (as that many single pops would, in one
    /// pass: the claims of a batch go into `held` under one lock).
    /// `Err` only when nothing was taken and a lane could not be read.
    pub(super) fn pop_ready_many(
        &self,
        max: usize,
        out: &mut Vec<Envelope>,
    ) -> Result<usize, Error> {
        // A lane that cannot be read does not stop the others; its failure
        // is reported when no other lane has a message.
        let mut failed = None;
        // Sized once: one allocation each, not four as they grow to a
        // batch of 32.
        let mut claims: Vec<(HeldKey, Claimed)> = Vec::with_capacity(max.min(POP_BATCH));
        // A lane's ready records are claimed a run at a time (one pass over
        // a stretch of its log), then read; a message that expired or
        // cannot be read is taken out of the run, and the lane is asked
        // again for what is still wanted.
        let mut run = Vec::with_capacity(max.min(POP_BATCH));
        let mut names = codec::Names::default();
        'lanes: for p in self.used_lanes() {
            let l = match self.lane(p) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(queue = %self.decl.name, lane = p, error = %e, "lane unreadable");
                    failed.get_or_insert(e);
                    continue;
                }
            };
            while claims.len() < max {
                let claimed = l.claim_run(self.owner, max - claims.len(), &mut run);
                let mut now = 0;
                for c in run.drain(..) {
                    let env = match self.envelope_with(p, &c, &mut names) {
                        Ok(env) => env,
                        Err(e) => {
                            // Read from pages replaced under a cut (or a
                            // failed disk), it is not known to be damaged:
                            // it stays claimed, and comes back.
                            if !self.cut.is_set() {
                                tracing::warn!(queue = %self.decl.name, error = %e, "unreadable record set aside");
                                l.settle(&c, self.owner, claim::DEAD);
                            }
                            continue;
                        }
                    };
                    if env.expires_at != u64::MAX {
                        if now == 0 {
                            now = now_ns();
                        }
                        if now >= env.expires_at {
                            if let Some(t) = self.transport.upgrade() {
                                t.stats.counters.record(TransportEvent::Expired, 1);
                            }
                            self.kill(p, &c, env, DeathReason::Expired);
                            continue;
                        }
                    }
                    claims.push((held_key(&env), c));
                    out.push(env);
                }
                // What the run claimed is held now (above), whatever it
                // reports: a claim dropped here would stay with this live
                // process, never delivered and never reclaimed.
                match claimed {
                    Ok(0) => continue 'lanes,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(queue = %self.decl.name, lane = p, error = %e, "lane unreadable");
                        failed.get_or_insert(store_err("claim", e));
                        continue 'lanes;
                    }
                }
            }
            break;
        }
        let n = claims.len();
        if n > 0 {
            let mut held = self.held.lock();
            held.reserve(n);
            held.extend(claims);
            return Ok(n);
        }
        failed.map_or(Ok(0), Err)
    }

    /// Claims the oldest message of the least urgent lane (drop-head).
    pub(super) fn drop_oldest(&self) -> bool {
        for p in self.used_lanes().rev() {
            let Ok(l) = self.lane(p) else { continue };
            if let Ok(Some(c)) = l.claim(self.owner) {
                match self.envelope(p, &c) {
                    Ok(env) => self.kill(p, &c, env, DeathReason::MaxLen),
                    Err(_) => {
                        l.settle(&c, self.owner, claim::DEAD);
                    }
                }
                return true;
            }
        }
        false
    }
}

impl LocalQueue {
    /// [`QueueStore::pop_many`] under the cut guard.
    fn pop_many_here(&self, max: usize, out: &mut Vec<Envelope>) -> Result<usize, Error> {
        // A consumer-only process sees deletes and redeclares too: one
        // atomic load of the shared generation when nothing changed.
        let gen = self.control.u64_at(GENERATION).load(Acquire);
        if gen != self.seen_generation.load(Relaxed) {
            match self.transport.upgrade().map(|t| t.refresh()) {
                // A failed reload is retried on the next pop.
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.decl.name, error = %e, "topology reload failed");
                }
                _ => self.seen_generation.store(gen, Relaxed),
            }
        }
        if self.state.is_deleted() || max == 0 {
            return Ok(0);
        }
        if self.unusable.is_some() {
            // Its files are tried again (at most once a second): once they
            // open, this stand-in is replaced, and marked deleted.
            if let Some(t) = self.transport.upgrade() {
                let _ = t.refresh();
            }
            if self.state.is_deleted() {
                return Ok(0);
            }
        }
        self.usable()?;
        // Before this process's first delivery from the queue, records a
        // dead consumer held come back (strict priority across a crash);
        // after that the upkeep runs every 100 ms, busy or idle.
        if !self.first_upkeep.load(Relaxed) && !self.first_upkeep.swap(true, AcqRel) {
            self.upkeep(true);
        }
        let n = self.pop_ready_many(max, out)?;
        if n > 0 {
            self.upkeep(false);
            return Ok(n);
        }
        if !self.upkeep(false) {
            return Ok(0);
        }
        self.pop_ready_many(max, out)
    }

    /// [`QueueStore::ack`] under the cut guard.
    fn ack_here(&self, envs: &[&Envelope]) -> Result<(), Error> {
        // A claim this process no longer holds (the queue was deleted, the
        // lease ran out and another process restored it) has nothing to
        // settle: its message comes back or is gone, as the protocol says.
        let mut failed = None;
        let mut settle = |p: u8, c: &Claimed| match self.lane(p) {
            Ok(l) => {
                l.settle(c, self.owner, claim::ACKED);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        };
        if let [env] = envs {
            if let Some(c) = self.take(env) {
                settle(env.lane, &c);
            }
        } else {
            // A batch (`ack_multiple`) takes its claims out under one lock
            // of the held claims, and settles them after letting go of it.
            let taken: Vec<(u8, Claimed)> = {
                let mut held = self.held.lock();
                envs.iter()
                    .filter_map(|e| held.remove(&held_key(e)).map(|c| (e.lane, c)))
                    .collect()
            };
            for (p, c) in &taken {
                settle(*p, c);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// [`QueueStore::restore`] under the cut guard.
    fn restore_here(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        let mut any = false;
        let mut failed = None;
        for env in envs {
            if let Some(c) = self.take(&env) {
                match self.lane(env.lane) {
                    Ok(l) => any |= l.restore(&c, self.owner, env.redelivered),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        self.state.notify_all();
        if any {
            if let Some(t) = self.transport.upgrade() {
                t.wake_other_processes();
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

impl QueueStore for LocalQueue {
    fn name(&self) -> &str {
        &self.decl.name
    }

    fn declaration(&self) -> &Queue {
        &self.decl
    }

    fn pop(&self) -> Result<Option<Envelope>, Error> {
        let mut out = Vec::with_capacity(1);
        self.pop_many(1, &mut out)?;
        Ok(out.pop())
    }

    fn pop_many(&self, max: usize, out: &mut Vec<Envelope>) -> Result<usize, Error> {
        let taken = {
            let _g = self.cut.enter()?;
            self.pop_many_here(max, out)
        };
        // A cut met in this call: the records it claimed are handed out
        // (each read whole from a page of the file: the pass may have gone
        // on into the next segment); the next call fails.
        match taken {
            Ok(0) | Err(_) if self.cut.is_set() => self.cut.check().map(|()| 0),
            other => other,
        }
    }

    /// A pass claims a run of records with one look at the topology, one
    /// upkeep check and one lock of the held claims, so a consumer alone on
    /// its queue takes up to this many at once (its window permitting).
    fn batch_hint(&self) -> usize {
        POP_BATCH
    }

    fn ack(&self, envs: &[&Envelope]) -> Result<(), Error> {
        let done = {
            let _g = self.cut.enter()?;
            self.ack_here(envs)
        };
        self.cut.check().and(done)
    }

    fn reject(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        {
            let _g = self.cut.enter()?;
            for env in envs {
                if let Some(c) = self.take(&env) {
                    self.kill(env.lane, &c, env, DeathReason::Rejected);
                }
            }
        }
        self.cut.check()
    }

    fn restore(&self, envs: Vec<Envelope>) -> Result<(), Error> {
        let done = {
            let _g = self.cut.enter()?;
            self.restore_here(envs)
        };
        self.cut.check().and(done)
    }

    fn leases_what_waits(&self) -> bool {
        true
    }

    fn lease(&self, env: &Envelope, lease: std::time::Duration) -> bool {
        let Ok(_g) = self.cut.enter() else {
            // Not known: it stays this process's as far as anyone can tell.
            return true;
        };
        let held = self.held.lock().get(&held_key(env)).cloned();
        match (held, self.lane(env.lane)) {
            (Some(c), Ok(l)) => {
                let deadline = clock::shared_now_ns().saturating_add(lease.as_nanos() as u64);
                if l.set_deadline(&c, self.owner, deadline) {
                    return true;
                }
                // Another process restored it: the claim is no longer held.
                self.held.lock().remove(&held_key(env));
                false
            }
            (None, _) => false,
            (Some(_), Err(_)) => true,
        }
    }

    fn register(&self, waker: &Waker) -> u64 {
        let id = self.state.register(waker);
        if let Some(t) = self.transport.upgrade() {
            t.ensure_watcher();
            // Read after registering, before the caller's last look at the
            // queue: a publish from now on moves the word past this value.
            if let Ok(_g) = self.cut.enter() {
                t.arm.arm(t.control.u32_at(PUBLISHED).load(SeqCst));
            }
        }
        id
    }

    fn state(&self) -> &QueueState {
        &self.state
    }

    fn consumer_added(&self) -> bool {
        let added = self.state.consumer_added();
        if added {
            self.count_consumer(1);
        }
        added
    }

    fn consumer_withdrawn(&self) {
        self.state.consumer_withdrawn();
        self.count_consumer(-1);
    }

    fn consumer_removed(&self) {
        let Ok(_g) = self.cut.enter() else {
            // Nothing of the store is touched (no auto-delete either).
            self.state.consumer_withdrawn();
            return;
        };
        self.count_consumer(-1);
        if self.decl.auto_delete && self.consumed_elsewhere() {
            // The store's last consumer deletes an auto-delete queue, not
            // this process's last one: another process takes from it.
            self.state.consumer_withdrawn();
            return;
        }
        if self.state.consumer_removed(&self.decl) {
            if let Some(t) = self.transport.upgrade() {
                // This incarnation only: a queue declared again since is
                // another queue.
                let removed = t.change(|m| {
                    m.remove_queue(&self.decl.name, Some(self.id));
                    Ok(())
                });
                match removed {
                    Ok(()) => self.remove_files(),
                    Err(e) => {
                        tracing::warn!(queue = %self.decl.name, error = %e, "auto-delete failed")
                    }
                }
            }
        }
    }
}
