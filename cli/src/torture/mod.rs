//! `dashi torture`: producers and consumers under seeded faults, then an
//! audit. The run's queue is purged first (an earlier run's leftovers would
//! read as this run's duplicates). Workers say what happened as it happens (see [`worker`]); faults
//! land at seeded random times on seeded random targets; when the time is
//! up the producers stop, the consumers drain what is left, and then this
//! process drains the rest itself and checks:
//!
//! - `lost`: confirmed messages never delivered (must be 0);
//! - `unmarked_duplicates`: deliveries of a message beyond its first that
//!   did not say `redelivered` (must be 0);
//! - `corrupt`: bodies no producer wrote (must be 0);
//! - `phantom`: deliveries of messages no producer of this run published
//!   (must be 0);
//! - the queue is empty at the end, nothing ready and nothing unacked.
//!
//! The seed fixes the schedule of faults and every worker's choices; the
//! interleaving with the machine's timing does not repeat exactly, so a
//! failure's seed reproduces its schedule, not its every step.

pub(crate) mod lossyfs;
pub(crate) mod worker;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::args::TortureArgs;
use crate::bench::redis_peer::{command, reply};
use crate::connect::{connect, redact};
use crate::output::out;
use worker::{parse_body, Out, Rng, Role, Spec, WORKER_POINTS};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Fault {
    /// SIGKILL a worker process (memory://: a worker drops its connection
    /// where it stands) and start another in its place.
    Kill,
    /// `CLIENT KILL` every client of the Redis server.
    ClientKill,
    /// `CLIENT PAUSE <ms> WRITE`, past dashi's timeouts.
    Pause,
    /// `SCRIPT FLUSH`: the pop script must be loaded again.
    ScriptFlush,
    /// local://: every process killed at once and every write not covered
    /// by a completed `fdatasync` discarded (see [`lossyfs`]).
    PowerLoss,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::ClientKill => "client-kill",
            Fault::Pause => "pause",
            Fault::ScriptFlush => "script-flush",
            Fault::PowerLoss => "power-loss",
        }
    }

    fn parse_list(s: &str, scheme: &str) -> Result<Vec<Fault>, String> {
        let redis = scheme.starts_with("redis");
        let mut out = Vec::new();
        for f in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let fault = match f {
                "kill" => Fault::Kill,
                "client-kill" => Fault::ClientKill,
                "pause" => Fault::Pause,
                "script-flush" => Fault::ScriptFlush,
                "power-loss" => Fault::PowerLoss,
                other => {
                    return Err(format!(
                    "unknown fault {other:?} (kill, client-kill, pause, script-flush, power-loss)"
                ))
                }
            };
            if fault == Fault::PowerLoss {
                if scheme != "local" {
                    return Err("fault power-loss needs a local:// URL".into());
                }
            } else if fault != Fault::Kill && !redis {
                return Err(format!("fault {f} needs a redis:// URL"));
            }
            if !out.contains(&fault) {
                out.push(fault);
            }
        }
        if out.is_empty() {
            return Err("--faults names no fault".into());
        }
        Ok(out)
    }
}

/// A line from a worker.
struct Said {
    worker: usize,
    line: String,
}

/// A running worker.
enum Running {
    Process {
        child: Child,
        /// Orders to the worker (`arm <point>`).
        stdin: ChildStdin,
        stderr: Arc<Mutex<String>>,
        /// The thread passing its lines on: done once the process is gone
        /// and every line it wrote was passed.
        reader: std::thread::JoinHandle<()>,
    },
    Thread {
        killed: Arc<AtomicBool>,
        armed: Arc<Mutex<Option<String>>>,
        join: std::thread::JoinHandle<Result<(), String>>,
    },
}

struct Worker {
    role: Role,
    tag: String,
    running: Running,
}

/// A thread worker's out: lines go to the auditor; a flag kills it.
struct ThreadOut {
    worker: usize,
    tx: Sender<Said>,
    killed: Arc<AtomicBool>,
    armed: Arc<Mutex<Option<String>>>,
}

impl Out for ThreadOut {
    fn say(&self, line: &str) {
        let _ = self.tx.send(Said {
            worker: self.worker,
            line: line.to_owned(),
        });
    }

    fn killed(&self) -> bool {
        self.killed.load(Ordering::Relaxed)
    }

    fn at(&self, point: &str) -> bool {
        if worker::disarm_if(&self.armed, point) {
            self.say(&format!("failpoint {point} torture"));
            return true;
        }
        false
    }
}

/// A set of message numbers of one producer, one bit each (they are
/// dense: 1, 2, 3, ...), so that an audit of millions of messages stays a
/// few megabytes and the soak figures measure dashi, not the auditor.
#[derive(Debug, Default, Clone)]
struct Bits(Vec<u64>);

impl Bits {
    /// Sets bit `i`; true when it was set already.
    fn set(&mut self, i: u64) -> bool {
        let (w, b) = ((i / 64) as usize, i % 64);
        if self.0.len() <= w {
            self.0.resize(w + 1, 0);
        }
        let was = self.0[w] & (1 << b) != 0;
        self.0[w] |= 1 << b;
        was
    }

    fn get(&self, i: u64) -> bool {
        self.words((i / 64) as usize) & (1 << (i % 64)) != 0
    }

    fn words(&self, k: usize) -> u64 {
        self.0.get(k).copied().unwrap_or(0)
    }
}

/// What the auditor knows of one producer's messages.
#[derive(Debug, Default)]
struct Produced {
    confirmed: Bits,
    /// Delivered at least once.
    delivered: Bits,
    /// Delivered without `redelivered` since the last power cut.
    plain: Bits,
    /// Delivered without `redelivered` before a power cut, and not since.
    plain_before_cut: Bits,
    /// Delivered more than once.
    again: Bits,
}

/// What the auditor learned.
#[derive(Default)]
struct Audit {
    /// Producers started in this run, by tag.
    tags: HashMap<String, Produced>,
    deliveries: u64,
    /// Deliveries after a message's first that did not say `redelivered`.
    unmarked: u64,
    /// Deliveries without `redelivered` of a message delivered before a
    /// power cut and not since: consumer state is not synced, so an ack or
    /// a delivery's mark may not survive the cut (RELIABILITY.md).
    after_power_loss: u64,
    redeliveries: u64,
    /// Deliveries of messages no producer of this run published.
    phantom: u64,
    corrupt: Vec<String>,
    /// Publishes a full store refused (not stored).
    refused: u64,
    transient_errors: u64,
    worker_errors: Vec<String>,
    /// Deliveries that went back to the queue (requeued, or restored when
    /// their lease ran out before the ack): each message must come again.
    owed: Vec<(String, u64)>,
    /// Leases a consumer let run out on purpose.
    leases_run_out: u64,
    /// Rounds of declare, publish, get, delete the churn workers finished.
    churn_rounds: u64,
}

impl Audit {
    fn take(&mut self, line: &str) {
        let mut parts = line.split(' ');
        match parts.next() {
            Some("c") => {
                let Some(tag) = parts.next() else { return };
                let Some(p) = self.tags.get_mut(tag) else {
                    self.corrupt
                        .push(format!("a confirm from an unknown producer: {line:?}"));
                    return;
                };
                for i in parts.filter_map(|i| i.parse().ok()) {
                    p.confirmed.set(i);
                }
            }
            Some("d") => {
                let (Some(tag), Some(Ok(i)), Some(r)) =
                    (parts.next(), parts.next().map(str::parse), parts.next())
                else {
                    self.corrupt.push(format!("a delivery line {line:?}"));
                    return;
                };
                self.delivery(tag, i, r == "1");
            }
            Some("o") => match (parts.next(), parts.next().map(str::parse)) {
                (Some(tag), Some(Ok(i))) => self.owed.push((tag.to_owned(), i)),
                _ => self.corrupt.push(format!("an owed line {line:?}")),
            },
            Some("l") => self.leases_run_out += 1,
            Some("k") => self.churn_rounds += 1,
            Some("x") => self.corrupt.push(line[2.min(line.len())..].to_owned()),
            Some("e") => self.transient_errors += 1,
            Some("r") => self.refused += 1,
            _ => self.corrupt.push(format!("a worker said {line:?}")),
        }
    }

    fn delivery(&mut self, tag: &str, i: u64, redelivered: bool) {
        self.deliveries += 1;
        let Some(p) = self.tags.get_mut(tag) else {
            self.phantom += 1;
            return;
        };
        if p.delivered.set(i) {
            p.again.set(i);
        }
        if redelivered {
            self.redeliveries += 1;
        } else if p.plain.set(i) {
            self.unmarked += 1;
        } else if p.plain_before_cut.get(i) {
            self.after_power_loss += 1;
        }
    }

    /// A power cut: plain deliveries so far were before it.
    fn cut(&mut self) {
        for p in self.tags.values_mut() {
            let plain = std::mem::take(&mut p.plain);
            let before = &mut p.plain_before_cut.0;
            if before.len() < plain.0.len() {
                before.resize(plain.0.len(), 0);
            }
            for (b, w) in before.iter_mut().zip(plain.0) {
                *b |= w;
            }
        }
    }

    /// Confirmed and never delivered, sorted.
    fn lost(&self) -> Vec<(String, u64)> {
        let mut v = Vec::new();
        for (tag, p) in &self.tags {
            for k in 0..p.confirmed.0.len() {
                let mut missing = p.confirmed.words(k) & !p.delivered.words(k);
                while missing != 0 {
                    let b = u64::from(missing.trailing_zeros());
                    v.push((tag.clone(), k as u64 * 64 + b));
                    missing &= missing - 1;
                }
            }
        }
        v.sort();
        v
    }

    /// Owed deliveries (see [`Audit::owed`]) of confirmed messages that
    /// never came again. (A message can be delivered before its confirm; a
    /// power cut may then take it, as it may any unconfirmed message.)
    fn unpaid(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self
            .owed
            .iter()
            .filter(|(tag, i)| {
                self.tags
                    .get(tag)
                    .is_some_and(|p| p.confirmed.get(*i) && !p.again.get(*i))
            })
            .cloned()
            .collect();
        v.sort();
        v.dedup();
        v
    }

    fn confirmed(&self) -> u64 {
        let ones = |b: &Bits| b.0.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
        self.tags.values().map(|p| ones(&p.confirmed)).sum()
    }

    /// Messages confirmed or delivered (or both).
    fn messages(&self) -> u64 {
        self.tags
            .values()
            .map(|p| {
                let n = p.confirmed.0.len().max(p.delivered.0.len());
                (0..n)
                    .map(|k| u64::from((p.confirmed.words(k) | p.delivered.words(k)).count_ones()))
                    .sum::<u64>()
            })
            .sum::<u64>()
            + self.phantom
    }
}

/// The Redis server behind a redis:// URL, for the faults: one plain
/// connection of this process's own.
struct RedisControl {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RedisControl {
    fn open(url: &str) -> Result<Self, String> {
        let first = dashi::spi::split_failover(url).map_err(|e| e.to_string())?[0];
        let u = dashi::spi::ConnectUrl::parse(first).map_err(|e| e.to_string())?;
        if u.scheme != "redis" {
            return Err("redis faults need a redis://host:port URL".into());
        }
        let addr = format!("{}:{}", u.host, u.port.unwrap_or(6379));
        let stream = TcpStream::connect(&addr)
            .map_err(|e| format!("redis faults: connecting to {addr}: {e}"))?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut c = RedisControl { stream, reader };
        if let Some(p) = &u.password {
            match &u.user {
                Some(user) => c.call(&["AUTH", user, p])?,
                None => c.call(&["AUTH", p])?,
            }
        }
        c.call(&["CLIENT", "SETNAME", "dashi-torture-faults"])?;
        Ok(c)
    }

    fn call(&mut self, args: &[&str]) -> Result<(), String> {
        let mut buf = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        command(&mut buf, &args);
        self.stream.write_all(&buf).map_err(|e| e.to_string())?;
        reply(&mut self.reader).map(drop)
    }

    fn inject(&mut self, f: Fault, rng: &Rng) -> Result<(), String> {
        match f {
            Fault::ClientKill => {
                self.call(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])?;
                self.call(&["CLIENT", "KILL", "TYPE", "pubsub", "SKIPME", "yes"])
            }
            Fault::Pause => {
                let ms = (200 + rng.below(1300)).to_string();
                self.call(&["CLIENT", "PAUSE", &ms, "WRITE"])
            }
            Fault::ScriptFlush => self.call(&["SCRIPT", "FLUSH"]),
            Fault::Kill | Fault::PowerLoss => unreachable!("not sent to Redis"),
        }
    }
}

/// The power-loss filesystem under a local:// store: a `dashi torture-fs`
/// process serves the store's directory over `<dir>.disk`, and a cut ends
/// it (see [`lossyfs`]).
struct Power {
    mount: PathBuf,
    backing: PathBuf,
    keep: f64,
    seed: u64,
    cuts: u64,
    fs: Option<(Child, ChildStdin, Arc<Mutex<String>>)>,
}

/// Whether `path` is a mount of the power-loss filesystem (left by a run
/// that was killed, say).
fn lossy_mount(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines().any(|l| {
        let mut f = l.split(' ');
        let at = f.nth(4);
        // After the separator: type, source, options.
        let mut tail = l.split(" - ").nth(1).unwrap_or("").split(' ');
        let (fstype, source) = (tail.next().unwrap_or(""), tail.next());
        at == Some(want.as_str()) && fstype.starts_with("fuse") && source == Some("dashi-lossy")
    })
}

impl Power {
    fn new(url: &str, keep: f64, seed: u64) -> Result<Power, String> {
        let u = dashi::spi::ConnectUrl::parse(url).map_err(|e| e.to_string())?;
        if !u.host.is_empty() || !u.path.starts_with('/') {
            return Err("power-loss needs local:///absolute/dir".into());
        }
        let mount = PathBuf::from(u.path.trim_end_matches('/'));
        let mut backing = mount.clone().into_os_string();
        backing.push(".disk");
        let p = Power {
            backing: PathBuf::from(backing),
            mount,
            keep,
            seed,
            cuts: 0,
            fs: None,
        };
        if lossy_mount(&p.mount) {
            p.unmount()?;
        }
        if std::fs::read_dir(&p.mount).is_ok_and(|mut d| d.next().is_some()) {
            return Err(format!(
                "power-loss mounts its filesystem on {}, which must be empty or absent (the store is kept in {})",
                p.mount.display(),
                p.backing.display()
            ));
        }
        Ok(p)
    }

    fn unmount(&self) -> Result<(), String> {
        rustix::mount::unmount(&self.mount, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| format!("unmounting {}: {e}", self.mount.display()))
    }

    /// Mounts the filesystem over what survived.
    fn start(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding dashi: {e}"))?;
        let seed = self.seed ^ (self.cuts + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut child = Command::new(exe)
            .arg("torture-fs")
            .arg("--backing")
            .arg(&self.backing)
            .arg("--mount")
            .arg(&self.mount)
            .args([
                "--keep",
                &self.keep.to_string(),
                "--seed",
                &seed.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the power-loss filesystem: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let mut out = BufReader::new(child.stdout.take().expect("piped"));
        let mut err_pipe = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let keep = stderr.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            if let Ok(mut k) = keep.lock() {
                *k = s;
            }
        });
        let mut line = String::new();
        let _ = out.read_line(&mut line);
        if line.trim() != "ready" {
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(50));
            let why = stderr
                .lock()
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            return Err(why
                .strip_prefix("dashi: ")
                .map(str::to_owned)
                .unwrap_or_else(|| format!("the power-loss filesystem did not start: {why}")));
        }
        self.fs = Some((child, stdin, stderr));
        Ok(())
    }

    /// Cuts the power: the filesystem writes its share of what was not
    /// synced and exits; the dead mount is detached.
    fn cut(&mut self) -> Result<(), String> {
        let Some((mut child, mut stdin, stderr)) = self.fs.take() else {
            return Ok(());
        };
        let _ = stdin.write_all(b"cut\n");
        drop(stdin);
        let status = child.wait().map_err(|e| e.to_string())?;
        self.cuts += 1;
        self.unmount()?;
        if !status.success() {
            std::thread::sleep(Duration::from_millis(50));
            let why = stderr
                .lock()
                .map(|s| s.trim().to_owned())
                .unwrap_or_default();
            return Err(format!(
                "the power-loss filesystem failed ({status}): {why}"
            ));
        }
        Ok(())
    }
}

impl Drop for Power {
    fn drop(&mut self) {
        let _ = self.cut();
    }
}

struct Torture {
    a: TortureArgs,
    seed: u64,
    threads: bool,
    tx: Sender<Said>,
    workers: Vec<Option<Worker>>,
    next_tag: u64,
    audit: Audit,
    /// The named points `--kill-points` aims kills at.
    points: Vec<&'static str>,
    /// Per point: kills aimed at it, and how many found the worker there.
    aimed: HashMap<&'static str, (u64, u64)>,
    /// Workers that said they stopped at the point they were armed for.
    stopped: Vec<usize>,
}

/// Makes the process `cmd` starts die with this one: the parent-death
/// signal is set in the forked child before it runs the program, so no
/// moment of the worker's start escapes it. (Set by the worker itself, a
/// worker stopped while the loader ran, before its `main`, outlived a
/// torture process killed meanwhile, stopped for good.)
fn die_with_this_process(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpid, getppid, set_parent_process_death_signal, Signal};
        use std::os::unix::process::CommandExt;
        let parent = getpid();
        // SAFETY: the closure runs in the forked child before `exec`. It
        // makes two system calls (`prctl`, `getppid`), both
        // async-signal-safe, reads only `parent` (a copied integer), and
        // builds its error from an errno without allocating.
        unsafe {
            cmd.pre_exec(move || {
                set_parent_process_death_signal(Some(Signal::KILL))?;
                // This process went before the signal was set.
                if getppid() != Some(parent) {
                    return Err(rustix::io::Errno::SRCH.into());
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

impl Torture {
    fn spawn(&mut self, role: Role) -> Result<(), String> {
        let id = self.workers.len();
        let n = self.next_tag;
        self.next_tag += 1;
        let tag = match role {
            Role::Produce => format!("p{n}"),
            Role::Churn => format!("k{n}"),
            _ => format!("c{n}"),
        };
        if role == Role::Produce {
            self.audit.tags.insert(tag.clone(), Produced::default());
        }
        let spec = Spec {
            url: self.a.url.clone(),
            role,
            tag: tag.clone(),
            seed: self.seed ^ n.wrapping_mul(0x2545_f491_4f6c_dd1d),
            queue: self.a.queue.clone(),
            size: self.a.size as usize,
            pipeline: self.a.pipeline as usize,
        };
        let running = if self.threads {
            let killed = Arc::new(AtomicBool::new(false));
            let armed = Arc::new(Mutex::new(None));
            let out = Arc::new(ThreadOut {
                worker: id,
                tx: self.tx.clone(),
                killed: killed.clone(),
                armed: armed.clone(),
            });
            let join = std::thread::Builder::new()
                .name(format!("torture-{tag}"))
                .spawn(move || worker::run(&spec, out))
                .map_err(|e| format!("starting a worker thread: {e}"))?;
            Running::Thread {
                killed,
                armed,
                join,
            }
        } else {
            let exe = std::env::current_exe().map_err(|e| format!("finding dashi: {e}"))?;
            let mut cmd = Command::new(exe);
            die_with_this_process(&mut cmd);
            let mut child = cmd
                .arg("torture-child")
                .arg(&spec.url)
                .args(["--role", role.name(), "--tag", &tag])
                .args(["--seed", &spec.seed.to_string()])
                .args(["--queue", &spec.queue])
                .args(["--size", &self.a.size.to_string()])
                .args(["--pipeline", &self.a.pipeline.to_string()])
                .args(["--parent", &std::process::id().to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting a worker process: {e}"))?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let mut err_pipe = child.stderr.take().expect("piped");
            let tx = self.tx.clone();
            let reader = std::thread::spawn(move || {
                // A line cut by a kill has no newline: dropped.
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    if line.ends_with('\n') {
                        line.pop();
                        let said = Said {
                            worker: id,
                            line: std::mem::take(&mut line),
                        };
                        if tx.send(said).is_err() {
                            return;
                        }
                    }
                    line.clear();
                }
            });
            let stderr = Arc::new(Mutex::new(String::new()));
            let keep = stderr.clone();
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = err_pipe.read_to_string(&mut s);
                if let Ok(mut k) = keep.lock() {
                    *k = s;
                }
            });
            Running::Process {
                child,
                stdin,
                stderr,
                reader,
            }
        };
        self.workers.push(Some(Worker { role, tag, running }));
        Ok(())
    }

    /// Kills worker `k` where it stands; false if it was already gone.
    fn kill(&mut self, k: usize) -> bool {
        self.kill_many(&[k]) == 1
    }

    /// Kills workers `ks` at once (every signal sent before any wait), and
    /// waits until each is gone and every line it wrote was passed on.
    /// Returns how many were running.
    fn kill_many(&mut self, ks: &[usize]) -> usize {
        let mut gone = Vec::new();
        for &k in ks {
            let Some(mut w) = self.workers[k].take() else {
                continue;
            };
            match &mut w.running {
                Running::Process { child, .. } => {
                    // Exited by itself before the kill: a worker error.
                    if let Ok(Some(status)) = child.try_wait() {
                        self.audit.worker_errors.push(format!(
                            "{} {} exited ({status})",
                            w.role.name(),
                            w.tag
                        ));
                    }
                    let _ = child.kill();
                }
                Running::Thread { killed, .. } => killed.store(true, Ordering::Relaxed),
            }
            gone.push(w);
        }
        let n = gone.len();
        for w in gone {
            match w.running {
                Running::Process {
                    mut child, reader, ..
                } => {
                    let _ = child.wait();
                    let _ = reader.join();
                }
                Running::Thread { join, .. } => match join.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        self.audit
                            .worker_errors
                            .push(format!("{} {}: {e}", w.role.name(), w.tag))
                    }
                    Err(_) => self.audit.worker_errors.push(format!(
                        "{} {} panicked",
                        w.role.name(),
                        w.tag
                    )),
                },
            }
        }
        n
    }

    /// A power cut: every worker killed at once, every write the disk had
    /// not synced discarded, the filesystem mounted again over what
    /// survived, and as many workers of each role started as before.
    fn power_cut(&mut self, rx: &Receiver<Said>, power: &mut Power) -> Result<(), String> {
        let live = self.live(|_| true);
        let roles: Vec<Role> = live
            .iter()
            .map(|&k| self.workers[k].as_ref().expect("live").role)
            .collect();
        self.kill_many(&live);
        power.cut()?;
        // Every line of the dead is in; what they delivered came before
        // the cut.
        while let Ok(s) = rx.try_recv() {
            self.heard(s);
        }
        self.audit.cut();
        power.start()?;
        for role in roles {
            self.spawn(role)?;
        }
        Ok(())
    }

    /// Workers that stopped by themselves (an error): recorded, replaced.
    fn reap(&mut self) -> Result<(), String> {
        for k in 0..self.workers.len() {
            let ended = match &mut self.workers[k] {
                Some(Worker {
                    running: Running::Process { child, .. },
                    ..
                }) => matches!(child.try_wait(), Ok(Some(_))),
                Some(Worker {
                    running: Running::Thread { join, .. },
                    ..
                }) => join.is_finished(),
                None => false,
            };
            if ended {
                let w = self.workers[k].take().expect("checked");
                let why = match w.running {
                    Running::Process {
                        mut child, stderr, ..
                    } => {
                        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                        // Give the stderr reader a moment to finish.
                        std::thread::sleep(Duration::from_millis(50));
                        let text = stderr
                            .lock()
                            .map(|s| s.trim().to_owned())
                            .unwrap_or_default();
                        format!("exited ({status}): {text}")
                    }
                    Running::Thread { join, .. } => match join.join() {
                        Ok(Ok(())) => "stopped".into(),
                        Ok(Err(e)) => e,
                        Err(_) => "panicked".into(),
                    },
                };
                self.audit
                    .worker_errors
                    .push(format!("{} {} {why}", w.role.name(), w.tag));
                self.spawn(w.role)?;
            }
        }
        Ok(())
    }

    fn live(&self, role: impl Fn(Role) -> bool) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&k| self.workers[k].as_ref().is_some_and(|w| role(w.role)))
            .collect()
    }

    /// One line from a worker: a stop at an armed point, or news for the
    /// auditor.
    fn heard(&mut self, s: Said) {
        if s.line.starts_with("failpoint ") {
            self.stopped.push(s.worker);
        } else {
            self.audit.take(&s.line);
        }
    }

    /// A kill aimed at a named point: a live worker that reaches it is
    /// armed for it, and killed once it says it stopped there (or after two
    /// seconds if it never gets there: a plain kill then). Another worker
    /// of the same role takes its place.
    fn aimed_kill(&mut self, rx: &Receiver<Said>, rng: &Rng) -> Result<(), String> {
        let point = self.points[rng.below(self.points.len() as u64) as usize];
        let roles: &[Role] = WORKER_POINTS
            .iter()
            .find(|(p, _)| *p == point)
            .map_or(store_point_roles(point), |(_, r)| r);
        let live = self.live(|r| roles.contains(&r));
        if live.is_empty() {
            return Ok(());
        }
        let k = live[rng.below(live.len() as u64) as usize];
        let w = self.workers[k].as_mut().expect("live");
        let role = w.role;
        match &mut w.running {
            Running::Process { stdin, .. } => {
                // A worker that died meanwhile: reaped below.
                let _ = stdin.write_all(format!("arm {point}\n").as_bytes());
            }
            Running::Thread { armed, .. } => {
                *armed.lock().unwrap_or_else(|e| e.into_inner()) = Some(point.to_owned());
            }
        }
        self.stopped.clear();
        let until = Instant::now() + Duration::from_secs(2);
        while !self.stopped.contains(&k) {
            let now = Instant::now();
            if now >= until {
                break;
            }
            match rx.recv_timeout(until - now) {
                Ok(s) => self.heard(s),
                Err(_) => break,
            }
        }
        let entry = self.aimed.entry(point).or_default();
        entry.0 += 1;
        if self.stopped.contains(&k) {
            entry.1 += 1;
        }
        if self.kill(k) {
            self.spawn(role)?;
        }
        Ok(())
    }

    /// Reads what the workers said until `until`.
    fn listen(&mut self, rx: &Receiver<Said>, until: Instant) {
        loop {
            let now = Instant::now();
            if now >= until {
                return;
            }
            match rx.recv_timeout(until - now) {
                Ok(s) => self.heard(s),
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    return;
                }
            }
        }
    }
}

pub(crate) fn run(a: TortureArgs) -> Result<(), String> {
    let scheme = a
        .url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let faults = Fault::parse_list(&a.faults, &scheme)?;
    let points = kill_points(&a.kill_points, &a.url)?;
    if !points.is_empty() && !faults.contains(&Fault::Kill) {
        return Err("--kill-points aims the kill fault: add kill to --faults".into());
    }
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut power = if faults.contains(&Fault::PowerLoss) {
        let mut p = Power::new(&a.url, a.power_loss_keep, seed)?;
        p.start()?;
        Some(p)
    } else {
        None
    };
    // This process's own connection: it declares the queue, keeps a
    // memory:// instance alive, and drains at the end. Under power cuts it
    // is closed during the run (every process goes at a cut).
    let mut held = Some(open_queue(&a.url, &a.queue)?);
    // What an earlier run left (one killed mid-run, say) is not this run's:
    // its message numbers would read as this run's duplicates.
    if let Some((_, ch)) = &held {
        ch.queue_purge(&a.queue)
            .map_err(|e| format!("purging {} before the run: {e}", a.queue))?;
    }
    if power.is_some() {
        held = None;
    }
    let mut control = if faults
        .iter()
        .any(|f| !matches!(f, Fault::Kill | Fault::PowerLoss))
    {
        Some(RedisControl::open(&a.url)?)
    } else {
        None
    };
    let (tx, rx) = mpsc::channel();
    let rng = Rng::new(seed);
    let started = Instant::now();
    // A run past its own bounds says its seed, so one that never reports
    // (killed by whoever waited for it) can still be repeated; a run that
    // ends says it in its report (an error stays one line).
    let overdue = Duration::from_secs(a.seconds.saturating_add(a.drain_seconds) + 20);
    std::thread::spawn(move || {
        std::thread::sleep(overdue);
        eprintln!(
            "dashi torture: seed {seed}: still running {}s after it started (past --seconds and --drain-seconds)",
            overdue.as_secs()
        );
    });
    let mut t = Torture {
        threads: scheme == "memory",
        a,
        seed,
        tx,
        workers: Vec::new(),
        next_tag: 0,
        audit: Audit::default(),
        points,
        aimed: HashMap::new(),
        stopped: Vec::new(),
    };
    for _ in 0..t.a.producers {
        t.spawn(Role::Produce)?;
    }
    for k in 0..t.a.consumers {
        t.spawn(if k % 2 == 0 { Role::Consume } else { Role::Get })?;
    }
    for _ in 0..t.a.churn {
        t.spawn(Role::Churn)?;
    }
    let mut counts: HashMap<Fault, u64> = HashMap::new();
    let end = started + Duration::from_secs(t.a.seconds);
    let mut samples = vec![Sample::now(started, &t)];
    let mean = t.a.fault_interval_ms;
    loop {
        let gap = Duration::from_millis(mean / 2 + rng.below(mean.max(1)));
        let at = (Instant::now() + gap).min(end);
        t.listen(&rx, at);
        t.reap()?;
        if samples
            .last()
            .is_some_and(|l| l.at.elapsed() >= Duration::from_secs(1))
        {
            samples.push(Sample::now(started, &t));
        }
        if Instant::now() >= end {
            break;
        }
        let f = faults[rng.below(faults.len() as u64) as usize];
        match f {
            Fault::PowerLoss => t.power_cut(&rx, power.as_mut().expect("mounted"))?,
            Fault::Kill if !t.points.is_empty() && rng.below(2) == 0 => {
                t.aimed_kill(&rx, &rng)?;
            }
            Fault::Kill => {
                let live = t.live(|_| true);
                let k = live[rng.below(live.len() as u64) as usize];
                let role = t.workers[k].as_ref().expect("live").role;
                if t.kill(k) {
                    t.spawn(role)?;
                }
            }
            other => control
                .as_mut()
                .expect("opened for redis faults")
                .inject(other, &rng)?,
        }
        *counts.entry(f).or_default() += 1;
    }
    samples.push(Sample::now(started, &t));
    // The producers and churn workers stop; the consumers drain what they
    // can.
    for k in t.live(|r| matches!(r, Role::Produce | Role::Churn)) {
        t.kill(k);
    }
    let drain_end = Instant::now() + Duration::from_secs(t.a.drain_seconds);
    while Instant::now() < drain_end && !(t.audit.lost().is_empty() && t.audit.unpaid().is_empty())
    {
        let until = (Instant::now() + Duration::from_millis(200)).min(drain_end);
        t.listen(&rx, until);
        t.reap()?;
    }
    // Under power cuts, the cut before the final drain recovers the store,
    // and what live consumers could not reach comes then: a confirmed
    // message (or an owed redelivery) still missing after the live drain
    // was stranded, and fails the run. (Every wait a live consumer may meet,
    // a dead writer's reservation or a lease, is shorter than the drain.)
    let missing_before_cut = if power.is_some() {
        (t.audit.lost().len() + t.audit.unpaid().len()) as u64
    } else {
        0
    };
    for k in t.live(|_| true) {
        t.kill(k);
    }
    // Whatever the workers said last.
    t.listen(&rx, Instant::now() + Duration::from_millis(200));
    // Under power cuts the drain below starts from one more.
    if let Some(p) = power.as_mut() {
        t.power_cut(&rx, p)?;
        *counts.entry(Fault::PowerLoss).or_default() += 1;
    }
    let (conn, ch) = match held {
        Some(h) => h,
        None => open_queue(&t.a.url, &t.a.queue)?,
    };
    // Then this process takes the rest (a dead consumer's deliveries come
    // back to it), until the queue is empty and nothing is unacked.
    let stats = conn.stats();
    let mut empty = false;
    // The queue's figures at the last look (said when it does not drain).
    let mut left = None;
    // Since when nothing was left to take, nothing lost or owed, and the
    // figures read the same: past a lane's longest block (a dead writer's
    // reservation, padded after 10 s), only the figures are wrong.
    let mut still: Option<(Instant, Option<(u64, u64)>)> = None;
    while Instant::now() < drain_end + Duration::from_secs(5) {
        match ch.get(&t.a.queue, Duration::from_millis(200)) {
            Ok(Some(d)) => {
                still = None;
                match parse_body(d.body()) {
                    Ok((tag, i)) => t.audit.delivery(tag, i, d.redelivered()),
                    Err(e) => t.audit.corrupt.push(e),
                }
                d.ack().map_err(|e| format!("final drain: ack: {e}"))?;
            }
            Ok(None) => {
                let q = stats.queue(&t.a.queue).ok();
                left = q.as_ref().map(|q| (q.messages, q.unacked));
                if q.as_ref()
                    .is_some_and(|q| q.messages == 0 && q.unacked == 0)
                    && t.audit.lost().is_empty()
                    && t.audit.unpaid().is_empty()
                {
                    empty = true;
                    break;
                }
                if t.audit.lost().is_empty() && t.audit.unpaid().is_empty() {
                    match still {
                        Some((since, seen)) if seen == left => {
                            if since.elapsed() >= Duration::from_secs(12) {
                                break;
                            }
                        }
                        _ => still = Some((Instant::now(), left)),
                    }
                } else {
                    still = None;
                }
            }
            Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("final drain: {e}")),
        }
    }
    // local:// moves each figure right after the claim or settle it counts:
    // a kill between the two leaves a figure one off until the store is
    // recovered (RELIABILITY.md, known gaps). When only the figures stand
    // in the way (every confirmed message delivered, nothing owed, nothing
    // left to take), the store is opened alone, which recounts them from
    // the segments. A message found only then was out of every consumer's
    // reach (stranded): that fails the run.
    let mut figures_off = None;
    let mut found_after_recovery = 0u64;
    let (_conn, ch) = if !empty
        && scheme == "local"
        && t.audit.lost().is_empty()
        && t.audit.unpaid().is_empty()
    {
        figures_off = left;
        drop(stats);
        drop(ch);
        drop(conn);
        // The store closes once its background work lets go of it (within
        // moments): until then an open here joins it and recovers nothing,
        // and the figures read as before.
        let mut tries = 0;
        let (conn, ch, stats) = loop {
            std::thread::sleep(Duration::from_millis(100));
            let (conn, ch) = open_queue(&t.a.url, &t.a.queue)?;
            let stats = conn.stats();
            let now = stats
                .queue(&t.a.queue)
                .ok()
                .map(|q| (q.messages, q.unacked));
            tries += 1;
            if now != left || tries >= 50 {
                break (conn, ch, stats);
            }
        };
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            match ch.get(&t.a.queue, Duration::from_millis(100)) {
                Ok(Some(d)) => {
                    found_after_recovery += 1;
                    match parse_body(d.body()) {
                        Ok((tag, i)) => t.audit.delivery(tag, i, d.redelivered()),
                        Err(e) => t.audit.corrupt.push(e),
                    }
                    d.ack()
                        .map_err(|e| format!("drain after recovery: ack: {e}"))?;
                }
                Ok(None) => {
                    let q = stats.queue(&t.a.queue).ok();
                    left = q.as_ref().map(|q| (q.messages, q.unacked));
                    if left == Some((0, 0)) {
                        empty = true;
                        break;
                    }
                }
                Err(e) if e.is_transient() => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("drain after recovery: {e}")),
            }
        }
        (conn, ch)
    } else {
        (conn, ch)
    };
    // The churn queues go (a queue another run or a killed worker deleted
    // first is not there: fine).
    if t.a.churn > 0 {
        for k in 0..worker::CHURN_QUEUES {
            let _ = ch.queue_delete(&format!("{}-churn-{k}", t.a.queue), false, false);
        }
    }
    let recovery = Recovery {
        figures_off,
        found: found_after_recovery,
        missing_before_cut,
    };
    report(
        &t,
        &counts,
        &samples,
        started.elapsed(),
        empty,
        left,
        &recovery,
    )
}

/// What opening a local:// store alone at the end changed, when only its
/// figures kept the queue from reading empty.
struct Recovery {
    /// The queue's figures (ready, unacked) before the store was recovered.
    figures_off: Option<(u64, u64)>,
    /// Messages delivered only after it was: stranded before.
    found: u64,
    /// Under power cuts: confirmed messages and owed redeliveries live
    /// consumers had not had when the drain before the last cut ended
    /// (stranded until that cut's recovery).
    missing_before_cut: u64,
}

/// The workers a local:// stop point is reached by: consumers for a claim
/// (`lane::claimed`), producers for the rest (appends, rotations, syncs).
fn store_point_roles(point: &str) -> &'static [Role] {
    if point == "lane::claimed" || point == "lane::settled_uncounted" {
        &[Role::Consume, Role::Get]
    } else {
        &[Role::Produce]
    }
}

/// The points `--kill-points` names: the workers' own (any transport) and,
/// on local://, the log protocol's stop points (a build with the
/// `failpoints` feature); `all` is every one this run can reach.
fn kill_points(list: &str, url: &str) -> Result<Vec<&'static str>, String> {
    let scheme = url
        .split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default();
    let store = scheme == "local";
    // No sync ever runs with fsync=never (the default).
    let syncs = url.contains("fsync=") && !url.contains("fsync=never");
    let mut out: Vec<&'static str> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if name == "all" {
            out.extend(WORKER_POINTS.iter().map(|(p, _)| *p));
            if store && dashi::local::HAS_STOP_POINTS {
                out.extend(
                    dashi::local::STOP_POINTS
                        .iter()
                        .filter(|p| syncs || **p != "durability::sync"),
                );
            }
        } else if let Some((p, _)) = WORKER_POINTS.iter().find(|(p, _)| *p == name) {
            out.push(p);
        } else if let Some(p) = dashi::local::STOP_POINTS.iter().find(|p| **p == name) {
            if !dashi::local::HAS_STOP_POINTS {
                // The same one line the worker would give.
                return Err(dashi::local::stop_at(p, "torture")
                    .expect_err("a build without the failpoints feature refuses"));
            }
            if !store {
                return Err(format!(
                    "kill point {p} is inside local://: it needs a local:// URL"
                ));
            }
            out.push(p);
        } else {
            let mut known: Vec<&str> = WORKER_POINTS.iter().map(|(p, _)| *p).collect();
            known.extend(dashi::local::STOP_POINTS);
            return Err(format!(
                "unknown kill point {name:?} (all, {})",
                known.join(", ")
            ));
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// A connection and a channel with the torture queue declared.
fn open_queue(url: &str, queue: &str) -> Result<(dashi::Connection, dashi::Channel), String> {
    let conn = connect(url)?;
    let ch = conn.channel().map_err(|e| e.to_string())?;
    ch.queue_declare(&dashi::Queue::new(queue).with_max_priority(2))
        .map_err(|e| format!("declaring {queue}: {e}"))?;
    Ok((conn, ch))
}

fn report(
    t: &Torture,
    counts: &HashMap<Fault, u64>,
    samples: &[Sample],
    took: Duration,
    empty: bool,
    left: Option<(u64, u64)>,
    recovery: &Recovery,
) -> Result<(), String> {
    let au = &t.audit;
    let lost = au.lost();
    let faults: u64 = counts.values().sum();
    let mut by_kind: Vec<(&str, u64)> = counts.iter().map(|(f, n)| (f.name(), *n)).collect();
    by_kind.sort();
    let deliveries = au.deliveries;
    let messages = au.messages();
    let confirmed = au.confirmed();
    let unmarked = au.unmarked;
    let soak = Soak::of(samples);
    let phantom = au.phantom;
    let url = redact(&t.a.url);
    let keep = if t.a.faults.contains("power-loss") {
        format!(" --power-loss-keep {}", t.a.power_loss_keep)
    } else {
        String::new()
    };
    let mut extra = String::new();
    if t.a.churn > 0 {
        extra.push_str(&format!(" --churn {}", t.a.churn));
    }
    if !t.a.kill_points.is_empty() {
        extra.push_str(&format!(" --kill-points {}", t.a.kill_points));
    }
    let command = format!(
        "dashi torture '{url}' --seed {} --seconds {} --producers {} --consumers {} --faults {} --fault-interval-ms {} --size {} --pipeline {}{keep}{extra}",
        t.seed,
        t.a.seconds,
        t.a.producers,
        t.a.consumers,
        t.a.faults,
        t.a.fault_interval_ms,
        t.a.size,
        t.a.pipeline
    );
    let unpaid = au.unpaid();
    let mut points: Vec<(&str, (u64, u64))> = t.aimed.iter().map(|(p, n)| (*p, *n)).collect();
    points.sort();
    let ok = lost.is_empty()
        && unpaid.is_empty()
        && unmarked == 0
        && au.corrupt.is_empty()
        && phantom == 0
        && empty
        && recovery.found == 0
        && recovery.missing_before_cut == 0
        && au.worker_errors.is_empty();
    if t.a.json {
        let v = json!({
            "url": url,
            "seed": t.seed,
            "seconds": took.as_secs_f64(),
            "messages": messages,
            "confirmed": confirmed,
            "deliveries": deliveries,
            "faults": faults,
            "faults_by_kind": by_kind.iter().map(|(k, n)| (k.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "lost": lost.len(),
            "unmarked_duplicates": unmarked,
            "duplicates_after_power_loss": au.after_power_loss,
            "redeliveries": au.redeliveries,
            "owed_redeliveries": au.owed.len(),
            "owed_never_redelivered": unpaid.len(),
            "leases_run_out": au.leases_run_out,
            "churn_rounds": au.churn_rounds,
            "kill_points": points.iter().map(|(p, (aimed, reached))| (p.to_string(), json!({"aimed": aimed, "reached": reached}))).collect::<serde_json::Map<_, _>>(),
            "corrupt": au.corrupt.len(),
            "phantom": phantom,
            "transient_errors": au.transient_errors,
            "refused_no_space": au.refused,
            "worker_errors": au.worker_errors,
            "drained": empty,
            "figures_off_before_recovery": recovery.figures_off.map(|(r, u)| json!({"ready": r, "unacked": u})),
            "found_only_after_recovery": recovery.found,
            "missing_before_final_cut": recovery.missing_before_cut,
            "rss_kib": {"first": soak.rss.0, "max": soak.rss.1, "last": soak.rss.2},
            "open_fds": {"first": soak.fds.0, "max": soak.fds.1, "last": soak.fds.2},
            "worker_rss_kib": {"first": soak.worker_rss.0, "max": soak.worker_rss.1, "last": soak.worker_rss.2},
            "worker_open_fds": {"first": soak.worker_fds.0, "max": soak.worker_fds.1, "last": soak.worker_fds.2},
            "deliveries_per_sec": {"first_tenth": soak.rate.0, "last_tenth": soak.rate.1},
            "passed": ok,
            "command": command,
        });
        out!("{v}")?;
    } else {
        out!("url                  {url}")?;
        out!("seed                 {}", t.seed)?;
        out!("seconds              {:.1}", took.as_secs_f64())?;
        out!("messages             {messages}")?;
        out!("confirmed            {confirmed}")?;
        out!("deliveries           {deliveries}")?;
        let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        out!("faults               {faults} ({})", kinds.join(", "))?;
        out!("lost                 {}", lost.len())?;
        out!("unmarked_duplicates  {unmarked}")?;
        if counts.contains_key(&Fault::PowerLoss) {
            out!("after_power_loss     {} (deliveries without redelivered of messages delivered before a cut)", au.after_power_loss)?;
        }
        out!("redeliveries         {}", au.redeliveries)?;
        out!(
            "owed_redeliveries    {} ({} never redelivered; requeued, or a lease ran out before the ack)",
            au.owed.len(),
            unpaid.len()
        )?;
        out!("leases_run_out       {}", au.leases_run_out)?;
        if t.a.churn > 0 {
            out!("churn_rounds         {}", au.churn_rounds)?;
        }
        if !points.is_empty() {
            let v: Vec<String> = points
                .iter()
                .map(|(p, (aimed, reached))| format!("{p} {reached}/{aimed}"))
                .collect();
            out!("kill_points          {} (reached/aimed)", v.join(", "))?;
        }
        out!("corrupt              {}", au.corrupt.len())?;
        out!("phantom              {phantom}")?;
        out!("transient_errors     {}", au.transient_errors)?;
        out!("refused_no_space     {}", au.refused)?;
        out!("drained              {empty}")?;
        if let Some((r, u)) = recovery.figures_off {
            out!("figures_off          {r} ready, {u} unacked before the store was recovered (a kill between a claim or settle and its count; recovery recounted them)")?;
        }
        if recovery.found > 0 {
            out!(
                "found_after_recovery {} (stranded: no consumer could reach them before)",
                recovery.found
            )?;
        }
        if recovery.missing_before_cut > 0 {
            out!(
                "missing_before_cut   {} (stranded: live consumers did not have them when the drain before the last cut ended)",
                recovery.missing_before_cut
            )?;
        }
        out!(
            "rss_kib              first {} max {} last {}",
            soak.rss.0,
            soak.rss.1,
            soak.rss.2
        )?;
        out!(
            "open_fds             first {} max {} last {}",
            soak.fds.0,
            soak.fds.1,
            soak.fds.2
        )?;
        if soak.worker_rss.1 > 0 {
            out!(
                "worker_rss_kib       first {} max {} last {} (the largest worker process)",
                soak.worker_rss.0,
                soak.worker_rss.1,
                soak.worker_rss.2
            )?;
            out!(
                "worker_open_fds      first {} max {} last {}",
                soak.worker_fds.0,
                soak.worker_fds.1,
                soak.worker_fds.2
            )?;
        }
        out!(
            "deliveries_per_sec   first tenth {:.0}, last tenth {:.0}",
            soak.rate.0,
            soak.rate.1
        )?;
    }
    if ok {
        return Ok(());
    }
    let mut why = Vec::new();
    if !lost.is_empty() {
        let some: Vec<String> = lost
            .iter()
            .take(5)
            .map(|(t, i)| format!("{t}-{i}"))
            .collect();
        why.push(format!("{} lost (e.g. {})", lost.len(), some.join(", ")));
    }
    if unmarked > 0 {
        why.push(format!("{unmarked} unmarked duplicates"));
    }
    if let Some((t, i)) = unpaid.first() {
        why.push(format!(
            "{} requeued or restored deliveries never came again (e.g. {t}-{i})",
            unpaid.len()
        ));
    }
    if let Some(c) = au.corrupt.first() {
        why.push(format!("{} corrupt ({c})", au.corrupt.len()));
    }
    if phantom > 0 {
        why.push(format!("{phantom} phantom deliveries"));
    }
    if !empty {
        why.push(match left {
            Some((ready, unacked)) => format!(
                "the queue did not drain (its figures read {ready} ready, {unacked} unacked)"
            ),
            None => "the queue did not drain".into(),
        });
    }
    if recovery.found > 0 {
        why.push(format!(
            "{} messages came only after the store was recovered (stranded before)",
            recovery.found
        ));
    }
    if recovery.missing_before_cut > 0 {
        why.push(format!(
            "{} confirmed messages or owed redeliveries were not delivered before the last power cut (stranded until its recovery)",
            recovery.missing_before_cut
        ));
    }
    if let Some(e) = au.worker_errors.first() {
        why.push(format!("{} worker errors ({e})", au.worker_errors.len()));
    }
    Err(format!(
        "torture failed: {} (seed {}); reproduce with: {command}",
        why.join("; "),
        t.seed
    ))
}

/// This process's resident memory and open descriptors, the largest of
/// the worker processes', and the audit's deliveries, at one moment of the
/// fault phase (on memory:// the workers are threads of this process, so
/// this process's figures are theirs too).
struct Sample {
    at: Instant,
    secs: f64,
    deliveries: u64,
    rss_kib: u64,
    fds: u64,
    worker_rss_kib: u64,
    worker_fds: u64,
}

/// Resident memory (KiB) and open descriptors of `/proc/<pid>` (`self`
/// for this process); zeros for a process that is gone.
fn footprint(pid: &str) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

impl Sample {
    fn now(started: Instant, t: &Torture) -> Sample {
        let (rss_kib, fds) = footprint("self");
        let (mut worker_rss_kib, mut worker_fds) = (0, 0);
        for w in t.workers.iter().flatten() {
            if let Running::Process { child, .. } = &w.running {
                let (r, f) = footprint(&child.id().to_string());
                worker_rss_kib = worker_rss_kib.max(r);
                worker_fds = worker_fds.max(f);
            }
        }
        Sample {
            at: Instant::now(),
            secs: started.elapsed().as_secs_f64(),
            deliveries: t.audit.deliveries,
            rss_kib,
            fds,
            worker_rss_kib,
            worker_fds,
        }
    }
}

/// What the samples say about a long run: memory and descriptors (first,
/// max, last) and the delivery rate in the first and the last tenth.
struct Soak {
    rss: (u64, u64, u64),
    fds: (u64, u64, u64),
    worker_rss: (u64, u64, u64),
    worker_fds: (u64, u64, u64),
    rate: (f64, f64),
}

impl Soak {
    fn of(samples: &[Sample]) -> Soak {
        let span = |f: fn(&Sample) -> u64| -> (u64, u64, u64) {
            (
                samples.first().map_or(0, f),
                samples.iter().map(f).max().unwrap_or(0),
                samples.last().map_or(0, f),
            )
        };
        let total = samples.last().map_or(0.0, |s| s.secs);
        let tenth = (total / 10.0).max(1.0);
        let rate = |from: f64, to: f64| -> f64 {
            let at = |x: f64| {
                samples
                    .iter()
                    .min_by(|a, b| (a.secs - x).abs().total_cmp(&(b.secs - x).abs()))
            };
            match (at(from), at(to)) {
                (Some(a), Some(b)) if b.secs > a.secs => {
                    (b.deliveries - a.deliveries.min(b.deliveries)) as f64 / (b.secs - a.secs)
                }
                _ => 0.0,
            }
        };
        Soak {
            rss: span(|s| s.rss_kib),
            fds: span(|s| s.fds),
            worker_rss: span(|s| s.worker_rss_kib),
            worker_fds: span(|s| s.worker_fds),
            rate: (rate(0.0, tenth), rate(total - tenth, total)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_excuses_one_unmarked_repeat_per_message_and_no_more() {
        let mut a = Audit::default();
        a.tags.insert("p0".into(), Produced::default());
        a.take("c p0 1 2 3");
        a.take("d p0 1 0");
        a.take("d p0 2 0");
        a.cut();
        // Acked before the cut, the ack lost with it: delivered again,
        // unmarked. Excused once per cut.
        a.take("d p0 1 0");
        a.take("d p0 3 0");
        assert_eq!((a.unmarked, a.after_power_loss), (0, 1));
        // A second unmarked delivery since the cut is a real duplicate.
        a.take("d p0 1 0");
        assert_eq!((a.unmarked, a.after_power_loss), (1, 1));
        a.cut();
        a.take("d p0 2 0");
        a.take("d p0 1 0");
        a.take("d p0 3 0");
        assert_eq!((a.unmarked, a.after_power_loss), (1, 4));
        assert!(a.lost().is_empty());
    }

    #[test]
    fn a_delivery_sent_back_must_come_again() {
        let mut a = Audit::default();
        a.tags.insert("p0".into(), Produced::default());
        a.take("c p0 1 2 3");
        a.take("d p0 1 0");
        a.take("o p0 1"); // requeued
        a.take("d p0 2 0");
        a.take("l");
        a.take("o p0 2"); // its lease ran out before the ack
        a.take("d p0 3 0");
        a.take("k");
        a.take("k");
        assert!(a.lost().is_empty());
        assert_eq!(
            a.unpaid(),
            [("p0".to_owned(), 1), ("p0".to_owned(), 2)],
            "delivered once only"
        );
        a.take("d p0 1 1");
        // The later delivery may be heard first (another worker's pipe).
        a.take("d p0 3 1");
        a.take("o p0 3");
        a.take("o p0 2");
        assert_eq!(a.unpaid(), [("p0".to_owned(), 2)]);
        a.take("d p0 2 1");
        assert!(a.unpaid().is_empty());
        // Never confirmed: a power cut may have taken it.
        a.take("d p0 9 0");
        a.take("o p0 9");
        assert!(a.unpaid().is_empty());
        a.take("c p0 9");
        assert_eq!(a.unpaid(), [("p0".to_owned(), 9)]);
        a.take("d p0 9 1");
        assert_eq!((a.leases_run_out, a.churn_rounds, a.unmarked), (1, 2, 0));
        a.take("o p0");
        assert_eq!(a.corrupt.len(), 1);
    }

    #[test]
    fn kill_points_are_checked_against_the_url_and_the_build() {
        assert_eq!(
            kill_points("before-ack, mid-pipeline,before-ack", "memory://x").unwrap(),
            ["before-ack", "mid-pipeline"]
        );
        assert!(kill_points("", "local:///d").unwrap().is_empty());
        let all = kill_points("all", "memory://x").unwrap();
        assert_eq!(all.len(), WORKER_POINTS.len());
        let never = kill_points("all", "local:///d").unwrap();
        let always = kill_points("all", "local:///d?fsync=always").unwrap();
        if dashi::local::HAS_STOP_POINTS {
            assert_eq!(never.len(), WORKER_POINTS.len() + 7, "{never:?}");
            assert!(always.contains(&"durability::sync"), "{always:?}");
            assert!(never.contains(&"lane::claimed"), "{never:?}");
            assert!(never.contains(&"lane::settled_uncounted"), "{never:?}");
            assert!(kill_points("lane::rotating", "memory://x")
                .unwrap_err()
                .contains("needs a local://"));
        } else {
            assert_eq!(never.len(), WORKER_POINTS.len());
            assert!(kill_points("lane::rotating", "local:///d")
                .unwrap_err()
                .contains("failpoints feature"));
        }
        assert_eq!(
            store_point_roles("lane::claimed"),
            [Role::Consume, Role::Get]
        );
        assert_eq!(store_point_roles("segment::written"), [Role::Produce]);
        assert!(kill_points("sneeze", "memory://x")
            .unwrap_err()
            .contains("unknown kill point \"sneeze\""));
    }

    #[test]
    fn the_audit_counts_what_it_must() {
        let mut a = Audit::default();
        a.tags.insert("p0".into(), Produced::default());
        a.take("c p0 1 2 3");
        a.take("d p0 1 0");
        a.take("d p0 1 1"); // redelivered, marked
        a.take("d p0 2 0");
        a.take("d p0 2 0"); // unmarked duplicate
        a.take("d p9 1 0"); // never published here
        a.take("x a damaged body");
        a.take("e publish: reset");
        a.take("r publish: no space");
        a.take("d p0");
        assert_eq!(a.lost(), vec![("p0".to_owned(), 3)]);
        assert_eq!(a.unmarked, 1);
        assert_eq!(a.redeliveries, 1);
        assert_eq!(a.phantom, 1);
        assert_eq!(a.corrupt.len(), 2);
        assert_eq!((a.confirmed(), a.messages(), a.deliveries), (3, 4, 5));
        a.take("c p7 1");
        assert_eq!(
            a.corrupt.len(),
            3,
            "a confirm from a producer never started"
        );
        // Far and wide message numbers.
        a.take("c p0 1000000 64 63");
        a.take("d p0 64 0");
        assert_eq!(
            a.lost(),
            vec![
                ("p0".to_owned(), 3),
                ("p0".to_owned(), 63),
                ("p0".to_owned(), 1_000_000)
            ]
        );
        assert_eq!(a.transient_errors, 1);
        assert_eq!(a.refused, 1);
    }

    #[test]
    fn soak_figures_come_from_the_samples() {
        let t0 = Instant::now();
        let s = |secs: f64, deliveries: u64, rss_kib: u64, fds: u64| Sample {
            at: t0,
            secs,
            deliveries,
            rss_kib,
            fds,
            worker_rss_kib: rss_kib * 2,
            worker_fds: fds + 1,
        };
        let samples: Vec<Sample> = (0..=20)
            .map(|i| {
                let secs = f64::from(i);
                // 100 a second for 10 s, then 50 a second.
                let d = if i <= 10 {
                    100 * i
                } else {
                    1000 + 50 * (i - 10)
                };
                s(secs, u64::from(d as u32), 1000 + u64::from(i as u32), 7)
            })
            .collect();
        let k = Soak::of(&samples);
        assert_eq!(k.rss, (1000, 1020, 1020));
        assert_eq!(k.fds, (7, 7, 7));
        assert_eq!(k.worker_rss, (2000, 2040, 2040));
        assert_eq!(k.worker_fds, (8, 8, 8));
        assert!((k.rate.0 - 100.0).abs() < 1e-9, "{:?}", k.rate);
        assert!((k.rate.1 - 50.0).abs() < 1e-9, "{:?}", k.rate);
        let (rss, fds) = footprint("self");
        assert!(rss > 0 && fds > 0);
        let (rss, fds) = footprint(&std::process::id().to_string());
        assert!(rss > 0 && fds > 0);
        assert_eq!(footprint("999999999"), (0, 0));
    }

    #[test]
    fn faults_are_parsed_and_checked_against_the_transport() {
        assert_eq!(
            Fault::parse_list("kill,pause,kill", "redis").unwrap(),
            [Fault::Kill, Fault::Pause]
        );
        assert!(Fault::parse_list("pause", "local")
            .unwrap_err()
            .contains("needs a redis"));
        assert_eq!(
            Fault::parse_list("power-loss,kill", "local").unwrap(),
            [Fault::PowerLoss, Fault::Kill]
        );
        assert!(Fault::parse_list("power-loss", "rediss")
            .unwrap_err()
            .contains("needs a local://"));
        assert!(Fault::parse_list("melt", "redis")
            .unwrap_err()
            .contains("unknown fault"));
        assert!(Fault::parse_list(",", "redis")
            .unwrap_err()
            .contains("no fault"));
    }
}
