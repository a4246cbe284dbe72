//! A process forked from one using dashi: what runs on threads of its own
//! (the lease reaper) runs again in the child, which has none of the
//! parent's threads. A real fork, from a role process of this binary.

use std::process::Stdio;
use std::time::Duration;

use dashi::Queue;
use dashi_test_support::{say, ChildLines};

const CHILD: &str = "DASHI_FORKED_ROLE";

fn leased(url: &str) -> (dashi::Connection, dashi::Channel) {
    let c = dashi::connect(url).unwrap();
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q").with_lease(Duration::from_millis(50)))
        .unwrap();
    (c, ch)
}

/// Role: starts the lease reaper (a leased delivery), forks; the child
/// takes a leased delivery on a connection of its own, lets the lease run
/// out and exits 0 when the message came back.
#[test]
#[ignore = "run as a child process by the test in this file"]
#[allow(unsafe_code)]
fn child_role() {
    std::env::var(CHILD).expect("run by the test in this file");
    let (_c, ch) = leased("memory://forked-parent");
    ch.producer().publish("x", "q").unwrap();
    ch.get("q", Duration::from_secs(5))
        .unwrap()
        .unwrap()
        .ack()
        .unwrap();
    // SAFETY: the child runs the block below, then `_exit`s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let (_c2, ch2) = leased("memory://forked-child");
        ch2.producer().publish("y", "q").unwrap();
        let first = ch2.get("q", Duration::from_secs(5)).unwrap().unwrap();
        let again = ch2.get("q", Duration::from_secs(5)).unwrap();
        let code = match again {
            Some(d) if d.redelivered() && &d.body()[..] == b"y" => 0,
            Some(_) => 2,
            None => 1,
        };
        drop(first);
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) }
    }
    let mut status = 0;
    // SAFETY: `pid` is this process's child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    say(format_args!("child status {}", libc::WEXITSTATUS(status)));
}

#[test]
fn a_lease_runs_out_in_a_forked_child() {
    let mut p = dashi_test_support::child_role("child_role", CHILD, String::new())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = ChildLines::of(&mut p);
    let seen = lines.until("child status");
    let _ = lines.rest().count();
    let _ = p.wait();
    // 1: the lease never ran out (the reaper was the parent's thread).
    assert!(seen.last().unwrap().ends_with("child status 0"), "{seen:?}");
}
