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
use dashi_engine::{Channel, Connection, ConsumerOptions};

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
    if extend == "take" {
        // A consumer that tries for 3 s and says what it got.
        let conn = connect(Path::new(d), "30");
        let ch = channel(&conn);
        match take(&ch, Duration::from_secs(3)) {
            Some(m) => println!("took {}", String::from_utf8_lossy(m.body())),
            None => println!("took nothing"),
        }
        return;
    }
    let conn = connect(Path::new(d), if extend == "long" { "30" } else { "1" });
    let ch = channel(&conn);
    // Kept alive until the process is killed.
    let mut stream = None;
    let got = if extend == "stream" || extend == "slow" {
        // A stream takes every ready message in one run and hands out the
        // first.
        let s = stream.insert(ch.stream(ConsumerOptions::new("jobs")).unwrap());
        let got = next_of(s, Duration::from_secs(30)).expect("a message");
        if extend == "slow" {
            // Alive, but slow to ask for the next: the run's leases run
            // out meanwhile, and another process takes them.
            println!("held {}", String::from_utf8_lossy(got.body()));
            std::thread::sleep(Duration::from_secs(6));
            let mut then = Vec::new();
            while let Some(d) = next_of(s, Duration::from_secs(1)) {
                then.push(String::from_utf8_lossy(d.body()).into_owned());
            }
            println!("then {then:?}");
            return;
        }
        got
    } else {
        ch.get("jobs", Duration::from_secs(30))
            .unwrap()
            .expect("a message")
    };
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

/// The next delivery of a stream within `within`, polled (the child roles
/// run no executor).
fn next_of(
    s: &mut dashi_engine::DeliveryStream,
    within: Duration,
) -> Option<dashi_engine::Delivery> {
    use dashi_engine::futures_core::Stream;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let end = Instant::now() + within;
    while Instant::now() < end {
        match std::pin::Pin::new(&mut *s).poll_next(&mut cx) {
            std::task::Poll::Ready(Some(Ok(d))) => return Some(d),
            std::task::Poll::Ready(other) => panic!("{other:?}"),
            std::task::Poll::Pending => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    None
}

/// Starts a holder and returns it once it holds the message.
fn holder(d: &Path, extend: bool) -> (Child, Instant) {
    holder_as(d, if extend { "extend" } else { "" })
}

/// [`holder`] in mode `mode` ("extend", "stream", "long": a 30 s lease,
/// or "").
fn holder_as(d: &Path, mode: &str) -> (Child, Instant) {
    let child =
        dashi_test_support::child_role("child_role", CHILD, format!("{},{mode}", d.display()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    held(child)
}

/// The child role run in a time namespace whose monotonic clock is a day
/// ahead of the host's (as `unshare --time` or a container restored
/// elsewhere makes it).
fn shifted(d: &Path, mode: &str) -> std::process::Command {
    let mut c = std::process::Command::new("unshare");
    c.args([
        "--time",
        "--fork",
        "--monotonic",
        "86400",
        "--kill-child=SIGKILL",
    ])
    .arg(std::env::current_exe().unwrap())
    .args([
        "child_role",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, format!("{},{mode}", d.display()))
    .stdout(Stdio::piped());
    c
}

/// Waits for a holder's "held job-1".
fn held(mut child: Child) -> (Child, Instant) {
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

/// A stream takes a run of messages and hands them out one by one; the
/// ones not yet handed out had no lease, so a consumer process that hung
/// (here stopped) kept them for as long as it lived, long past its lease.
/// They now run out with the lease like the one it handed out.
#[test]
fn messages_a_stopped_stream_took_ahead_go_to_another_process() {
    let d = dir("stream");
    let conn = connect(&d, "30");
    let ch = channel(&conn);
    for i in 1..=5 {
        ch.basic_publish(Message::new(format!("job-{i}")), "", "jobs", true)
            .unwrap();
    }
    let (child, held_at) = holder_as(&d, "stream");
    assert_eq!(
        conn.stats().queue("jobs").unwrap().unacked,
        5,
        "the stream took all five"
    );
    let mut got = Vec::new();
    while got.len() < 5 {
        let Some(m) = take(&ch, Duration::from_secs(20)) else {
            break;
        };
        got.push(String::from_utf8_lossy(m.body()).into_owned());
        m.ack().unwrap();
    }
    let waited = held_at.elapsed();
    kill(child);
    got.sort();
    assert_eq!(got, ["job-1", "job-2", "job-3", "job-4", "job-5"]);
    assert!(
        waited >= Duration::from_millis(1500),
        "taken from a live owner before its lease and grace ran out ({waited:?})"
    );
}

/// Lease deadlines are written in the host's monotonic clock: a process in
/// a time namespace shifted by a day wrote its deadlines a day late (the
/// host never took its expired delivery back) and read the host's a day
/// early (it took a live holder's delivery at once).
#[test]
fn leases_hold_across_time_namespaces() {
    if !dashi_test_support::time_namespaces_here() {
        return;
    }
    // A holder a day ahead, stopped with a 1 s lease: another process
    // takes the delivery once the lease and grace ran out.
    let d = dir("timens");
    let conn = connect(&d, "30");
    let ch = channel(&conn);
    ch.basic_publish(Message::new("job-1"), "", "jobs", true)
        .unwrap();
    let (child, held_at) = held(shifted(&d, "").spawn().unwrap());
    let got = take(&ch, Duration::from_secs(20));
    let waited = held_at.elapsed();
    kill(child);
    let got = got.expect("the shifted holder's expired delivery came back");
    assert!(got.redelivered());
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    got.ack().unwrap();
    // A holder here with a 30 s lease: a consumer a day ahead leaves it.
    ch.basic_publish(Message::new("job-1"), "", "jobs", true)
        .unwrap();
    let (child, _) = holder_as(&d, "long");
    let o = shifted(&d, "take").output().unwrap();
    kill(child);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("took nothing"), "{out}");
}

/// A stream alive but slow to ask for its next message: the run it took
/// ahead is leased from when it was taken, so another process takes what
/// is left of it once the lease ran out, and the stream then does not hand
/// those out too (each would have been delivered twice).
#[test]
fn a_slow_stream_does_not_hand_out_what_another_process_took_back() {
    let d = dir("slow");
    let conn = connect(&d, "30");
    let ch = channel(&conn);
    for i in 1..=5 {
        ch.basic_publish(Message::new(format!("job-{i}")), "", "jobs", true)
            .unwrap();
    }
    let mut child =
        dashi_test_support::child_role("child_role", CHILD, format!("{},slow", d.display()))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok);
    assert!(lines.by_ref().any(|l| l.ends_with("held job-1")));
    // job-1 (handed out there) comes back when the child's own engine
    // expires its lease; the rest of its run once another process may
    // take it back. Taken and acked here, whatever the order.
    let mut mine = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while mine.iter().filter(|m: &&String| *m != "job-1").count() < 4 && Instant::now() < end {
        if let Some(m) = take(&ch, Duration::from_millis(200)) {
            mine.push(String::from_utf8_lossy(m.body()).into_owned());
            m.ack().unwrap();
        }
    }
    let then = lines.find(|l| l.contains("then ")).unwrap_or_default();
    kill(child);
    mine.retain(|m| m != "job-1");
    mine.sort();
    assert_eq!(
        mine,
        ["job-2", "job-3", "job-4", "job-5"],
        "taken back here"
    );
    for m in &mine {
        assert!(
            !then.contains(&format!("\"{m}\"")),
            "handed out twice: {then}"
        );
    }
}
