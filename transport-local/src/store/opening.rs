//! Opening a store: the format marker, the presence lock that tells the
//! first process in (which recovers the store) from the others, the store's
//! runtime, and one shared instance per directory and options per process.
//!
//! # Invariants
//! - Every process holds a shared `flock` on `open.lock` while it has the
//!   store open; the first one in takes it exclusively (non-blocking),
//!   recovers every lane, then downgrades, so recovery never runs beside
//!   another user of the store.
//! - A process enters (takes `open.lock` exclusively or shared) only while
//!   it holds `entry.lock` exclusively, so every holder of `open.lock` has
//!   finished a recovery or joined processes that had: a process that waited
//!   while the first one in recovered, and got in because that one was
//!   killed before it finished, finds itself alone and recovers.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use dashi_engine::spi::{Routing, Topology};
use dashi_engine::Error;
use dashi_engine::{FailureKind, StoreFailure};
use dashi_rt::{Runtime, RuntimeConfig};
use parking_lot::Mutex;

use crate::alloc::Allocator;
use crate::lane::{Lane, Storage};
use crate::lock::FileLock;
use crate::procs::Registration;
use crate::recovery::Totals;
use crate::shared_page::SharedPage;

use super::durability::Durability;
use super::meta_json::Meta;
use super::queue::queue_root;
use super::wakeup::Arm;
use super::{
    store_err, store_fail, Fsync, Inner, LocalOptions, LocalTransport, Topo, MARKER, MARKER_3,
};

/// Recovers every queue of the store at `root` (the caller is its only
/// user, so every other process that used it has ended): each lane is
/// checked and rebuilt from its segments (`Lane::recover`), exclusive queues
/// go (their connections ended with their processes), and the files of
/// incarnations `meta.json` no longer names (a delete interrupted between
/// the metadata and the files) are removed.
fn recover_store(root: &Path, segment_size: u64) -> Result<Totals, Error> {
    let mut total = Totals::default();
    let meta_path = root.join("meta.json");
    let mut meta = match std::fs::read_to_string(&meta_path) {
        Ok(text) => Meta::from_json(&text)
            .map_err(|e| store_fail(FailureKind::CorruptMetadata, "metadata", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A store that never declared a queue has no `meta.json`; one
            // whose `q/` holds a queue's files lost it. Taken as empty, the
            // sweep below would delete every queue and its messages: refuse,
            // and change nothing.
            if let Some(dir) = first_incarnation(&root.join("q")) {
                return Err(store_fail(
                    FailureKind::CorruptMetadata,
                    "metadata",
                    format!(
                        "{} is missing but {} holds a queue's files: nothing was changed; \
                         put meta.json back, or move {} aside to start an empty store",
                        meta_path.display(),
                        dir.display(),
                        root.join("q").display()
                    ),
                ));
            }
            Meta::default()
        }
        Err(e) => return Err(store_err("metadata", e)),
    };
    // Half-written copies of `meta.json` and of the marker, left by a
    // process killed (or out of space) before its rename: nobody else has
    // the store open, so none is in use.
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("meta.json.tmp-") || n.starts_with("DASHI-LOCAL.tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let exclusive: Vec<_> = meta
        .queues
        .iter()
        .filter(|q| q.decl.exclusive)
        .map(|q| (q.decl.name.clone(), q.id))
        .collect();
    if !exclusive.is_empty() {
        for (name, id) in &exclusive {
            meta.remove_queue(name, Some(*id));
        }
        super::topology::write_meta(root, &meta).map_err(|e| store_err("metadata write", e))?;
    }
    let live: Vec<(PathBuf, u64)> = meta
        .queues
        .iter()
        .map(|q| Ok((queue_root(root, &q.decl.name)?, q.id)))
        .collect::<Result<_, Error>>()?;
    let queues = match std::fs::read_dir(root.join("q")) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(total),
        Err(e) => return Err(store_err("recovery", e)),
    };
    let mut newest_aside = None;
    for q in queues.flatten() {
        let Ok(incarnations) = std::fs::read_dir(q.path()) else {
            continue;
        };
        for inc in incarnations.flatten() {
            let name = inc.file_name().to_string_lossy().into_owned();
            let Ok(id) = u64::from_str_radix(&name, 16) else {
                continue;
            };
            if !live.iter().any(|(dir, i)| *dir == q.path() && *i == id) {
                if id < meta.next_id {
                    // Deleted (its number was given out, and meta.json no
                    // longer names it): files a delete left behind.
                    let _ = std::fs::remove_dir_all(inc.path());
                } else if holds_no_lane(&inc.path()) {
                    // Never given a message: a declare killed after it made
                    // the queue's files and before `meta.json` named it.
                    // Nothing to keep.
                    let _ = std::fs::remove_dir_all(inc.path());
                } else {
                    // A number meta.json never gave out: this meta.json is
                    // older than the queue (a copy put back). Its messages
                    // are kept aside, never deleted, and no later queue
                    // gets its number.
                    set_aside(root, &inc.path(), &mut newest_aside)?;
                }
                continue;
            }
            let Ok(lanes) = std::fs::read_dir(inc.path()) else {
                continue;
            };
            for l in lanes.flatten() {
                let lname = l.file_name().to_string_lossy().into_owned();
                let Some(p) = lname
                    .strip_prefix("lane-")
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                let storage = Storage::Files {
                    dir: l.path(),
                    alloc: Allocator::direct(),
                };
                // A lane that cannot be opened for what is at its path (a
                // file where its directory should be) cannot be opened by
                // anyone later either: it is left as it is, its queue says
                // why at every use, and the store's other queues open. Any
                // other failure stops the open: a lane skipped here would
                // be used later without its recovery.
                let lane = match Lane::open(storage, p, segment_size) {
                    Ok(lane) => lane,
                    Err(e) if wrong_file_type(&e) => {
                        tracing::error!(
                            lane = %l.path().display(),
                            error = %e,
                            "a lane cannot be opened; its queue is not usable until it is mended"
                        );
                        continue;
                    }
                    Err(e) => return Err(store_err("recovery", e)),
                };
                let t = lane.recover().map_err(|e| store_err("recovery", e))?;
                if t.moved + t.tails_cut + t.holes_padded + t.claims_restored > 0 {
                    tracing::warn!(
                        lane = %l.path().display(),
                        moved_aside = t.moved,
                        tails_cut = t.tails_cut,
                        holes_padded = t.holes_padded,
                        claims_restored = t.claims_restored,
                        "local store recovered"
                    );
                }
                total.merge(t);
            }
        }
        // A name directory with no incarnation left goes too.
        let empty = std::fs::read_dir(q.path())
            .map(|d| d.flatten().all(|e| e.file_name() == "name"))
            .unwrap_or(false);
        if empty {
            let _ = std::fs::remove_dir_all(q.path());
        }
    }
    if let Some(id) = newest_aside {
        meta.next_id = meta.next_id.max(id + 1);
        super::topology::write_meta(root, &meta).map_err(|e| store_err("metadata write", e))?;
    }
    Ok(total)
}

/// True when the incarnation at `inc` has no lane directory: no message
/// was ever written to it (an unreadable directory counts as holding one).
fn holds_no_lane(inc: &Path) -> bool {
    std::fs::read_dir(inc).is_ok_and(|d| {
        !d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("lane-"))
    })
}

/// The first incarnation directory (`q/<name>/<16 hex digits>`) under `q`.
fn first_incarnation(q: &Path) -> Option<PathBuf> {
    std::fs::read_dir(q).ok()?.flatten().find_map(|name| {
        std::fs::read_dir(name.path())
            .ok()?
            .flatten()
            .find_map(|inc| {
                let n = inc.file_name();
                let n = n.to_string_lossy();
                (n.len() == 16 && n.bytes().all(|b| b.is_ascii_hexdigit())).then(|| inc.path())
            })
    })
}

/// Moves the incarnation at `inc`, which `meta.json` never named, to
/// `<root>/orphaned/<name dir>-<incarnation>` with a warning, and keeps the
/// highest incarnation number moved in `newest`.
fn set_aside(root: &Path, inc: &Path, newest: &mut Option<u64>) -> Result<(), Error> {
    let (Some(id), Some(name)) = (
        inc.file_name()
            .and_then(|n| u64::from_str_radix(&n.to_string_lossy(), 16).ok()),
        inc.parent().and_then(Path::file_name),
    ) else {
        return Ok(());
    };
    let aside = root.join("orphaned");
    std::fs::create_dir_all(&aside).map_err(|e| store_err("setting an orphaned queue aside", e))?;
    // The same name and number set aside before (an older meta.json put
    // back twice): the next free `.N`, never onto it (a rename onto a
    // directory with files fails, and the store would not open).
    let base = format!("{}-{id:016x}", name.to_string_lossy());
    let to = (1u32..)
        .map(|n| {
            aside.join(if n == 1 {
                base.clone()
            } else {
                format!("{base}.{n}")
            })
        })
        .find(|p| !p.exists())
        .expect("some name is free");
    std::fs::rename(inc, &to).map_err(|e| store_err("setting an orphaned queue aside", e))?;
    tracing::warn!(
        from = %inc.display(),
        to = %to.display(),
        "a queue's files meta.json never named (meta.json was replaced by an older copy?) \
         are kept aside; their messages are not delivered"
    );
    *newest = Some(newest.map_or(id, |n: u64| n.max(id)));
    Ok(())
}

/// Checks the format marker, creating it if the store is new. Only the
/// process holding the presence lock exclusively creates it, and atomically
/// (written under a temporary name, then renamed), so a process never reads
/// a marker half written.
fn check_marker(root: &Path, create: bool) -> Result<(), Error> {
    let marker = root.join("DASHI-LOCAL");
    match std::fs::read_to_string(&marker) {
        Ok(m) if m == MARKER => Ok(()),
        // Format 3 is format 4 with only layout-2 segments: it says format
        // 4 from now on (builds that read only layout 2 then refuse it).
        Ok(m) if m == MARKER_3 => write_marker(root),
        Ok(m) => Err(store_fail(
            FailureKind::Format,
            "format",
            format!(
                "{} holds a store of format {:?}; this build reads {:?} (open it with the build \
                 that wrote it, drain it, and start a new store)",
                root.display(),
                m.trim(),
                MARKER.trim()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && holds_a_store(root) => {
            Err(lost_marker(root))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => write_marker(root),
        Err(e) => Err(store_err(&format!("format marker {}", marker.display()), e)),
    }
}

/// Writes this build's format marker: under a temporary name, synced, then
/// renamed into place (two processes writing it at once write the same).
fn write_marker(root: &Path) -> Result<(), Error> {
    let marker = root.join("DASHI-LOCAL");
    let tmp = root.join(format!("DASHI-LOCAL.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        // Synced before it is renamed into place: a power loss must not
        // leave the name with its bytes unwritten (a store that no build
        // can open).
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, MARKER.as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &marker)?;
        std::fs::File::open(root)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        store_err(&format!("format marker {}", marker.display()), e)
    })
}

/// The error of a lane whose path holds the wrong kind of file.
fn wrong_file_type(e: &crate::lane::LaneError) -> bool {
    use std::io::ErrorKind::{AlreadyExists, IsADirectory, NotADirectory};
    matches!(e, crate::lane::LaneError::Io { source, .. }
        if matches!(source.kind(), NotADirectory | IsADirectory | AlreadyExists))
}

/// True when `root` holds a store's files: `meta.json` or a queue's.
fn holds_a_store(root: &Path) -> bool {
    root.join("meta.json").exists() || first_incarnation(&root.join("q")).is_some()
}

/// What a store's directory holds at its top (`FORMAT.md`, "Store"), and
/// the `lost+found` of a filesystem made for it.
fn store_entry(name: &str) -> bool {
    matches!(
        name,
        "DASHI-LOCAL"
            | "meta.json"
            | "meta.lock"
            | "open.lock"
            | "entry.lock"
            | "control"
            | "procs"
            | "q"
            | "orphaned"
            | "lost+found"
    ) || name.starts_with("DASHI-LOCAL.tmp-")
        || name.starts_with("meta.json.tmp-")
}

/// A directory with no format marker that holds anything a store does not
/// (a mistyped `local:///`, a home directory) is refused before anything is
/// written there: a new store needs a new or empty directory. Without the
/// check, `local:///` scattered a store's files over `/`.
fn refuse_foreign(root: &Path) -> Result<(), Error> {
    let marker = root.join("DASHI-LOCAL");
    // A store that lost its marker is refused for that, by name.
    if marker.try_exists().unwrap_or(true) || holds_a_store(root) {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        // Missing (made below) or unreadable (the steps below say why).
        return Ok(());
    };
    let mut foreign: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !store_entry(n))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    let n = foreign.len();
    foreign.truncate(3);
    Err(store_fail(
        FailureKind::Invalid,
        "new store",
        format!(
            "{} is not a dashi store and is not empty ({n} other entr{}: {}{}); a new \
             store needs a new or empty directory, and nothing was written",
            root.display(),
            if n == 1 { "y" } else { "ies" },
            foreign
                .iter()
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            if n > 3 { ", ..." } else { "" }
        ),
    ))
}

/// The marker is gone but the store is there (deleted by hand, a copy that
/// left it out). A new marker would say this build's format whatever
/// format the files are in: refused, and nothing is changed.
fn lost_marker(root: &Path) -> Error {
    store_fail(
        FailureKind::Format,
        "format",
        format!(
            "{} is missing but {} holds a store's files: nothing was changed; put the \
             marker back (if this build wrote the store: the line {:?} and a newline)",
            root.join("DASHI-LOCAL").display(),
            root.display(),
            MARKER.trim_end()
        ),
    )
}

/// Stores open in this process, by directory and options.
type OpenStores = Mutex<HashMap<(PathBuf, String), Weak<Inner>>>;

static OPEN: OnceLock<OpenStores> = OnceLock::new();

impl LocalTransport {
    /// The store at `root`, shared with every connection of this process that
    /// opened it with the same options (one set of mappings and wake-ups).
    pub fn open(root: &Path, opts: LocalOptions) -> Result<LocalTransport, Error> {
        // Whether to create is not part of what the store is.
        let key = (
            root.to_owned(),
            format!(
                "{:?}",
                LocalOptions {
                    create: true,
                    ..opts.clone()
                }
            ),
        );
        let mut open = OPEN.get_or_init(Default::default).lock();
        // Not one a process this one was forked from opened: that one
        // is the parent's (`forked.rs`).
        if let Some(inner) = open
            .get(&key)
            .and_then(Weak::upgrade)
            .filter(|i| i.cut.here())
        {
            return Ok(LocalTransport { inner });
        }
        let t = Self::open_new(root, opts)?;
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&t.inner));
        Ok(t)
    }

    fn open_new(root: &Path, opts: LocalOptions) -> Result<LocalTransport, Error> {
        if !opts.create {
            let marker = root.join("DASHI-LOCAL");
            match marker.try_exists() {
                Ok(true) => {}
                Ok(false) if holds_a_store(root) => return Err(lost_marker(root)),
                Ok(false) => {
                    // "publish creates one" is not so for a directory of
                    // other files: that is said instead.
                    refuse_foreign(root)?;
                    return Err(Error::Store(StoreFailure::new(
                        FailureKind::NoStore,
                        format!("no dashi store at {}", root.display()),
                        "publish creates one",
                    )));
                }
                Err(e) => return Err(store_err(&format!("format marker {}", marker.display()), e)),
            }
        }
        refuse_foreign(root)?;
        std::fs::create_dir_all(root.join("q"))
            .map_err(|e| store_err(&format!("directory {}", root.join("q").display()), e))?;
        // Presence: every process holds a shared lock on `open.lock` while it
        // has the store open. The first one in (nobody else holds it) gets it
        // exclusively and recovers the store before letting others in.
        //
        // Entering is one process at a time (`entry.lock`, exclusive, held
        // until this process holds `open.lock`): a process that found
        // `open.lock` taken used to wait for a shared lock and go on, and
        // when the first one in was killed during its recovery, the waiters
        // got in and used a store nobody had recovered (a lane whose shared
        // positions a power cut had set back stranded every message after
        // them). Under the entry lock, `open.lock` is held only by processes
        // that recovered the store or joined ones that had.
        let lock_path = |name: &str| {
            let what = if name == "entry.lock" {
                "entry lock"
            } else {
                "presence lock"
            };
            let path = root.join(name);
            move |e: std::io::Error| store_err(&format!("{what} {}", path.display()), e)
        };
        let open_lock = |name: &str| {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(root.join(name))
                .map_err(lock_path(name))
        };
        let entering =
            FileLock::exclusive(open_lock("entry.lock")?).map_err(lock_path("entry.lock"))?;
        let lock_file = open_lock("open.lock")?;
        let mut recovered = Totals::default();
        let alone = FileLock::try_exclusive(lock_file.try_clone().map_err(lock_path("open.lock"))?)
            .map_err(lock_path("open.lock"))?;
        let presence = match alone {
            Some(alone) => {
                // The other descriptor of the locked description goes now:
                // only the lock's own is let go of in a child forked from
                // here (`forked.rs`), and recovery can take long.
                drop(lock_file);
                check_marker(root, opts.create)?;
                crate::failpoint!("store::recovering");
                recovered = recover_store(root, opts.segment_size)?;
                crate::procs::sweep(root, 0);
                alone.downgrade().map_err(lock_path("open.lock"))?
            }
            None => {
                // Held shared by processes that entered before: nobody holds
                // it exclusively while this process holds the entry lock.
                let shared = FileLock::shared(lock_file).map_err(lock_path("open.lock"))?;
                // The process that had it exclusively made the marker.
                check_marker(root, false)?;
                shared
            }
        };
        drop(entering);
        let control = Arc::new(SharedPage::open(&root.join("control")).map_err(|e| {
            store_err(
                &format!("control page {}", root.join("control").display()),
                e,
            )
        })?);
        let reg = Registration::register(root, &control).map_err(|e| {
            store_err(
                &format!("process registration in {}", root.join("procs").display()),
                e,
            )
        })?;
        // One small runtime per store: fallocate of segments (and their
        // background preparation) and, with fsync, the fdatasyncs.
        let cores = match opts.fsync {
            Fsync::Never => 1,
            _ => std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(2),
        };
        let mut cfg = RuntimeConfig::default()
            .with_cores(cores)
            .with_shutdown_timeout(std::time::Duration::from_millis(500));
        cfg.simulate_unavailable = opts
            .simulate_no_io_uring
            .then_some(rustix::io::Errno::PERM.raw_os_error());
        let rt = Runtime::start(cfg).map(Arc::new).map_err(|e| e.to_string());
        let cut = Arc::new(crate::cut::CutFlag::new(root));
        let alloc = match &rt {
            Ok(rt) => Allocator::on_ring(rt.clone(), cut.clone()),
            Err(e) => {
                // fsync=never works without io_uring (fsync modes refuse below).
                if opts.fsync == Fsync::Never {
                    tracing::warn!(error = %e, "io_uring unavailable: local:// segments are allocated with fallocate(2) by the writer");
                }
                Allocator::direct()
            }
        };
        let durability = Durability::start(opts.fsync, rt, cut.clone())
            .map_err(|e| store_fail(FailureKind::Runtime, "durability", e))?;
        let stats = super::shared_stats::CounterFlush::new(control.clone(), cut.clone());
        if let Some(rt) = alloc.runtime() {
            stats.start(rt);
        }
        let inner = Arc::new(Inner {
            root: root.to_owned(),
            opts,
            control,
            topo: Mutex::new(Topo {
                generation: u64::MAX,
                topology: Topology::new(),
                queues: HashMap::new(),
            }),
            routing: ArcSwap::from_pointee(Routing::default()),
            loaded_gen: AtomicU64::new(u64::MAX),
            retry_unusable_at: AtomicU64::new(0),
            meta_seen: std::sync::atomic::AtomicBool::new(false),
            stats,
            reg,
            exclusive_owner: Mutex::new(HashMap::new()),
            watcher: OnceLock::new(),
            expiry: OnceLock::new(),
            arm: Arc::new(Arm::default()),
            durability,
            alloc,
            recovered,
            cut,
            _presence: presence,
        });
        // Read again if a queue is deleted under it.
        inner.load()?;
        Ok(LocalTransport { inner })
    }
}
