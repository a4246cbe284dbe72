//! Several processes publishing and consuming the same queue at once, through
//! the whole transport: every message is delivered exactly once, each
//! producer's messages keep their order within a priority lane, and a backlog
//! left by producer processes is drained strictly by priority.

use dashi_test_support::TestDir;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_engine::Connection;

const CHILD: &str = "DASHI_QUEUES_CHILD";
const STOP: &str = "stop";
const PER_PRODUCER: u32 = 1500;

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn connect(d: &Path) -> Connection {
    let url = format!("local://{}?segment_size=256K", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

/// Another instance of the store at `d` in this process (other options,
/// so not shared with [`connect`]'s): it shares only the files, as another
/// process does.
fn other_instance(d: &Path, segment_size: &str) -> Connection {
    let url = format!("local://{}?segment_size={segment_size}", d.display());
    dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap()
}

fn declare(c: &Connection) {
    c.channel()
        .unwrap()
        .queue_declare(&Queue::new("q").with_max_priority(2))
        .unwrap();
}

/// Child: `produce,<dir>,<id>` publishes `PER_PRODUCER` messages `<id>-<i>`
/// with priority `i % 3`; `consume,<dir>` takes messages one by one until a
/// stop message, printing `<body> <priority>` for each; `consume-auto,<dir>`
/// consumes the auto-delete queue `shared` until killed, printing `took
/// <body>` for each message.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let parts: Vec<&str> = spec.split(',').collect();
    let conn = connect(Path::new(parts[1]));
    declare(&conn);
    let ch = conn.channel().unwrap();
    match parts[0] {
        "produce" => {
            let id = parts[2];
            let p = ch.producer();
            for i in 0..PER_PRODUCER {
                let m = Message::new(format!("{id}-{i}")).with_priority((i % 3) as u8);
                p.publish(m, "q").unwrap();
            }
        }
        "consume" => loop {
            let d = ch
                .get("q", Duration::from_secs(60))
                .unwrap()
                .expect("a message within a minute");
            let body = String::from_utf8(d.body().to_vec()).unwrap();
            d.ack().unwrap();
            if body == STOP {
                println!("done");
                break;
            }
            println!("got {body} {}", d.priority());
        },
        "consume-auto" => {
            // A push consumer on the auto-delete queue `shared`, taking
            // until killed.
            ch.queue_declare(&Queue::new("shared").with_auto_delete(true))
                .unwrap();
            let _c = ch
                .consume(dashi_engine::ConsumerOptions::new("shared"), |m| {
                    m.ack().unwrap();
                    println!("took {}", String::from_utf8_lossy(m.body()));
                })
                .unwrap();
            println!("consuming");
            loop {
                let _ = conn.drain_events(Some(Duration::from_millis(100)));
            }
        }
        _ => unreachable!(),
    }
}

fn spawn(spec: String) -> Child {
    dashi_test_support::child_role("child_role", CHILD, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// (producer, index, priority) of every message a consumer printed, in order.
fn received(child: Child) -> Vec<(String, u32, u8)> {
    let mut child = child;
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut got = Vec::new();
    let mut done = false;
    for line in out.lines().map_while(Result::ok) {
        // libtest may print "test child_role ... " before our first line.
        if let Some(rest) = line.split("got ").nth(1) {
            let (body, prio) = rest.rsplit_once(' ').unwrap();
            let (w, i) = body.split_once('-').unwrap();
            got.push((w.to_owned(), i.parse().unwrap(), prio.parse().unwrap()));
        }
        done |= line.contains("done");
    }
    assert!(child.wait().unwrap().success());
    assert!(done, "a consumer did not finish");
    got
}

fn publish_stops(d: &Path, n: usize) {
    let c = connect(d);
    let ch = c.channel().unwrap();
    let p = ch.producer();
    for _ in 0..n {
        p.publish(Message::new(STOP).with_priority(0), "q").unwrap();
    }
}

/// Within one consumer's view, each producer's messages of one lane come in
/// the order they were published.
fn assert_fifo_per_producer_and_lane(seen: &[(String, u32, u8)]) {
    let mut last: BTreeMap<(&str, u8), u32> = BTreeMap::new();
    for (w, i, p) in seen {
        if let Some(prev) = last.insert((w, *p), *i) {
            assert!(prev < *i, "{w}: {i} after {prev} in lane {p}");
        }
        assert_eq!(*p as u32, i % 3, "priority kept");
    }
}

#[test]
fn producer_and_consumer_processes_at_once_deliver_everything_once_in_order() {
    let d = dir("concurrent");
    declare(&connect(&d));
    let consumers: Vec<Child> = (0..2)
        .map(|_| spawn(format!("consume,{}", d.display())))
        .collect();
    let producers: Vec<Child> = (0..3)
        .map(|w| spawn(format!("produce,{},w{w}", d.display())))
        .collect();
    for mut p in producers {
        assert!(p.wait().unwrap().success());
    }
    // Stops go to the lowest lane, after every data message of it: a consumer
    // takes one only when nothing more urgent is ready.
    publish_stops(&d, 2);
    let views: Vec<Vec<(String, u32, u8)>> = consumers.into_iter().map(received).collect();
    let mut all = BTreeSet::new();
    for v in &views {
        assert_fifo_per_producer_and_lane(v);
        for (w, i, _) in v {
            assert!(all.insert((w.clone(), *i)), "{w}-{i} delivered twice");
        }
    }
    assert_eq!(all.len(), 3 * PER_PRODUCER as usize, "every message once");
}

#[test]
fn a_backlog_from_producer_processes_drains_strictly_by_priority() {
    let d = dir("backlog");
    declare(&connect(&d));
    let producers: Vec<Child> = (0..3)
        .map(|w| spawn(format!("produce,{},w{w}", d.display())))
        .collect();
    for mut p in producers {
        assert!(p.wait().unwrap().success());
    }
    publish_stops(&d, 1);
    let seen = received(spawn(format!("consume,{}", d.display())));
    assert_eq!(seen.len(), 3 * PER_PRODUCER as usize);
    assert_fifo_per_producer_and_lane(&seen);
    let prios: Vec<u8> = seen.iter().map(|s| s.2).collect();
    assert!(
        prios.windows(2).all(|w| w[0] >= w[1]),
        "not strictly by priority"
    );
    assert_eq!(prios[0], 2);
}

/// A publish racing another connection's delete of its queue: the delete
/// wins (the message goes with the queue, or finds no queue), and the
/// publish never fails with the deleted queue's missing files (it did:
/// "append .../lane-0: No such file or directory", found by `dashi torture
/// --churn`).
#[test]
fn a_publish_racing_a_delete_of_its_queue_does_not_fail() {
    let d = dir("racing-delete");
    let (publisher, deleter) = (connect(d.path()), connect(d.path()));
    let declare = |c: &Connection| {
        c.channel()
            .unwrap()
            .queue_declare(&Queue::new("racy").with_max_priority(3))
            .unwrap();
    };
    declare(&publisher);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    let churn = std::thread::spawn(move || {
        let ch = deleter.channel().unwrap();
        let mut rounds = 0u32;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = ch.queue_delete("racy", false, false);
            ch.queue_declare(&Queue::new("racy").with_max_priority(3))
                .unwrap();
            rounds += 1;
        }
        rounds
    });
    let pch = publisher.channel().unwrap();
    let p = pch.producer();
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut published = 0u32;
    while std::time::Instant::now() < until {
        let m = Message::new(format!("m{published}")).with_priority((published % 4) as u8);
        if let Err(e) = p.publish(m, "racy") {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            panic!("publish {published} racing a delete failed: {e}");
        }
        published += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = churn.join().unwrap();
    assert!(
        rounds > 10 && published > 100,
        "{rounds} deletes, {published} publishes"
    );
}

/// A queue deleted by one store instance while another reloads the
/// topology (its reload read `meta.json` with the queue in it, then found
/// the queue's files gone as it opened them) must not make the other
/// queues unusable: the reload reads the newer file. It failed every
/// publish and declare of that instance with "queue state: No such file or
/// directory" or "queue name file: ..." until the next change. Two
/// instances of one store in one process (opened with different options)
/// share only the files, as processes do.
#[cfg(feature = "failpoints")]
#[test]
fn a_queue_deleted_while_another_instance_reloads_breaks_no_other_queue() {
    let d = dir("reload-delete");
    let steady = connect(d.path());
    let deleter = other_instance(d.path(), "128K");
    let ch = steady.channel().unwrap();
    ch.queue_declare(&Queue::new("steady")).unwrap();
    let dch = deleter.channel().unwrap();
    dch.queue_declare(&Queue::new("gone")).unwrap();
    let _scenario = fail::FailScenario::setup();
    fail::cfg("queue::dir_made", "pause").unwrap();
    // The steady instance reloads (the topology changed) and opens `gone`:
    // held there, its directory made, nothing opened yet.
    let publish = std::thread::spawn(move || {
        let p = ch.producer();
        p.publish("m0", "steady").map_err(|e| e.to_string())?;
        p.publish("m1", "steady").map_err(|e| e.to_string())?;
        ch.queue_declare(&Queue::new("steady"))
            .map_err(|e| e.to_string())
    });
    std::thread::sleep(Duration::from_millis(200));
    dch.queue_delete("gone", false, false).unwrap();
    fail::remove("queue::dir_made");
    let info = publish
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("beside a queue deleted mid-reload: {e}"));
    assert_eq!(info.message_count, 2);
}

/// A delete of a queue's last incarnation, paused between its look at the
/// name's directory (nothing but the `name` file left) and its removal of
/// it, while another instance declares the name again and publishes: the
/// new incarnation and its messages must survive the delete's resumption,
/// for every instance. The delete used to remove the whole name directory
/// there, taking the new incarnation's files with it: the declaring
/// instance went on in unlinked files and every other one saw an empty
/// queue (found by `dashi torture --churn`, as a declare failing with
/// "queue state: No such file or directory"). Three instances of one store
/// in one process (opened with different options) share only the files,
/// as processes do.
#[cfg(feature = "failpoints")]
#[test]
fn a_delete_paused_at_the_name_directory_spares_a_new_incarnation() {
    let d = dir("declare-delete");
    let open = |size| other_instance(d.path(), size);
    let (deleter, declarer, reader) = (open("128K"), open("512K"), open("1M"));
    deleter
        .channel()
        .unwrap()
        .queue_declare(&Queue::new("x"))
        .unwrap();
    let _scenario = fail::FailScenario::setup();
    fail::cfg("queue::name_dir_checked", "pause").unwrap();
    let delete = std::thread::spawn(move || {
        deleter
            .channel()
            .unwrap()
            .queue_delete("x", false, false)
            .unwrap()
    });
    // The delete is at the point once the name directory holds only `name`.
    let names = d.path().join("q");
    let only_name = || {
        std::fs::read_dir(&names).unwrap().flatten().any(|n| {
            let inside: Vec<_> = std::fs::read_dir(n.path()).unwrap().flatten().collect();
            inside.len() == 1 && inside[0].file_name() == "name"
        })
    };
    let t0 = std::time::Instant::now();
    while !only_name() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the delete never got there"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // The declare waits for the delete to finish (the fix: the delete holds
    // the metadata lock there) or goes ahead (the defect).
    let declare = std::thread::spawn(move || {
        let ch = declarer.channel().unwrap();
        ch.queue_declare(&Queue::new("x")).unwrap();
        let p = ch.producer();
        for i in 0..3 {
            p.publish(format!("m{i}"), "x").unwrap();
        }
        declarer
    });
    std::thread::sleep(Duration::from_millis(300));
    fail::remove("queue::name_dir_checked");
    assert_eq!(delete.join().unwrap(), 0);
    let _declarer = declare.join().unwrap();
    let ch = reader.channel().unwrap();
    let info = ch.queue_declare(&Queue::new("x")).unwrap();
    assert_eq!(
        info.message_count, 3,
        "the new incarnation lost its messages"
    );
    for i in 0..3 {
        let m = ch.get("x", Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(&m.body()[..], format!("m{i}").as_bytes());
        m.ack().unwrap();
    }
}

/// A delete also removes the leftovers of earlier incarnations of its name
/// that `meta.json` no longer names: a delete killed before it removed its
/// files, or a lane a publish made in a queue deleted under it. Each held a
/// preallocated segment's disk space until a lone open recovered the store
/// (`dashi torture --churn` left 11 of them, 322 MB, in 180 s under kills).
/// Anything that is not an incarnation's directory is left alone.
#[test]
fn a_delete_removes_the_leftovers_of_earlier_incarnations_of_its_name() {
    let d = dir("leftovers");
    let conn = connect(d.path());
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("keep")).unwrap();
    // Numbers given out (leftovers carry such numbers: 2 to 5 here).
    for i in 0..4 {
        ch.queue_declare(&Queue::new(format!("t{i}"))).unwrap();
        ch.queue_delete(&format!("t{i}"), false, false).unwrap();
    }
    for (name, junk) in [("x", true), ("y", false)] {
        let root = d.path().join("q").join(name);
        for old in ["0000000000000002", "0000000000000004"] {
            let lane = root.join(old).join("lane-0");
            std::fs::create_dir_all(&lane).unwrap();
            std::fs::write(lane.join("0000000000000000.seg"), vec![0u8; 65536]).unwrap();
        }
        if junk {
            std::fs::create_dir_all(root.join("notes")).unwrap();
        }
        ch.queue_declare(&Queue::new(name)).unwrap();
        ch.producer().publish("m", name).unwrap();
        assert_eq!(ch.queue_delete(name, false, false).unwrap(), 1);
        let left: Vec<String> = std::fs::read_dir(&root)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if junk {
            let mut left = left;
            left.sort();
            assert_eq!(left, ["name", "notes"], "{name}");
        } else {
            assert!(!root.exists(), "{name}: {left:?}");
        }
    }
    // A number meta.json never gave out is no leftover (that meta.json is
    // older than it: a copy put back): it stays.
    let never = d.path().join("q/z/00000000000000ff/lane-0");
    std::fs::create_dir_all(&never).unwrap();
    std::fs::write(never.join("0000000000000000.seg"), vec![0u8; 65536]).unwrap();
    ch.queue_declare(&Queue::new("z")).unwrap();
    assert_eq!(ch.queue_delete("z", false, false).unwrap(), 0);
    assert!(never.join("0000000000000000.seg").exists());
    // The live queue's files are untouched.
    ch.producer().publish("k", "keep").unwrap();
    assert_eq!(
        ch.queue_declare(&Queue::new("keep")).unwrap().message_count,
        1
    );
}

/// A process that has read the store's `meta.json` never takes a read that
/// finds none for an empty topology (every queue unknown): it retries for a
/// moment, then fails with one line. Found by `dashi torture --churn` with
/// power cuts: the power-loss filesystem failed a read of `meta.json` renamed
/// over while open, and every torture queue of that process went unknown.
#[test]
fn a_missing_meta_json_is_never_an_empty_topology() {
    let d = dir("meta-gone");
    let a = connect(d.path());
    let b = other_instance(d.path(), "128K");
    let ach = a.channel().unwrap();
    ach.queue_declare(&Queue::new("q")).unwrap();
    let bch = b.channel().unwrap();
    let meta = d.path().join("meta.json");
    let saved = d.path().join("meta.saved");
    for (k, back_after) in [(0, Some(Duration::from_millis(20))), (1, None)] {
        // The topology changes (A must reload), and the file is gone.
        bch.queue_declare(&Queue::new(format!("other-{k}").as_str()))
            .unwrap();
        std::fs::rename(&meta, &saved).unwrap();
        let back = back_after.map(|after| {
            let (saved, meta) = (saved.clone(), meta.clone());
            std::thread::spawn(move || {
                std::thread::sleep(after);
                std::fs::rename(saved, meta).unwrap();
            })
        });
        // A publish: an empty topology would drop it as unroutable.
        let r = ach.producer().publish_mandatory(format!("m{k}"), "q");
        match back {
            // Back within the retries: the publish goes through.
            Some(t) => {
                r.unwrap();
                t.join().unwrap();
            }
            None => {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("meta.json is gone"), "{e}");
                // A get: an empty topology would say the queue is unknown.
                let e = ach.get("q", Duration::ZERO).unwrap_err().to_string();
                assert!(e.contains("meta.json is gone"), "{e}");
                // Figures: "no such queue" (or none at all) would be a lie.
                let e = a.stats().queue("q").unwrap_err();
                assert!(e.to_string().contains("meta.json is gone"), "{e}");
                let e = a.stats().queues().unwrap_err().to_string();
                assert!(e.contains("meta.json is gone"), "{e}");
                std::fs::rename(&saved, &meta).unwrap();
                ach.producer().publish("m1", "q").unwrap();
            }
        }
    }
    assert_eq!(
        ach.queue_declare(&Queue::new("q")).unwrap().message_count,
        2
    );
}

/// An auto-delete queue consumed from two processes goes when the last
/// consumer of the store goes, not when one process's last consumer does:
/// the queue and the messages another process is taking stay.
#[test]
fn an_auto_delete_queue_stays_while_another_process_consumes_it() {
    use dashi_engine::ConsumerOptions;
    let d = dir("auto-delete");
    let (a, b) = (connect(d.path()), other_instance(d.path(), "128K"));
    let decl = Queue::new("shared").with_auto_delete(true);
    let (ach, bch) = (a.channel().unwrap(), b.channel().unwrap());
    ach.queue_declare(&decl).unwrap();
    bch.queue_declare(&decl).unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let in_b = bch
        .consume(ConsumerOptions::new("shared"), move |m| {
            g.lock().unwrap().push(m.body().to_vec());
            m.ack().unwrap();
        })
        .unwrap();
    let in_a = ach.consume(ConsumerOptions::new("shared"), |_| {}).unwrap();
    in_a.cancel().unwrap();
    assert!(
        a.stats().queue("shared").is_ok(),
        "the queue went while another process consumed it"
    );
    ach.producer().publish("after", "shared").unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while got.lock().unwrap().is_empty() && std::time::Instant::now() < until {
        let _ = b.drain_events(Some(Duration::from_millis(100)));
    }
    assert_eq!(*got.lock().unwrap(), [b"after".to_vec()]);
    in_b.cancel().unwrap();
    assert!(
        b.stats()
            .queue("shared")
            .is_err_and(|e| matches!(e, dashi_engine::Error::UnknownQueue(_))),
        "the last consumer left it"
    );
    assert!(
        a.stats()
            .queue("shared")
            .is_err_and(|e| matches!(e, dashi_engine::Error::UnknownQueue(_))),
        "the other process still sees it"
    );
}

/// The same across real processes, and a consumer process killed with
/// SIGKILL stops counting at once: the next last consumer deletes the queue.
#[test]
fn an_auto_delete_queue_goes_with_the_last_live_consumer_process() {
    use dashi_engine::ConsumerOptions;
    let d = dir("auto-delete-processes");
    /// Kills the child however the test ends (a failed assert included).
    struct Reaped(Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(spawn(format!("consume-auto,{}", d.path().display())));
    let out = BufReader::new(child.0.stdout.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_line = |want: &str| loop {
        match lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(want) => return line,
            Ok(_) => {}
            Err(e) => panic!("the child never said {want:?}: {e}"),
        }
    };
    next_line("consuming");
    let c = connect(d.path());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("shared").with_auto_delete(true))
        .unwrap();
    // This process's only consumer comes and goes.
    let consume_once = || {
        ch.consume(ConsumerOptions::new("shared"), |_| {})
            .unwrap()
            .cancel()
            .unwrap()
    };
    consume_once();
    assert!(
        c.stats().queue("shared").is_ok(),
        "the queue went while another process consumed it"
    );
    ch.producer().publish("after", "shared").unwrap();
    assert!(next_line("took").ends_with("took after"));
    drop(child);
    consume_once();
    assert!(
        c.stats()
            .queue("shared")
            .is_err_and(|e| matches!(e, dashi_engine::Error::UnknownQueue(_))),
        "a killed process's consumer kept the queue"
    );
}

/// Processes whose last consumers of an auto-delete queue cancel at the
/// same moment: each counts itself out before it looks at the others, so
/// at least one of them sees none left and the queue goes every time
/// (never left behind with no consumer anywhere).
#[test]
fn auto_delete_consumers_cancelling_at_once_leave_no_queue_behind() {
    use dashi_engine::ConsumerOptions;
    use std::sync::{Arc, Barrier};
    let d = dir("auto-delete-at-once");
    let sizes = ["128K", "192K", "320K", "448K"];
    let conns: Vec<Connection> = sizes.iter().map(|s| other_instance(d.path(), s)).collect();
    let decl = Queue::new("shared").with_auto_delete(true);
    for round in 0..40 {
        for c in &conns {
            c.channel().unwrap().queue_declare(&decl).unwrap();
        }
        let start = Arc::new(Barrier::new(conns.len()));
        std::thread::scope(|s| {
            for c in &conns {
                let start = start.clone();
                let decl = &decl;
                s.spawn(move || {
                    let ch = c.channel().unwrap();
                    ch.queue_declare(decl).unwrap();
                    let consumer = ch.consume(ConsumerOptions::new("shared"), |_| {}).unwrap();
                    start.wait(); // every one consumes
                    start.wait(); // then all cancel at once
                    consumer.cancel().unwrap();
                });
            }
        });
        let left = conns
            .iter()
            .filter(|c| c.stats().queue("shared").is_ok())
            .count();
        assert_eq!(
            left, 0,
            "round {round}: the queue outlived its last consumers"
        );
    }
}
