//! A process forked from one that has a store open (a prefork server:
//! the parent opens, then forks its workers). Real processes: each test
//! runs a role of this binary, which forks.
//!
//! - In the child, the parent's store does nothing and says so; a store
//!   opened in the child is the child's own (a message it took and never
//!   acked comes back when it dies, though the parent runs on).
//! - Dropping the inherited store in the child leaves the parent's locks
//!   and registration alone (the parent's unacked message stays its own).
//! - A child that never touches the store does not keep the parent's
//!   claims alive after the parent died.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_engine::{Channel, Connection};
use dashi_test_support::{kill, say, ChildLines, TestDir};

const CHILD: &str = "DASHI_FORKED_CHILD";

fn connect(d: &Path) -> Connection {
    let url = format!("local://{}?segment_size=64K&fsync=always", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn channel(c: &Connection) -> Channel {
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    ch
}

/// Forks; the child runs `child` and ends with `_exit` (no destructor, no
/// test harness); the parent gets the child's pid, and what `child`
/// captured stays as it is there (never dropped).
#[allow(unsafe_code)]
fn fork(child: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs only `child`, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        child();
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) }
    }
    std::mem::forget(child);
    pid
}

#[allow(unsafe_code)]
fn wait(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: `pid` is a child of this process.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid);
}

fn hold() -> ! {
    hold_for(Duration::from_secs(600))
}

fn hold_for(d: Duration) -> ! {
    std::thread::sleep(d);
    panic!("held for {d:?}");
}

/// Child roles (`<role>,<dir>`):
/// - `use`: publishes `m1`, forks; the child tries the inherited store,
///   then opens its own, takes `m1` and dies without acking it; the parent
///   then takes `m1` back.
/// - `drop`: takes `m2` without acking it, forks; the child drops what it
///   inherited and ends; the parent says `child gone` and holds `m2`.
/// - `orphan`: takes `m3` without acking it, forks a child that says its
///   pid and sleeps; the parent says `held` and sleeps.
/// - `confirm`: publishes with a confirm that resolves at a sync a minute
///   away, forks; the child waits on that confirm (5 s at most) and says
///   what it got.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let (role, dir) = spec.split_once(',').unwrap();
    let d = Path::new(dir);
    let conn = connect(d);
    let ch = channel(&conn);
    match role {
        "use" => {
            ch.producer().publish(Message::new("m1"), "q").unwrap();
            let child = fork(|| {
                match ch.producer().publish(Message::new("x"), "q") {
                    Ok(()) => say("inherited publish: stored"),
                    Err(e) => say(format_args!(
                        "inherited publish: not stored={} handed back={} {e}",
                        matches!(e, dashi_engine::PublishError::Store { .. }),
                        &e.message().body[..] == b"x"
                    )),
                }
                match ch.get("q", Duration::from_millis(100)) {
                    Ok(d) => say(format_args!("inherited get: {}", d.is_some())),
                    Err(e) => say(format_args!("inherited get: error {e}")),
                }
                let own = connect(d);
                let ch2 = channel(&own);
                let m = ch2.get("q", Duration::from_secs(5)).unwrap().unwrap();
                say(format_args!(
                    "child took {}",
                    String::from_utf8_lossy(m.body())
                ));
                // Dies holding it (no ack, no destructor).
            });
            wait(child);
            match ch.get("q", Duration::from_secs(10)).unwrap() {
                Some(m) => {
                    m.ack().unwrap();
                    say(format_args!(
                        "parent got {} redelivered={}",
                        String::from_utf8_lossy(m.body()),
                        m.redelivered()
                    ))
                }
                None => say("parent got nothing"),
            }
        }
        "drop" => {
            ch.producer().publish(Message::new("m2"), "q").unwrap();
            let m = ch.get("q", Duration::from_secs(5)).unwrap().unwrap();
            let child = fork(move || {
                drop(m);
                drop(ch);
                drop(conn);
                say("child dropped what it inherited");
            });
            wait(child);
            say("child gone");
            hold();
        }
        "confirm" => {
            let url = format!("local://{}?fsync=interval:60000", d.display());
            let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
            let ch = channel(&conn);
            let confirm = ch
                .producer()
                .publish_async(Message::new("m4"), "q")
                .unwrap();
            let child = fork(move || match confirm.wait_timeout(Duration::from_secs(5)) {
                Ok(Ok(())) => say("child's confirm: ok"),
                Ok(Err(e)) => say(format_args!(
                    "child's confirm: unconfirmed={} {e}",
                    e.is_unconfirmed()
                )),
                Err(_) => say("child's confirm: still waiting after 5 s"),
            });
            wait(child);
            say("child gone");
        }
        "orphan" => {
            ch.producer().publish(Message::new("m3"), "q").unwrap();
            let _m = ch.get("q", Duration::from_secs(5)).unwrap().unwrap();
            let child = fork(|| {
                say(format_args!("child {}", std::process::id()));
                // Not as long as the parent: nobody may be left to kill it.
                hold_for(Duration::from_secs(60));
            });
            say(format_args!("held; child {child}"));
            hold();
        }
        other => panic!("unknown role {other}"),
    }
}

fn role(role: &str, d: &Path) -> (Child, ChildLines) {
    let mut c =
        dashi_test_support::child_role("child_role", CHILD, format!("{role},{}", d.display()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let lines = ChildLines::of(&mut c);
    (c, lines)
}

/// Takes from `q` for up to `within`.
fn take(d: &Path, within: Duration) -> Option<(String, bool)> {
    let conn = connect(d);
    let ch = channel(&conn);
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(m) = ch.get("q", Duration::from_millis(100)).unwrap() {
            let got = (
                String::from_utf8_lossy(m.body()).into_owned(),
                m.redelivered(),
            );
            m.ack().unwrap();
            return Some(got);
        }
    }
    None
}

#[test]
fn a_forked_child_uses_its_own_store_and_never_the_parent_s() {
    let d = TestDir::new();
    let (mut p, mut lines) = role("use", d.path());
    let seen = lines.until("parent got");
    kill(&mut p);
    let find = |what: &str| dashi_test_support::line_with(&seen, what);
    // The inherited store refuses, in one line, and hands the message back.
    let publish = find("inherited publish");
    assert!(
        publish.contains("not stored=true handed back=true")
            && publish.contains("forked from")
            && publish.contains("open a new connection in this process"),
        "{publish}"
    );
    assert!(find("inherited get").contains("forked from"), "{seen:?}");
    // The child's own store works, fsync=always included (before, its sync
    // waited for ever for the parent's runtime core).
    assert!(find("child took").ends_with("m1"), "{seen:?}");
    // What the child took and never acked came back when it died, while
    // the parent ran (before, the child's claim was the parent's).
    assert!(
        find("parent got").contains("parent got m1 redelivered=true"),
        "{seen:?}"
    );
    // Nothing else was stored.
    assert_eq!(take(d.path(), Duration::from_millis(300)), None);
}

#[test]
fn a_forked_child_dropping_what_it_inherited_leaves_the_parent_s_store_alone() {
    let d = TestDir::new();
    let (mut p, mut lines) = role("drop", d.path());
    let seen = lines.until("child gone");
    assert!(seen.iter().any(|l| l.contains("child dropped")), "{seen:?}");
    // The parent still holds `m2`: nobody else gets it. Before, the child's
    // drop unlocked the parent's presence lock (this process then recovered
    // the store as its only user and restored the claim) and removed the
    // parent's registration (the parent looked dead).
    assert_eq!(take(d.path(), Duration::from_secs(2)), None);
    kill(&mut p);
    assert_eq!(
        take(d.path(), Duration::from_secs(10)),
        Some(("m2".into(), true))
    );
}

#[test]
fn a_confirm_the_child_inherited_fails_at_once_there() {
    let d = TestDir::new();
    let (mut p, mut lines) = role("confirm", d.path());
    let seen = lines.until("child gone");
    kill(&mut p);
    // Unknown in the child (only the parent's sync can make it durable),
    // at once: before, it waited for the parent's runtime core for ever.
    let got = dashi_test_support::line_with(&seen, "child's confirm");
    assert!(
        got.contains("unconfirmed=true") && got.contains("forked from"),
        "{got}"
    );
}

#[test]
#[allow(unsafe_code)]
fn a_forked_child_does_not_keep_a_dead_parent_s_claims() {
    let d = TestDir::new();
    let (mut p, mut lines) = role("orphan", d.path());
    let seen = lines.until("held");
    let child: libc::pid_t = seen
        .iter()
        .find_map(|l| l.split("held; child ").nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kill(&mut p);
    // The parent is dead, its child alive with copies of its descriptors:
    // the parent's claim comes back. Before, the child's copy of the
    // parent's registration lock kept the parent alive to everyone.
    let got = take(d.path(), Duration::from_secs(10));
    // SAFETY: a plain signal to the orphaned child (it only sleeps).
    unsafe {
        libc::kill(child, libc::SIGKILL);
    }
    assert_eq!(got, Some(("m3".into(), true)));
}
