//! Leases across processes: a consumer process that stops running (SIGSTOP)
//! while holding a leased delivery loses it to another process once the lease
//! and a grace have passed; `extend_lease` pushes that back; a consumer
//! process killed with SIGKILL loses its deliveries at once, lease or not.

use dashi_test_support::TestDir;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_engine::{Channel, Connection};

const CHILD: &str = "DASHI_LEASE_CHILD";

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn connect(d: &Path, lease: &str) -> Connection {
    let url = format!("local://{}?visibility_timeout={lease}", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn channel(c: &Connection) -> Channel {
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("jobs")).unwrap();
    ch
}

/// Child: takes one message with a 1 s lease, optionally extends it to 30 s,
/// says so, and stops itself (as a hung or suspended process would be).
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let (d, extend) = spec.split_once(',').unwrap();
    let conn = connect(Path::new(d), "1");
    let ch = channel(&conn);
    let got = ch
        .get("jobs", Duration::from_secs(30))
        .unwrap()
        .expect("a message");
    if extend == "extend" {
        got.extend_lease(Duration::from_secs(30)).unwrap();
    }
    println!("held {}", String::from_utf8_lossy(got.body()));
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP)
        .expect("a process can stop itself");
    std::thread::sleep(Duration::from_secs(600));
}

/// Starts a holder and returns it once it holds the message.
fn holder(d: &Path, extend: bool) -> (Child, Instant) {
    let mut child = dashi_test_support::child_role(
        "child_role",
        CHILD,
        format!("{},{}", d.display(), if extend { "extend" } else { "" }),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("held"))
        .unwrap_or_default();
    // libtest may print "test child_role ... " on the same line first.
    assert!(line.ends_with("held job-1"), "{line}");
    (child, Instant::now())
}

/// Polls `jobs` until a message comes or `within` passes.
fn take(ch: &Channel, within: Duration) -> Option<dashi_engine::Delivery> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(d) = ch.get("jobs", Duration::from_millis(50)).unwrap() {
            return Some(d);
        }
    }
    None
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_stopped_consumer_s_expired_lease_goes_to_another_process() {
    let d = dir("stopped");
    let conn = connect(&d, "30");
    let ch = channel(&conn);
    ch.basic_publish(Message::new("job-1"), "", "jobs", true)
        .unwrap();
    let (child, held_at) = holder(&d, false);
    // The child's lease (1 s) plus the grace (1 s) must pass first.
    let got = take(&ch, Duration::from_secs(20)).expect("the job came back");
    let waited = held_at.elapsed();
    assert!(got.redelivered());
    assert_eq!(&got.body()[..], b"job-1");
    assert!(
        waited >= Duration::from_millis(1500),
        "taken from a live owner before its lease and grace ran out ({waited:?})"
    );
    got.ack().unwrap();
    assert_eq!(conn.stats().queue("jobs").unwrap().messages, 0);
    kill(child);
}

#[test]
fn an_extended_lease_holds_until_the_owner_dies() {
    let d = dir("extended");
    let conn = connect(&d, "30");
    let ch = channel(&conn);
    ch.basic_publish(Message::new("job-1"), "", "jobs", true)
        .unwrap();
    let (child, _) = holder(&d, true);
    // Unextended, the lease and grace would be over after 2 s.
    assert!(
        take(&ch, Duration::from_secs(4)).is_none(),
        "an extended lease was taken"
    );
    // SIGKILL: a dead owner loses its claims at once.
    kill(child);
    let got = take(&ch, Duration::from_secs(20)).expect("the job came back");
    assert!(got.redelivered());
    got.ack().unwrap();
}
