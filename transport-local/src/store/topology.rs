//! The store's topology as this process sees it: `meta.json` read and
//! rewritten under the metadata lock, the shared generation word, and the
//! routing snapshot rebuilt when another process changed the topology.
//!
//! # Invariants
//! - A change takes the metadata lock, re-reads `meta.json`, writes it anew
//!   (temporary file, sync, rename, directory sync) and only then bumps the
//!   shared generation: a process that sees the new generation reads the
//!   new file.
//! - Publishers check the generation with one atomic load and rebuild the
//!   snapshot only when it moved.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::{Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

use dashi_engine::spi::{check_name, ConnectionId, Topology};
use dashi_engine::Error;
use dashi_engine::FailureKind;

use crate::lock::FileLock;

use super::meta_json::Meta;
use super::queue::{FromStore, LocalQueue};
use super::{store_err, store_fail, Inner, GENERATION};

/// How long a queue this process could not open stays unusable before its
/// files are tried again.
const UNUSABLE_RETRY_NS: u64 = 1_000_000_000;

/// Writes `meta.json` anew: written under a temporary name, synced, renamed,
/// and the directory synced, so a topology change that returned survives a
/// power loss and no reader sees half a file. The caller holds the metadata
/// lock (or has the store to itself).
pub(super) fn write_meta(root: &std::path::Path, meta: &Meta) -> std::io::Result<()> {
    use std::io::Write;
    let text = meta.to_json().map_err(std::io::Error::other)?;
    let tmp = root.join(format!("meta.json.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, root.join("meta.json"))?;
    std::fs::File::open(root)?.sync_all()
}

impl Inner {
    pub(super) fn meta_path(&self) -> PathBuf {
        self.root.join("meta.json")
    }

    /// `meta.json`, or an empty topology when the store has none yet. Once
    /// this process has read one, a read that finds none is retried for a
    /// moment and then an error: the file is only ever replaced by a rename,
    /// so it is never really gone, and an empty topology would make every
    /// queue unknown to this process. (A read of a file renamed over while
    /// open can fail so on a FUSE filesystem: `dashi torture`'s power-loss
    /// filesystem did, and every torture queue of a process went unknown.)
    pub(super) fn read_meta(&self) -> Result<Meta, Error> {
        let mut tries = 0;
        loop {
            match std::fs::read_to_string(self.meta_path()) {
                Ok(text) => {
                    self.meta_seen.store(true, SeqCst);
                    return Meta::from_json(&text)
                        .map_err(|e| store_fail(FailureKind::CorruptMetadata, "metadata", e));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if !self.meta_seen.load(SeqCst) {
                        return Ok(Meta::default());
                    }
                    tries += 1;
                    if tries > 100 {
                        return Err(store_fail(
                            FailureKind::CorruptMetadata,
                            "metadata",
                            "meta.json is gone from a store that had one",
                        ));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(store_err("metadata", e)),
            }
        }
    }

    pub(super) fn lock_meta(&self) -> Result<FileLock, Error> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(self.root.join("meta.lock"))
            .map_err(|e| store_err("metadata lock", e))?;
        FileLock::exclusive(f).map_err(|e| store_err("metadata lock", e))
    }

    /// Applies a topology change under the metadata lock and publishes it.
    pub(super) fn change(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Meta) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let _lock = self.lock_meta()?;
        let mut meta = self.read_meta()?;
        let before = meta.clone();
        f(&mut meta)?;
        if meta != before {
            write_meta(&self.root, &meta).map_err(|e| store_err("metadata write", e))?;
            self.meta_seen.store(true, SeqCst);
            self.control.u64_at(GENERATION).fetch_add(1, AcqRel);
        }
        // Under the lock, nobody else changes it: this is `meta`'s generation.
        let gen = self.control.u64_at(GENERATION).load(Acquire);
        self.reload(meta, gen)
    }

    /// Reloads the topology if another process changed it. A queue that
    /// fails to open while the generation moves on was being deleted by
    /// another process (it takes the queue out of `meta.json` first, then
    /// removes its files, maybe between this process's read and its open):
    /// the newer file is read and loaded instead, so one queue going away
    /// never makes the others unusable.
    pub(super) fn refresh(self: &Arc<Self>) -> Result<(), Error> {
        let gen = self.control.u64_at(GENERATION).load(Acquire);
        if self.loaded_gen.load(Acquire) == gen && gen != 0 {
            // A queue this process could not open is tried again once a
            // second while one is left (its files mended, space back).
            let at = self.retry_unusable_at.load(Relaxed);
            if at == 0 || crate::clock::coarse_now_ns() < at {
                return Ok(());
            }
            self.retry_unusable_at.store(0, Relaxed);
        }
        self.load()
    }

    /// Loads `meta.json` as [`Inner::refresh`] does, whatever is loaded
    /// now (an open's first load: the generation word may hold anything).
    pub(super) fn load(self: &Arc<Self>) -> Result<(), Error> {
        let mut retries = 0;
        loop {
            let gen = self.control.u64_at(GENERATION).load(Acquire);
            // Read after the generation: the file is at least that new, so a
            // change made meanwhile leaves the generation ahead of what is
            // loaded, and the next look reloads again (never the other way
            // round: an old file recorded under a new generation).
            let meta = self.read_meta()?;
            match self.reload(meta, gen) {
                Err(_)
                    if retries < 1000 && self.control.u64_at(GENERATION).load(Acquire) != gen =>
                {
                    retries += 1;
                }
                done => return done,
            }
        }
    }

    /// Makes `meta` (read at or after generation `gen`) this process's
    /// topology.
    pub(super) fn reload(self: &Arc<Self>, meta: Meta, gen: u64) -> Result<(), Error> {
        let mut topo = self.topo.lock();
        // Another thread already loaded a newer file: keep it (an older view
        // would take the newer incarnations of queues for deleted ones).
        if topo.generation != u64::MAX && gen < topo.generation {
            return Ok(());
        }
        let mut topology = Topology::new();
        for e in &meta.exchanges {
            topology.declare_exchange(e)?;
        }
        let mut queues = HashMap::new();
        for entry in &meta.queues {
            // The same incarnation is the same queue; anything else (a queue
            // deleted and declared again, even with the same arguments) is a
            // new one, in its own directory. One whose files could not be
            // opened is tried again.
            let existing = topo
                .queues
                .get(&entry.decl.name)
                .filter(|x| x.id == entry.id && x.decl == entry.decl && x.unusable.is_none())
                .cloned();
            let lq = match existing {
                Some(x) => x,
                None => {
                    let store = || FromStore {
                        root: &self.root,
                        opts: &self.opts,
                        alloc: self.alloc.clone(),
                        owner: self.me(),
                        control: self.control.clone(),
                        transport: Arc::downgrade(self),
                        cut: self.cut.clone(),
                    };
                    match LocalQueue::open(store(), entry.decl.clone(), entry.id) {
                        Ok(q) => Arc::new(q),
                        // Being deleted by another process (its files go
                        // after `meta.json` changed): the caller reads the
                        // newer file.
                        Err(e) if self.control.u64_at(GENERATION).load(Acquire) != gen => {
                            return Err(e)
                        }
                        // Known and not usable: the other queues work, and a
                        // publish routed to it is refused, not dropped.
                        Err(e) => Arc::new(LocalQueue::unusable(
                            store(),
                            entry.decl.clone(),
                            entry.id,
                            &e,
                        )?),
                    }
                }
            };
            queues.insert(entry.decl.name.clone(), lq);
        }
        for b in &meta.bindings {
            let _ = topology.bind(b.clone(), |q| queues.contains_key(q));
        }
        for (name, q) in &topo.queues {
            if queues.get(name).is_none_or(|n| !Arc::ptr_eq(n, q)) {
                q.state.mark_deleted();
            }
        }
        if queues.values().any(|q| q.decl.message_ttl.is_some()) {
            self.ensure_expiry();
        }
        let snapshot = topology.snapshot(queues.iter().map(|(n, q)| (n.clone(), q.clone())));
        topo.topology = topology;
        topo.queues = queues;
        topo.generation = gen;
        let retry = if topo.queues.values().any(|q| q.unusable.is_some()) {
            crate::clock::coarse_now_ns().saturating_add(UNUSABLE_RETRY_NS)
        } else {
            0
        };
        self.retry_unusable_at.store(retry, Relaxed);
        self.loaded_gen.store(gen, SeqCst);
        self.routing.store(Arc::new(snapshot));
        Ok(())
    }

    pub(super) fn queue(
        self: &Arc<Self>,
        name: &str,
        owner: ConnectionId,
    ) -> Result<Arc<LocalQueue>, Error> {
        check_name("queue", name)?;
        self.refresh()?;
        let q = self
            .topo
            .lock()
            .queues
            .get(name)
            .cloned()
            .ok_or_else(|| Error::UnknownQueue(name.to_owned()))?;
        self.check_owner(&q, owner)?;
        Ok(q)
    }

    pub(super) fn check_owner(&self, q: &LocalQueue, owner: ConnectionId) -> Result<(), Error> {
        if q.decl.exclusive {
            match self.exclusive_owner.lock().get(&q.decl.name) {
                Some(o) if *o == owner => {}
                _ => return Err(Error::Exclusive(q.decl.name.clone())),
            }
        }
        Ok(())
    }
}
