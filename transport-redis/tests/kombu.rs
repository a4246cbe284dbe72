//! Interop with real kombu 5.x and Celery from PyPI on one redis-server,
//! both directions: dashi publishes and kombu or Celery consume, and the
//! reverse; restores across the two; kombu consumers blocked in `BRPOP`
//! beside dashi consumers on the same lists. `.ci/run` installs kombu,
//! celery and redis-py; without them these tests fail and say how to get
//! them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dashi::{Connection, ConsumerOptions, Exchange, ExchangeKind, Message, Queue, Value};
use dashi_test_support::{ChildLines, RedisServer};
use serde_json::Value as J;

const WAIT: Duration = Duration::from_secs(15);

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

fn python() -> Command {
    let ok = Command::new("python3")
        .args(["-c", "import kombu, celery, redis, packaging"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "these tests need kombu, celery and redis-py: \
         python3 -m pip install kombu==5.7.0 celery==5.7.0 redis packaging"
    );
    let mut c = Command::new("python3");
    c.current_dir(interop_dir());
    c
}

/// Runs `peer.py` to the end; its JSON lines.
fn peer(args: &[&str]) -> Vec<J> {
    let out = python()
        .arg("peer.py")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "peer.py {args:?} failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn connect(url: &str) -> Connection {
    dashi::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Waits (up to 5 s) until `args` answers `want` (acks are pipelined).
fn eventually(r: &RedisServer, args: &[&str], want: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = r.command(args).unwrap();
        if got == want || Instant::now() > until {
            assert_eq!(got, want, "{args:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kombu_url(r: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}/0", r.port())
}

#[test]
fn dashi_publishes_kombu_consumes_direct_topic_and_priorities() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.exchange_declare(&Exchange::new("ex1", ExchangeKind::Direct))
        .unwrap();
    ch.queue_declare(&Queue::new("q1").with_max_priority(9))
        .unwrap();
    ch.queue_bind("q1", "ex1", "rk1", Default::default())
        .unwrap();
    let p = ch.producer();
    for (prio, n) in [(1u8, "low"), (9, "high")] {
        let mut m = Message::new(format!("{{\"n\": \"{n}\"}}"));
        m.properties.content_type = Some("application/json".into());
        m.properties.content_encoding = Some("utf-8".into());
        m.properties.priority = Some(prio);
        m.properties.correlation_id = Some(format!("c-{n}"));
        m.properties
            .headers
            .insert("x-trace".into(), Value::Str("abc/é".into()));
        p.publish_to(m, "ex1", "rk1", false).unwrap();
    }
    let got = peer(&["consume", &kombu_url(&r), "q1", "2", "ex1", "direct", "rk1"]);
    assert_eq!(got.last().unwrap()["done"], 2, "{got:?}");
    // kombu drains its priority 0 (dashi's 9) first.
    assert_eq!(got[0]["body"], "{\"n\": \"high\"}");
    assert_eq!(got[0]["priority"], 0);
    assert_eq!(got[0]["headers"]["x-trace"], "abc/é");
    assert_eq!(got[0]["correlation_id"], "c-high");
    assert_eq!(got[0]["exchange"], "ex1");
    assert_eq!(got[0]["routing_key"], "rk1");
    assert_eq!(got[1]["body"], "{\"n\": \"low\"}");
    assert_eq!(got[1]["priority"], 8);
    // Topic: kombu binds (writing its 5.7 patterns), dashi routes on them.
    for (key, q) in [("a.*.c", "tq_star"), ("a.#", "tq_hash")] {
        peer(&["bind", &kombu_url(&r), "tx", "topic", key, q]);
    }
    ch.exchange_declare(&Exchange::new("tx", ExchangeKind::Topic))
        .unwrap();
    ch.queue_declare(&Queue::new("tq_star")).unwrap();
    ch.queue_declare(&Queue::new("tq_hash")).unwrap();
    let members = r.command(&["SMEMBERS", "_kombu.binding.tx"]).unwrap();
    assert!(members.contains("^a\\.[^\\.]+\\.c$"), "{members}");
    for key in ["a.b.c", "a.x"] {
        let mut m = Message::new(key);
        m.properties.content_type = Some("text/plain".into());
        p.publish_to(m, "tx", key, false).unwrap();
    }
    let star = peer(&[
        "consume",
        &kombu_url(&r),
        "tq_star",
        "1",
        "tx",
        "topic",
        "a.*.c",
    ]);
    assert_eq!(star[0]["body"], "a.b.c");
    let hash = peer(&[
        "consume",
        &kombu_url(&r),
        "tq_hash",
        "2",
        "tx",
        "topic",
        "a.#",
    ]);
    let bodies: Vec<&J> = hash.iter().filter_map(|l| l.get("body")).collect();
    assert_eq!(bodies, [&J::from("a.b.c"), &J::from("a.x")]);
}

#[test]
fn raw_bytes_dashi_publishes_reach_kombu_as_bytes_and_come_back_unchanged() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("rawq")).unwrap();
    let p = ch.producer();
    // Not text, and no content type or encoding: kombu reads a missing
    // encoding as utf-8 and would never deliver it.
    let body: &[u8] = b"\xff\x00\xfe\x80";
    p.publish(Message::new(body), "rawq").unwrap();
    let got = peer(&["consume", &kombu_url(&r), "rawq", "1"]);
    assert_eq!(got.last().unwrap()["done"], 1, "{got:?}");
    assert_eq!(got[0]["raw"], "ff00fe80", "{got:?}");
    // dashi reads its own message back as it was sent: no encoding named.
    p.publish(Message::new(body), "rawq").unwrap();
    let d = ch.get("rawq", WAIT).unwrap().expect("a delivery");
    assert_eq!(&d.body()[..], body);
    assert_eq!(d.properties().content_encoding, None);
    assert_eq!(d.properties().content_type, None);
    d.ack().unwrap();
}

#[test]
fn kombu_publishes_dashi_consumes_in_kombus_priority_order() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("kq").with_max_priority(9))
        .unwrap();
    for (body, prio) in [("k9-a", "9"), ("k9-b", "9"), ("k0-a", "0"), ("k5", "5")] {
        peer(&["publish", &kombu_url(&r), "", "direct", "kq", body, prio]);
    }
    let mut got = Vec::new();
    while let Some(d) = ch.get("kq", Duration::from_secs(1)).unwrap() {
        let body: J = serde_json::from_slice(d.body()).unwrap();
        assert_eq!(
            d.properties().content_type.as_deref(),
            Some("application/json")
        );
        assert_eq!(
            d.properties().headers.get("x-from"),
            Some(&Value::Str("kombu".into()))
        );
        got.push((body["body"].as_str().unwrap().to_owned(), d.priority()));
        d.ack().unwrap();
    }
    assert_eq!(
        got,
        [
            ("k0-a".to_owned(), 9),
            ("k5".to_owned(), 4),
            ("k9-a".to_owned(), 0),
            ("k9-b".to_owned(), 0),
        ]
    );
    eventually(&r, &["EXISTS", "unacked"], ":0");
}

#[test]
fn kombu_restores_what_a_killed_dashi_consumer_held_and_the_reverse() {
    let r = RedisServer::start();
    // dashi takes a message and dies without acking.
    {
        let c = connect(&r.url());
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("rq")).unwrap();
        let mut m = Message::new("held-by-dashi");
        m.properties.content_type = Some("text/plain".into());
        ch.producer().publish(m, "rq").unwrap();
        let d = ch.get("rq", WAIT).unwrap().unwrap();
        // As a crash: nothing is acked or restored.
        std::mem::forget(d);
        std::mem::forget(ch);
        std::mem::forget(c);
    }
    assert_eq!(r.command(&["HLEN", "unacked"]).unwrap(), ":1");
    std::thread::sleep(Duration::from_millis(1500));
    peer(&["restore", &kombu_url(&r)]);
    let got = peer(&["consume", &kombu_url(&r), "rq", "1"]);
    assert_eq!(got[0]["body"], "held-by-dashi");
    assert_eq!(got[0]["redelivered"], true);
    // kombu takes one and dies (os._exit); dashi's scan restores it.
    let c = connect(&format!("{}?visibility_timeout=1&timeout=5", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("rq2")).unwrap();
    ch.producer().publish("held-by-kombu", "rq2").unwrap();
    let held = peer(&["hold", &kombu_url(&r), "rq2"]);
    assert_eq!(held[0]["held"], "held-by-kombu");
    let d = ch
        .get("rq2", WAIT)
        .unwrap()
        .expect("restored by dashi's scan");
    assert_eq!(&d.body()[..], b"held-by-kombu");
    assert!(d.redelivered());
    d.ack().unwrap();
    eventually(&r, &["EXISTS", "unacked"], ":0");
}

#[test]
fn dashi_consumers_wait_beside_kombu_consumers_blocked_in_brpop() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("shared")).unwrap();
    let mut kombu = python()
        .args(["peer.py", "brpop-consume", &kombu_url(&r), "shared", "6"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = ChildLines::of(&mut kombu);
    lines.until("ready");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    let _consumer = ch
        .consume(ConsumerOptions::new("shared"), move |d| {
            g.lock()
                .unwrap()
                .push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        })
        .unwrap();
    let p = connect(&format!("{}?timeout=5", r.url()));
    let pch = p.channel().unwrap();
    pch.queue_declare(&Queue::new("shared")).unwrap();
    let n = 200;
    for i in 0..n {
        let mut m = Message::new(format!("m{i}"));
        m.properties.content_type = Some("text/plain".into());
        pch.producer().publish(m, "shared").unwrap();
        if i % 20 == 0 {
            let _ = c.drain_events(Some(Duration::from_millis(20)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let _ = c.drain_events(Some(Duration::from_millis(100)));
    }
    let out = kombu.wait_with_output().unwrap();
    assert!(out.status.success());
    let rest: Vec<J> = lines
        .rest()
        .chain(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_owned),
        )
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect();
    let kombu_got: Vec<String> = rest
        .iter()
        .find_map(|j| j.get("bodies"))
        .and_then(J::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut all: Vec<String> = got.lock().unwrap().clone();
    let dashi_n = all.len();
    all.extend(kombu_got);
    all.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(
        all, want,
        "dashi got {dashi_n}; every message once, none lost"
    );
    assert!(
        dashi_n > 0,
        "the dashi consumer was woken while kombu blocked"
    );
}

#[test]
fn celery_runs_a_task_dashi_published_and_dashi_reads_a_task_celery_sent() {
    let r = RedisServer::start();
    let dir = dashi_test_support::TestDir::new();
    let out_file = dir.child("tasks.out");
    let broker = kombu_url(&r);
    // dashi → Celery: protocol 2 on the default exchange, queue "celery".
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("celery")).unwrap();
    let id = "7a1e5c1e-0000-4000-8000-00000000da51";
    let mut m = Message::new(
        r#"[[40, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]"#,
    );
    m.properties.content_type = Some("application/json".into());
    m.properties.content_encoding = Some("utf-8".into());
    m.properties.correlation_id = Some(id.into());
    for (k, v) in [
        ("lang", "rust"),
        ("task", "tasks.add"),
        ("id", id),
        ("root_id", id),
    ] {
        m.properties.headers.insert(k.into(), Value::Str(v.into()));
    }
    ch.producer().publish(m, "celery").unwrap();
    let mut worker = python()
        .args([
            "-m",
            "celery",
            "-A",
            "celery_tasks",
            "worker",
            "--pool=solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
            "-Q",
            "celery",
        ])
        .env("DASHI_BROKER", &broker)
        .env("DASHI_TASK_OUT", &out_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ran = String::new();
    while Instant::now() < deadline {
        ran = std::fs::read_to_string(&out_file).unwrap_or_default();
        if !ran.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    dashi_test_support::kill(&mut worker);
    assert_eq!(ran.trim(), "{\"sum\": 42}", "the worker ran dashi's task");
    // Celery → dashi: apply_async's message, read by dashi.
    let sent = python()
        .arg("celery_tasks.py")
        .env("DASHI_BROKER", &broker)
        .env("DASHI_TASK_OUT", &out_file)
        .output()
        .unwrap();
    assert!(sent.status.success());
    let sent: J = serde_json::from_slice(sent.stdout.trim_ascii()).unwrap();
    let d = ch.get("celery", WAIT).unwrap().expect("celery's task");
    let h = &d.properties().headers;
    assert_eq!(h.get("task"), Some(&Value::Str("tasks.add".into())));
    assert_eq!(h.get("id").and_then(Value::as_str), sent["sent"].as_str());
    let body: J = serde_json::from_slice(d.body()).unwrap();
    assert_eq!(body[0], serde_json::json!([2, 3]));
    assert_eq!(body[1], serde_json::json!({"z": 1}));
    assert_eq!(
        d.priority(),
        9,
        "celery's priority 0 is dashi's most urgent"
    );
    d.ack().unwrap();
}

#[test]
fn fanout_reaches_kombu_subscribers_and_dashi_queues_durably_both_ways() {
    let r = RedisServer::start();
    // Two dashi processes bind their own queues to "bcast" before any
    // consumer runs: each gets a durable copy of a dashi publish.
    let a = connect(&r.url());
    let b = connect(&format!("{}?timeout=5", r.url()));
    // A third process binds "fa" as well: kombu's PUBLISH reaches "fa"
    // through two subscribers and must still be stored once.
    let a2 = connect(&format!("{}?timeout=7", r.url()));
    for (c, q) in [(&a, "fa"), (&b, "fb"), (&a2, "fa")] {
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::new("bcast", ExchangeKind::Fanout))
            .unwrap();
        ch.queue_declare(&Queue::new(q)).unwrap();
        ch.queue_bind(q, "bcast", "", Default::default()).unwrap();
    }
    // A kombu fanout consumer, subscribed (kombu's lossy fanout).
    let mut kombu = python()
        .args([
            "peer.py",
            "fanout-consume",
            &kombu_url(&r),
            "bcast",
            "",
            "kq",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = ChildLines::of(&mut kombu);
    lines.until("ready");
    let pub_conn = connect(&format!("{}?timeout=6", r.url()));
    let pch = pub_conn.channel().unwrap();
    pch.exchange_declare(&Exchange::new("bcast", ExchangeKind::Fanout))
        .unwrap();
    let mut m = Message::new("from-dashi");
    m.properties.content_type = Some("text/plain".into());
    pch.producer().publish_to(m, "bcast", "", false).unwrap();
    // kombu publishes too: its PUBLISH reaches dashi's queues once each,
    // though both dashi processes are subscribed.
    peer(&[
        "publish",
        &kombu_url(&r),
        "bcast",
        "fanout",
        "",
        "from-kombu",
        "0",
    ]);
    let out = kombu.wait_with_output().unwrap();
    assert!(out.status.success());
    let kombu_got: Vec<String> = lines
        .rest()
        .filter_map(|l| serde_json::from_str::<J>(&l).ok())
        .find_map(|j| j.get("bodies").cloned())
        .and_then(|b| serde_json::from_value(b).ok())
        .unwrap_or_default();
    assert!(
        kombu_got.contains(&"from-dashi".to_owned()),
        "{kombu_got:?}"
    );
    for (c, q) in [(&a, "fa"), (&b, "fb")] {
        let ch = c.channel().unwrap();
        let mut bodies = Vec::new();
        let until = Instant::now() + WAIT;
        while bodies.len() < 2 && Instant::now() < until {
            if let Some(d) = ch.get(q, Duration::from_millis(200)).unwrap() {
                let raw = String::from_utf8_lossy(d.body()).into_owned();
                bodies.push(if raw.contains("from-kombu") {
                    "from-kombu".into()
                } else {
                    raw
                });
                d.ack().unwrap();
            }
        }
        bodies.sort();
        assert_eq!(bodies, ["from-dashi", "from-kombu"], "queue {q}");
        assert!(
            ch.get(q, Duration::from_millis(300)).unwrap().is_none(),
            "no second copy in {q}"
        );
    }
    // kombu's fanout queue is not in dashi's fanout set: no list was
    // filled for it behind kombu's back.
    assert_eq!(r.command(&["EXISTS", "kq"]).unwrap(), ":0");
}

#[test]
fn a_held_delivery_is_not_restored_by_kombu_while_dashi_keeps_it() {
    // kombu#337: Kombu restores any entry older than its visibility
    // timeout, holder alive or not. dashi re-scores what it holds.
    let r = RedisServer::start();
    let c = connect(&format!("{}?visibility_timeout=1", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("held")).unwrap();
    ch.producer().publish("long job", "held").unwrap();
    let d = ch.get("held", WAIT).unwrap().unwrap();
    d.extend_lease(Duration::from_secs(30)).unwrap();
    // Past Kombu's visibility timeout (1 s, peer.py), its restore runs.
    std::thread::sleep(Duration::from_millis(2500));
    peer(&["restore", &kombu_url(&r)]);
    assert_eq!(r.command(&["LLEN", "held"]).unwrap(), ":0", "not restored");
    assert_eq!(r.command(&["HLEN", "unacked"]).unwrap(), ":1");
    d.ack().unwrap();
    eventually(&r, &["EXISTS", "unacked"], ":0");
}

#[test]
fn a_dashi_consumer_takes_no_more_than_its_window_beside_a_kombu_consumer() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("shared2")).unwrap();
    for i in 0..20 {
        let mut m = Message::new(format!("m{i}"));
        m.properties.content_type = Some("text/plain".into());
        ch.producer().publish(m, "shared2").unwrap();
    }
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = held.clone();
    // Never acks: its window of 2 stays full.
    let _consumer = ch
        .consume(
            ConsumerOptions::new("shared2").prefetch_count(2),
            move |d| h.lock().unwrap().push(d),
        )
        .unwrap();
    let _ = c.drain_events(Some(Duration::from_millis(500)));
    assert_eq!(held.lock().unwrap().len(), 2);
    // Everything else is still in the list for Kombu.
    let got = peer(&["consume", &kombu_url(&r), "shared2", "18"]);
    assert_eq!(got.last().unwrap()["done"], 18, "{got:?}");
    assert_eq!(r.command(&["HLEN", "unacked"]).unwrap(), ":2");
}
