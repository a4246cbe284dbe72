//! Soak: producer and consumer processes on one store at `segment_size=64K`
//! (so retention deletes segments all the time), killed with SIGKILL at
//! seeded random moments and restarted, while another queue is deleted and
//! redeclared over and over. At the end nothing is stranded: every confirmed
//! message was delivered, a message delivered twice carries `redelivered`
//! the second time, `stat` agrees with what a consumer can get (zero after a
//! drain, give or take one a kill: the known gap between a CAS and its
//! count), and an exclusive reopen (which rebuilds every count from the log)
//! reads zero and finds nothing more.
//!
//! `cargo test` runs it for 20 s. The longer mode:
//! `DASHI_SOAK_SECS=600 cargo test --release -p dashi-transport-local --test soak -- --nocapture`
//! (`DASHI_SOAK_SEED=<n>` replays a run's schedule of kills).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_engine::{Channel, Connection, ConsumerOptions};
use dashi_test_support::{kill, say, ChildLines, TestDir};

const CHILD: &str = "DASHI_SOAK_CHILD";

fn connect(d: &Path) -> Connection {
    let url = format!("local://{}?segment_size=64K", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn declare(ch: &Channel) {
    ch.queue_declare(&Queue::new("q").with_max_priority(2))
        .unwrap();
}

/// Child roles (`<role>,<dir>,<tag>`), all running until killed:
/// - `produce`: publishes `<tag>-<i>` to `q` (priority `i % 3`) and says
///   `c <body>` once confirmed; every 4th also goes to `scratch` (which the
///   parent deletes and redeclares; errors there are expected).
/// - `get`: takes messages one by one from `q` and `scratch`, saying
///   `d <body> <redelivered>` for each from `q` before acking it.
/// - `push`: the same through a push consumer with a prefetch of 16.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let parts: Vec<&str> = spec.split(',').collect();
    let (role, d, tag) = (parts[0], Path::new(parts[1]), parts[2]);
    let conn = connect(d);
    let ch = conn.channel().unwrap();
    declare(&ch);
    match role {
        "produce" => {
            let p = ch.producer();
            for i in 0u64.. {
                let body = format!("{tag}-{i}");
                let m = Message::new(body.clone()).with_priority((i % 3) as u8);
                p.publish(m, "q").unwrap();
                say(format_args!("c {body}"));
                if i % 4 == 0 {
                    let _ = ch.queue_declare(&Queue::new("scratch"));
                    let _ = p.publish(Message::new(body), "scratch");
                }
            }
        }
        "get" => loop {
            if let Some(m) = ch.get("q", Duration::from_millis(200)).unwrap() {
                let body = String::from_utf8_lossy(m.body()).into_owned();
                say(format_args!("d {body} {}", m.redelivered()));
                m.ack().unwrap();
            }
            if let Ok(Some(m)) = ch.get("scratch", Duration::from_millis(1)) {
                let _ = m.ack();
            }
        },
        "push" => {
            let _c = ch
                .consume(ConsumerOptions::new("q").prefetch_count(16), move |m| {
                    let body = String::from_utf8_lossy(m.body()).into_owned();
                    say(format_args!("d {body} {}", m.redelivered()));
                    m.ack().unwrap();
                })
                .unwrap();
            loop {
                match conn.drain_events(Some(Duration::from_millis(500))) {
                    Ok(_) | Err(dashi_engine::Error::Timeout) => {}
                    Err(e) => panic!("drain: {e}"),
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// A tiny seeded generator (xorshift64*), so a run's schedule replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Kid {
    role: &'static str,
    child: Child,
}

fn spawn(d: &Path, role: &'static str, tag: String, lines: &mpsc::Sender<String>) -> Kid {
    let mut child = dashi_test_support::child_role(
        "child_role",
        CHILD,
        format!("{role},{},{tag}", d.display()),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let out = ChildLines::of(&mut child);
    let tx = lines.clone();
    std::thread::spawn(move || {
        for l in out.rest() {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    Kid { role, child }
}

/// What the children said: confirmed bodies, and each delivery's
/// `redelivered` flags in order.
#[derive(Default)]
struct Audit {
    confirmed: BTreeSet<String>,
    delivered: BTreeMap<String, Vec<bool>>,
}

impl Audit {
    fn take(&mut self, line: &str) {
        // libtest may print "test child_role ... " before a child's first line.
        let t: Vec<&str> = line.split_whitespace().collect();
        for (i, w) in t.iter().enumerate() {
            match (*w, t.get(i + 1), t.get(i + 2)) {
                ("c", Some(body), _) => {
                    self.confirmed.insert((*body).to_owned());
                }
                ("d", Some(body), Some(r)) => {
                    if let Ok(r) = r.parse::<bool>() {
                        self.delivered
                            .entry((*body).to_owned())
                            .or_default()
                            .push(r);
                    }
                }
                _ => continue,
            }
            return;
        }
    }
}

#[test]
fn processes_killed_at_random_with_retention_and_redeclares_strand_nothing() {
    let secs: u64 = std::env::var("DASHI_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("DASHI_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak: {secs} s, DASHI_SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let d = TestDir::new();
    let conn = connect(&d);
    let ch = conn.channel().unwrap();
    declare(&ch);
    let (tx, rx) = mpsc::channel();
    let mut serial = 0u32;
    let mut tag = |role: &str| {
        serial += 1;
        format!("{role}{serial}")
    };
    let roles = ["produce", "produce", "get", "push"];
    let mut kids: Vec<Kid> = roles.iter().map(|r| spawn(&d, r, tag(r), &tx)).collect();
    let mut audit = Audit::default();
    let (mut kills, mut redeclares) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100 + rng.below(900)));
        for l in rx.try_iter() {
            audit.take(&l);
        }
        match rng.below(3) {
            0 => {
                ch.queue_delete("scratch", false, false).ok();
                ch.queue_declare(&Queue::new("scratch")).unwrap();
                redeclares += 1;
            }
            _ => {
                let i = rng.below(kids.len() as u64) as usize;
                let role = kids[i].role;
                kill(&mut kids[i].child);
                kids[i] = spawn(&d, role, tag(role), &tx);
                kills += 1;
            }
        }
    }
    // Producers stop; consumers take what is left; then everyone is killed
    // (some deliveries unacked) and this process drains the rest.
    for k in kids.iter_mut().filter(|k| k.role == "produce") {
        kill(&mut k.child);
    }
    std::thread::sleep(Duration::from_secs(2));
    for k in kids.iter_mut() {
        kill(&mut k.child);
    }
    drop(tx);
    for l in rx.iter() {
        audit.take(&l);
    }
    // Until nothing is ready, and then 3 s more (a record can wait behind a
    // reservation whose writer was killed before naming itself: 10 s).
    let mut drained = 0u64;
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(3)
        || (conn.stats().queue("q").unwrap().messages > 0
            && idle.elapsed() < Duration::from_secs(30))
    {
        if let Some(m) = ch.get("q", Duration::from_millis(200)).unwrap() {
            let body = String::from_utf8_lossy(m.body()).into_owned();
            audit
                .delivered
                .entry(body)
                .or_default()
                .push(m.redelivered());
            m.ack().unwrap();
            drained += 1;
            idle = Instant::now();
        }
    }
    let lost: Vec<&String> = audit
        .confirmed
        .iter()
        .filter(|b| !audit.delivered.contains_key(*b))
        .collect();
    let unmarked: Vec<(&String, &Vec<bool>)> = audit
        .delivered
        .iter()
        .filter(|(_, r)| r.iter().skip(1).any(|r| !r))
        .collect();
    let redeliveries: usize = audit.delivered.values().map(|r| r.len() - 1).sum();
    eprintln!(
        "soak: confirmed {}, delivered {}, redeliveries {redeliveries}, drained at the end {drained}, kills {kills}, redeclares {redeclares}, lost {}, unmarked duplicates {}",
        audit.confirmed.len(),
        audit.delivered.len(),
        lost.len(),
        unmarked.len()
    );
    let s = conn.stats().queue("q").unwrap();
    eprintln!(
        "soak: stat before the checks: messages {} unacked {}",
        s.messages, s.unacked
    );
    if !lost.is_empty() {
        // Which producers lost what: a wedged lane loses a run of one
        // producer's messages of one priority, a bug elsewhere looks different.
        let mut by: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for b in &lost {
            let (who, i) = b.rsplit_once('-').unwrap();
            let e = by.entry(who).or_insert((u64::MAX, 0));
            e.0 = e.0.min(i.parse().unwrap());
            e.1 += 1;
        }
        eprintln!("soak: lost per producer (first lost index, count): {by:?}");
    }
    assert!(
        lost.is_empty(),
        "seed {seed}: {} confirmed never delivered, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(
        unmarked.is_empty(),
        "seed {seed}: delivered again without redelivered: {:?}",
        &unmarked[..unmarked.len().min(5)]
    );
    assert!(audit.confirmed.len() > 100, "the run did some work");
    // A process killed between a claim word's CAS and its count leaves a
    // figure one off until the next lone opener recounts (RELIABILITY.md,
    // known gaps): at most one a kill. More is a counting bug (stop 28's
    // read 9 with no message left; `a_consumer_killed_in_the_middle_of_a_run_leaves_the_figures_true`
    // aims at that one), and the recount below must come to zero.
    let s = conn.stats().queue("q").unwrap();
    let off = s.messages + s.unacked;
    assert!(
        off <= kills,
        "seed {seed}: stat after the drain is off by {off} ({} ready, {} unacked), more than the {kills} kills can leave",
        s.messages,
        s.unacked
    );
    if off > 0 {
        eprintln!(
            "soak: figures off by {off} before the recount (a kill between a CAS and its count)"
        );
    }
    // Everyone gone: the next opener recovers and recounts from the log.
    drop(ch);
    drop(conn);
    let conn = connect(&d);
    let ch = conn.channel().unwrap();
    let s = conn.stats().queue("q").unwrap();
    assert_eq!(
        (s.messages, s.unacked),
        (0, 0),
        "seed {seed}: stat after recovery"
    );
    assert!(
        ch.get("q", Duration::from_millis(300)).unwrap().is_none(),
        "seed {seed}: a message was stranded until recovery"
    );
}
