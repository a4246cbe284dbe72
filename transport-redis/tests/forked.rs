//! A process forked from one with a redis:// connection open (a prefork
//! server): in the child the inherited connection does nothing and says
//! so, a connection opened there is the child's own, and dropping the
//! inherited one leaves the parent's socket alone. Real processes and a
//! redis-server of the test's own.

use std::process::Stdio;
use std::time::Duration;

use dashi::{Connection, Message, Queue};
use dashi_test_support::{say, ChildLines, RedisServer};

const CHILD: &str = "DASHI_REDIS_FORKED_CHILD";

fn connect(url: &str) -> Connection {
    dashi::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The ids of the server's clients, but the one asking.
fn client_ids(port: u16) -> Vec<String> {
    let list = RedisServer::command_on(port, &["CLIENT", "LIST"]).unwrap();
    let mut ids: Vec<String> = list
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| {
            l.split_whitespace()
                .next()?
                .strip_prefix("id=")
                .map(str::to_owned)
        })
        .collect();
    ids.sort();
    ids
}

/// Role (`<url>`): publishes `m1`, forks; the child tries the inherited
/// connection, publishes `c1` on a connection of its own, drops the
/// inherited one and ends; the parent then takes both, on its connection.
#[test]
#[ignore = "run as a child process by the tests in this file"]
#[allow(unsafe_code)]
fn child_role() {
    let url = std::env::var(CHILD).expect("run by the tests in this file");
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    let conn = connect(&url);
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    ch.producer().publish(Message::new("m1"), "q").unwrap();
    let before = client_ids(port);
    let (conn, ch) = (
        std::mem::ManuallyDrop::new(conn),
        std::mem::ManuallyDrop::new(ch),
    );
    // SAFETY: the child runs the block below, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let ch = std::mem::ManuallyDrop::into_inner(ch);
        let conn = std::mem::ManuallyDrop::into_inner(conn);
        match ch.producer().publish(Message::new("x"), "q") {
            Ok(()) => say("inherited publish: sent"),
            Err(e) => say(format_args!(
                "inherited publish: transient={} handed back={} {e}",
                e.is_transient(),
                &e.message().body[..] == b"x"
            )),
        }
        match ch.get("q", Duration::from_millis(100)) {
            Ok(d) => say(format_args!("inherited get: {}", d.is_some())),
            Err(e) => say(format_args!("inherited get: error {e}")),
        }
        let own = connect(&url);
        let ch2 = own.channel().unwrap();
        ch2.queue_declare(&Queue::new("q")).unwrap();
        ch2.producer().publish(Message::new("c1"), "q").unwrap();
        say("child published c1");
        drop(ch);
        drop(conn);
        drop(ch2);
        drop(own);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) }
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let mut got = Vec::new();
    while let Some(m) = ch.get("q", Duration::from_secs(2)).unwrap() {
        got.push(String::from_utf8_lossy(m.body()).into_owned());
        m.ack().unwrap();
    }
    let after = client_ids(port);
    let gone: Vec<&String> = before.iter().filter(|id| !after.contains(id)).collect();
    // A confirm still waiting for the server (paused) when the process forks.
    RedisServer::command_on(port, &["CLIENT", "PAUSE", "2000", "WRITE"]).unwrap();
    let confirm = ch
        .producer()
        .publish_async(Message::new("m2"), "q")
        .unwrap();
    let confirm = std::mem::ManuallyDrop::new(confirm);
    // SAFETY: the child waits on its copy of the confirm, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let confirm = std::mem::ManuallyDrop::into_inner(confirm);
        match confirm.wait_timeout(Duration::from_millis(1500)) {
            Ok(Ok(())) => say("child's confirm: ok"),
            Ok(Err(e)) => say(format_args!(
                "child's confirm: unconfirmed={} {e}",
                e.is_unconfirmed()
            )),
            Err(_) => say("child's confirm: still waiting"),
        }
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: `pid` is this process's child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let parent_s = std::mem::ManuallyDrop::into_inner(confirm).wait();
    say(format_args!(
        "parent got {got:?}; its clients gone: {gone:?}; its confirm: {}",
        parent_s.is_ok()
    ));
}

#[test]
fn a_forked_child_uses_its_own_redis_connection_and_leaves_the_parent_s_alone() {
    let redis = RedisServer::start();
    let mut p = dashi_test_support::child_role("child_role", CHILD, redis.url())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = ChildLines::of(&mut p);
    let seen = lines.until("parent got");
    // Read to the end: the role's harness still writes its summary.
    let _ = lines.rest().count();
    let _ = p.wait();
    let find = |what: &str| dashi_test_support::line_with(&seen, what);
    // Refused at once, in one line, not as something a retry could fix
    // (before, the publish waited for ever for the parent's runtime core).
    let publish = find("inherited publish");
    assert!(
        publish.contains("transient=false handed back=true")
            && publish.contains("forked from")
            && publish.contains("open a new connection in this process"),
        "{publish}"
    );
    assert!(find("inherited get").contains("forked from"), "{seen:?}");
    // The child's own connection works (before, it was the parent's).
    find("child published c1");
    // The parent took both on its own socket, which the child's drop left
    // open (before, it shut the shared socket down).
    let parent = find("parent got");
    assert!(
        parent.contains(r#"parent got ["m1", "c1"]; its clients gone: []; its confirm: true"#),
        "{parent}"
    );
    // A confirm inherited while it waited for the server is unknown in
    // the child, at once (before, it waited for the parent's core for ever).
    let confirm = find("child's confirm");
    assert!(
        confirm.contains("unconfirmed=true") && confirm.contains("forked from"),
        "{confirm}"
    );
}
