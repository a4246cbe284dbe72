//! The workers of `dashi torture`: a producer and two kinds of consumer that
//! say what happened, one line per event, before it can be undone (a
//! delivery is said before it is acked, a confirm only once it resolved), so
//! that a worker killed at any instant leaves a record the auditor can
//! trust. They run as child processes (`dashi torture-child`, killed with
//! SIGKILL) or, on memory://, as threads of the torture process (killed by
//! a flag: the worker stops where it is and drops its connection).
//!
//! Lines:
//! - `c <tag> <i> <i> ...`: those publishes of this producer were confirmed;
//! - `d <tag> <i> <0|1>`: message `<tag>-<i>` delivered, redelivered or not;
//! - `o <tag> <i>`: that delivery went back to the queue (requeued, or its
//!   lease ran out before the ack): it is owed again;
//! - `l`: a consumer let a delivery's lease run out on purpose;
//! - `k`: a churn worker finished one round of declare, publish, get, delete;
//! - `x <text>`: a delivery whose body is not one a producer wrote;
//! - `r <text>`: a publish the store refused for lack of space (not stored);
//! - `e <text>`: a transient error the worker rode out;
//! - `failpoint <point> <marker>`: the worker stopped at a named point it
//!   was armed for (see [`WORKER_POINTS`]) and waits to be killed there.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashi::{Channel, Connection, ConsumerOptions, Delivery, Error, Message, Queue};

use crate::args::TortureChildArgs;

/// What a worker does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Publishes pipelined batches and says which were confirmed.
    Produce,
    /// A push consumer (`consume` + `drain_events`).
    Consume,
    /// A pull consumer (`get`).
    Get,
    /// Declares, fills, reads and deletes queues of its own beside the
    /// torture queue, over and over.
    Churn,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Produce => "produce",
            Role::Consume => "consume",
            Role::Get => "get",
            Role::Churn => "churn",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "produce" => Ok(Role::Produce),
            "consume" => Ok(Role::Consume),
            "get" => Ok(Role::Get),
            "churn" => Ok(Role::Churn),
            other => Err(format!("unknown torture role {other:?}")),
        }
    }
}

/// One worker's orders.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub(crate) url: String,
    pub(crate) role: Role,
    pub(crate) tag: String,
    pub(crate) seed: u64,
    pub(crate) queue: String,
    pub(crate) size: usize,
    pub(crate) pipeline: usize,
}

/// The named points in a worker where `--kill-points` stops it to be
/// killed, and the roles that reach each.
pub(crate) const WORKER_POINTS: &[(&str, &[Role])] = &[
    // A batch handed to the transport, no confirm waited for yet.
    ("mid-pipeline", &[Role::Produce]),
    // Confirms resolved, the `c` line not yet said.
    ("confirmed-unsaid", &[Role::Produce]),
    // A delivery in hand, not yet said.
    ("delivered-unsaid", &[Role::Consume, Role::Get]),
    // A delivery said, not yet acked.
    ("before-ack", &[Role::Consume, Role::Get]),
];

/// Where a worker says what happened, and whether it must stop dead.
pub(crate) trait Out: Send + Sync {
    fn say(&self, line: &str);
    /// True once the worker is to die where it stands (threads only).
    fn killed(&self) -> bool;
    /// The worker reached named point `point`: if it was armed for it, says
    /// `failpoint <point> torture` and stops there (a process parks until
    /// killed; a thread gets true and returns where it stands).
    fn at(&self, point: &str) -> bool;
}

/// The point a child process is armed for (by its parent, on stdin).
static ARMED: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Takes the armed point if it is `point`.
pub(crate) fn disarm_if(armed: &std::sync::Mutex<Option<String>>, point: &str) -> bool {
    let mut a = armed.lock().unwrap_or_else(|e| e.into_inner());
    if a.as_deref() == Some(point) {
        *a = None;
        return true;
    }
    false
}

/// A child process's out: stdout, one `write` per line (a pipe write of
/// under 4 KiB is never torn, so a kill leaves whole lines only, but for
/// the last one, which the reader drops).
struct Stdout;

impl Out for Stdout {
    fn say(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        let mut out = std::io::stdout().lock();
        // A parent that went away: nothing left to tell.
        if out.write_all(&buf).and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    }

    fn killed(&self) -> bool {
        false
    }

    fn at(&self, point: &str) -> bool {
        if disarm_if(&ARMED, point) {
            self.say(&format!("failpoint {point} torture"));
            loop {
                std::thread::park();
            }
        }
        false
    }
}

/// Reads the parent's orders on stdin: `arm <point>` arms a worker point
/// (see [`WORKER_POINTS`]) or one of local://'s stop points.
fn obey(out: Arc<dyn Out>) {
    use std::io::BufRead;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let Some(point) = line.strip_prefix("arm ") else {
            out.say(&format!("x an order the worker does not know: {line:?}"));
            continue;
        };
        if WORKER_POINTS.iter().any(|(p, _)| *p == point) {
            *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(point.to_owned());
        } else if let Err(e) = dashi::local::stop_at(point, "torture") {
            out.say(&format!("x arming {point}: {e}"));
        }
    }
}

/// `dashi torture-child`: one worker in this process, until killed.
pub(crate) fn child(a: TortureChildArgs) -> Result<(), String> {
    // Dies with the torture process: a run killed with SIGKILL left its
    // workers running for hours (a consumer waiting for messages writes
    // nothing, so never learns its reader went). A parent gone before the
    // signal was set shows as a parent other than the one named: the
    // orphan went to pid 1 or to a subreaper. (Comparing with pid 1 made
    // every worker quit at once when the torture process was itself pid 1,
    // in a container, and let an orphan taken by a subreaper live on.)
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getppid, set_parent_process_death_signal, Signal};
        set_parent_process_death_signal(Some(Signal::KILL))
            .map_err(|e| format!("setting the parent-death signal: {e}"))?;
        if getppid().map(|p| p.as_raw_nonzero().get()) != i32::try_from(a.parent).ok() {
            return Ok(());
        }
    }
    let spec = Spec {
        url: a.url,
        role: Role::parse(&a.role)?,
        tag: a.tag,
        seed: a.seed,
        queue: a.queue,
        size: a.size as usize,
        pipeline: a.pipeline as usize,
    };
    let out: Arc<dyn Out> = Arc::new(Stdout);
    let o = out.clone();
    std::thread::spawn(move || obey(o));
    run(&spec, out)
}

/// A small seeded generator (splitmix64): the same seed, the same choices.
pub(crate) struct Rng(AtomicU64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Rng(AtomicU64::new(seed))
    }

    pub(crate) fn next(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The body of message `<tag>-<i>`: its id, then a pattern that depends on
/// it, so that a consumer can tell a damaged or foreign body.
pub(crate) fn body(tag: &str, i: u64, size: usize) -> Vec<u8> {
    let mut b = format!("{tag} {i} ").into_bytes();
    let start = b.len();
    for k in start..size.max(start) {
        b.push(b'a' + ((i as usize + k) % 26) as u8);
    }
    b
}

/// The id in a body, if the body is exactly what [`body`] wrote for it.
pub(crate) fn parse_body(b: &[u8]) -> Result<(&str, u64), String> {
    let text = std::str::from_utf8(b).map_err(|_| "a body that is not UTF-8".to_owned())?;
    let mut parts = text.splitn(3, ' ');
    let (Some(tag), Some(i), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("a body without an id: {:?}", cut(text)));
    };
    let i: u64 = i
        .parse()
        .map_err(|_| format!("a body with a bad id: {:?}", cut(text)))?;
    if body(tag, i, b.len()) != b {
        return Err(format!("a damaged body for {tag}-{i}: {:?}", cut(text)));
    }
    Ok((tag, i))
}

fn cut(s: &str) -> &str {
    &s[..s.char_indices().nth(60).map_or(s.len(), |(k, _)| k)]
}

/// Connects and declares the queue, riding out transient errors for up to
/// a minute (a server restarting or still loading its data).
fn start(spec: &Spec, out: &dyn Out) -> Result<(Connection, Channel), String> {
    let give_up = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = dashi::connect(&spec.url).and_then(|conn| {
            let ch = conn.channel()?;
            if spec.role != Role::Churn {
                ch.queue_declare(&Queue::new(spec.queue.as_str()).with_max_priority(2))?;
            }
            Ok((conn, ch))
        });
        match attempt {
            Ok(started) => return Ok(started),
            Err(e) if e.is_transient() && std::time::Instant::now() < give_up => {
                out.say(&format!("e start: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "starting on {}: {e}",
                    crate::connect::redact(&spec.url)
                ))
            }
        }
    }
}

/// Runs one worker until it is killed (or, on a fatal error, returns it).
pub(crate) fn run(spec: &Spec, out: Arc<dyn Out>) -> Result<(), String> {
    let (conn, ch) = start(spec, &*out)?;
    let rng = Arc::new(Rng::new(spec.seed));
    match spec.role {
        Role::Produce => produce(spec, &conn, &ch, &rng, &*out),
        Role::Consume => consume(spec, &conn, &ch, rng, out),
        Role::Get => get(spec, &ch, &rng, &*out),
        Role::Churn => churn(spec, &conn, ch, &rng, &*out),
    }
}

/// Most ready messages a producer lets pile up: the run stays a torture of
/// the paths, not a backlog the drain must work through.
const BACKLOG: u64 = 20_000;

fn produce(
    spec: &Spec,
    conn: &Connection,
    ch: &Channel,
    rng: &Rng,
    out: &dyn Out,
) -> Result<(), String> {
    let mut i = 0u64;
    let mut line = String::new();
    let stats = conn.stats();
    for batch in 0u64.. {
        if batch % 16 == 0 {
            while stats.queue(&spec.queue).is_ok_and(|q| q.messages > BACKLOG) {
                if out.killed() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let n = 1 + rng.below(spec.pipeline as u64);
        let mut pending = Vec::with_capacity(n as usize);
        for _ in 0..n {
            if out.killed() {
                // Dies with confirms in flight.
                return Ok(());
            }
            i += 1;
            let m = Message::new(body(&spec.tag, i, spec.size)).with_priority((i % 3) as u8);
            match ch.publish_async(m, "", &spec.queue, false) {
                Ok(c) => pending.push((i, c)),
                // A full store refuses it (not stored); consumers make room.
                Err(dashi::PublishError::Store { failure, .. })
                    if failure.kind == dashi::FailureKind::NoSpace =>
                {
                    out.say(&format!("r publish: {failure}"));
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.is_transient() => {
                    out.say(&format!("e publish: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("publish: {e}")),
            }
        }
        if out.at("mid-pipeline") {
            return Ok(());
        }
        line.clear();
        line.push_str("c ");
        line.push_str(&spec.tag);
        let mut any = false;
        for (i, c) in pending {
            match c.wait() {
                Ok(()) => {
                    line.push(' ');
                    line.push_str(&i.to_string());
                    any = true;
                }
                // Refused by a full store: not stored, consumers make room.
                Err(dashi::PublishError::Refused { failure, .. }) => {
                    out.say(&format!("r confirm: {failure}"));
                }
                // May or may not be stored: not counted as confirmed.
                Err(e) if e.is_unconfirmed() || e.is_transient() => {
                    out.say(&format!("e confirm: {e}"));
                }
                Err(e) => return Err(format!("confirm: {e}")),
            }
        }
        if out.killed() || out.at("confirmed-unsaid") {
            return Ok(());
        }
        if any {
            out.say(&line);
        }
    }
    Ok(())
}

/// How long a consumer holding a delivery on purpose lets its lease run
/// (it sleeps three times as long before it acks).
const SHORT_LEASE: Duration = Duration::from_millis(20);

/// Says a delivery, then (unless killed in between) settles it: mostly an
/// ack, sometimes a requeue, sometimes after a pause (a wider window for a
/// kill between delivery and ack), and once in a while only after letting
/// its lease run out. False once the worker is to stop.
fn handle(d: &Delivery, rng: &Rng, out: &dyn Out) -> bool {
    if out.at("delivered-unsaid") {
        return false;
    }
    let id = match parse_body(d.body()) {
        Ok((tag, i)) => {
            out.say(&format!("d {tag} {i} {}", u8::from(d.redelivered())));
            Some(format!("{tag} {i}"))
        }
        Err(e) => {
            out.say(&format!("x {e}"));
            None
        }
    };
    if out.killed() || out.at("before-ack") {
        return false;
    }
    let r = rng.below(4096);
    if r < 128 {
        std::thread::sleep(Duration::from_millis(1 + rng.below(3)));
        if out.killed() {
            return false;
        }
    } else if r == 128 {
        // The lease runs out: the delivery goes back to the queue (marked
        // redelivered) and the late ack below is refused.
        out.say("l");
        if let Err(e) = d.extend_lease(SHORT_LEASE) {
            out.say(&format!("e extend_lease: {e}"));
        }
        std::thread::sleep(SHORT_LEASE * 3);
        if out.killed() {
            return false;
        }
    }
    let requeue = r >= 4032;
    match if requeue { d.reject(true) } else { d.ack() } {
        Ok(()) if requeue => {
            if let Some(id) = &id {
                out.say(&format!("o {id}"));
            }
        }
        Ok(()) => {}
        // Restored before this call (the lease ran out, the channel went):
        // it comes again.
        Err(e) if e.is_restored() => {
            if let Some(id) = &id {
                out.say(&format!("o {id}"));
            }
        }
        // Settled but maybe not recorded: it may come again, or not.
        Err(e) => out.say(&format!("e settle: {e}")),
    }
    true
}

/// How many queues the churn workers share (`<queue>-churn-<k>`).
pub(crate) const CHURN_QUEUES: u64 = 4;

/// Declares one of the churn queues, publishes a few messages to it, gets
/// what is there, and half the time deletes it, over and over. Other churn
/// workers and kills race it, so its operations may fail (said as `e`,
/// then a fresh channel); what it must never see is a message that is not a
/// churn worker's, and the torture queue must never see one of its.
fn churn(
    spec: &Spec,
    conn: &Connection,
    mut ch: Channel,
    rng: &Rng,
    out: &dyn Out,
) -> Result<(), String> {
    let mut i = 0u64;
    loop {
        if out.killed() {
            return Ok(());
        }
        let k = rng.below(CHURN_QUEUES);
        let name = format!("{}-churn-{k}", spec.queue);
        let round = (|| -> Result<(), String> {
            let e = |what: &str, e: &dyn std::fmt::Display| format!("{what} {name}: {e}");
            ch.queue_declare(&Queue::new(name.as_str()).with_max_priority(k as u8))
                .map_err(|x| e("declaring", &x))?;
            let n = 1 + rng.below(16);
            for _ in 0..n {
                i += 1;
                let m =
                    Message::new(body(&spec.tag, i, spec.size)).with_priority((i % (k + 1)) as u8);
                ch.basic_publish(m, "", &name, false)
                    .map_err(|x| e("publishing to", &x))?;
            }
            while let Some(d) = ch
                .get(&name, Duration::from_millis(1))
                .map_err(|x| e("getting from", &x))?
            {
                match parse_body(d.body()) {
                    Ok((tag, _)) if tag.starts_with('k') => {}
                    Ok((tag, i)) => out.say(&format!("x {name} held {tag}-{i}")),
                    Err(x) => out.say(&format!("x {name}: {x}")),
                }
                d.ack().map_err(|x| e("acking from", &x))?;
            }
            if rng.below(2) == 0 {
                ch.queue_delete(&name, false, false)
                    .map_err(|x| e("deleting", &x))?;
            }
            Ok(())
        })();
        match round {
            Ok(()) => out.say("k"),
            Err(e) => {
                out.say(&format!("e churn: {e}"));
                ch = conn
                    .channel()
                    .map_err(|e| format!("churn: a new channel: {e}"))?;
            }
        }
    }
}

fn consume(
    spec: &Spec,
    conn: &Connection,
    ch: &Channel,
    rng: Arc<Rng>,
    out: Arc<dyn Out>,
) -> Result<(), String> {
    let prefetch = 1 + rng.below(32) as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let (st, o) = (stop.clone(), out.clone());
    // The callback runs on this thread, inside drain_events.
    let consumer = ch
        .consume(
            ConsumerOptions::new(spec.queue.clone()).prefetch_count(prefetch),
            move |d: Delivery| {
                // Once stopping, a delivery is left unsettled: it goes back
                // when the connection goes.
                if !st.load(Ordering::Relaxed) && !handle(&d, &rng, &*o) {
                    st.store(true, Ordering::Relaxed);
                }
            },
        )
        .map_err(|e| format!("consume: {e}"))?;
    loop {
        if stop.load(Ordering::Relaxed) || out.killed() {
            drop(consumer);
            return Ok(());
        }
        match conn.drain_events(Some(Duration::from_millis(100))) {
            Ok(_) | Err(Error::Timeout) => {}
            Err(e) if e.is_transient() => {
                out.say(&format!("e drain: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("drain_events: {e}")),
        }
    }
}

fn get(spec: &Spec, ch: &Channel, rng: &Rng, out: &dyn Out) -> Result<(), String> {
    loop {
        if out.killed() {
            return Ok(());
        }
        match ch.get(&spec.queue, Duration::from_millis(100)) {
            Ok(Some(d)) => {
                if !handle(&d, rng, out) {
                    // Unsettled: it goes back when the connection goes.
                    return Ok(());
                }
            }
            Ok(None) => {}
            Err(e) if e.is_transient() => {
                out.say(&format!("e get: {e}"));
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("get: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_id_and_damage_is_seen() {
        let b = body("p3", 41, 64);
        assert_eq!(b.len(), 64);
        assert_eq!(parse_body(&b).unwrap(), ("p3", 41));
        let mut bad = b.clone();
        bad[40] ^= 1;
        assert!(parse_body(&bad).unwrap_err().contains("damaged"));
        assert!(parse_body(b"junk").unwrap_err().contains("without an id"));
        assert!(parse_body(b"p1 x yyy").unwrap_err().contains("bad id"));
        assert!(parse_body(&[0xff, 0x20]).is_err());
        // A body shorter than its id still round-trips.
        assert_eq!(parse_body(&body("p1", 7, 0)).unwrap(), ("p1", 7));
    }

    #[test]
    fn the_generator_repeats_with_its_seed() {
        let (a, b) = (Rng::new(9), Rng::new(9));
        let xs: Vec<u64> = (0..5).map(|_| a.next()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], Rng::new(10).next());
        assert!((0..100).all(|_| a.below(7) < 7));
    }
}
