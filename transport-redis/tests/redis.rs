//! redis:// beyond the conformance suite: what only Redis has (kombu's
//! priority steps, notifications, scripts, garbage left by others) and what
//! goes wrong with a real server (killed connections, a paused or restarted
//! server, a crashed consumer). Every test starts its own `redis-server`.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use dashi::{
    Connection, ConsumerOptions, Error, Exchange, ExchangeKind, Message, PublishError, Queue,
};
use dashi_test_support::{ChildLines, RedisServer};

const WAIT: Duration = Duration::from_secs(10);

fn connect(url: &str) -> Connection {
    dashi::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// The reply of one command, as text.
fn cmd(r: &RedisServer, args: &[&str]) -> String {
    r.command(args).unwrap()
}

/// Waits (up to 5 s) until `args` answers `want`: acks are pipelined, not
/// waited for, so another connection sees them a moment later.
fn eventually(r: &RedisServer, args: &[&str], want: &str) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let got = cmd(r, args);
        if got == want || Instant::now() > until {
            assert_eq!(got, want, "{args:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `LLEN` of a key.
fn llen(r: &RedisServer, key: &str) -> i64 {
    let reply = cmd(r, &["LLEN", key]);
    reply.trim_start_matches(':').parse().unwrap()
}

#[test]
fn a_consumer_in_another_process_is_woken_by_a_notification_not_by_polling() {
    let r = RedisServer::start();
    // The timer would take a minute: only a notification can deliver in time.
    let consumer = connect(&format!("{}?poll_interval=60", r.url()));
    let ch = consumer.channel().unwrap();
    ch.queue_declare(&Queue::new("jobs")).unwrap();
    let t = std::thread::spawn({
        let url = r.url();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            // Another transport instance (another URL): as another process.
            let p = connect(&format!("{url}?timeout=5"));
            let pch = p.channel().unwrap();
            pch.queue_declare(&Queue::new("jobs")).unwrap();
            pch.producer().publish("wake", "jobs").unwrap();
        }
    });
    let start = Instant::now();
    let d = ch
        .get("jobs", WAIT)
        .unwrap()
        .expect("delivered without a poll");
    assert_eq!(&d.body()[..], b"wake");
    assert!(start.elapsed() < Duration::from_secs(30));
    d.ack().unwrap();
    t.join().unwrap();
    // A plain LPUSH by another client (kombu's way) wakes it too.
    let _c = ch
        .consume(ConsumerOptions::new("jobs"), |d| d.ack().unwrap())
        .unwrap();
    let raw = r#"{"body": "aGk=", "headers": {}, "properties": {"delivery_tag": "k1", "body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "jobs"}, "priority": 0}}"#;
    let pusher = std::thread::spawn({
        let port = r.port();
        move || {
            std::thread::sleep(Duration::from_millis(300));
            let r2 = dashi_test_support::RedisServer::command_on(port, &["LPUSH", "jobs", raw]);
            assert_eq!(r2.unwrap(), ":1");
        }
    });
    assert_eq!(consumer.drain_events(Some(WAIT)).unwrap(), 1);
    pusher.join().unwrap();
}

#[test]
fn declarations_redis_cannot_keep_are_refused_with_a_reason() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    for q in [
        Queue::new("a").with_message_ttl(Duration::from_secs(1)),
        Queue::new("b").with_max_length(10),
        Queue::new("c").with_max_length_bytes(100),
        Queue::new("d").with_dead_letter("dlx", None),
    ] {
        match ch.queue_declare(&q) {
            Err(Error::InvalidArgument(why)) => {
                assert!(why.contains("not available on redis://"), "{why}")
            }
            other => panic!("{q:?}: {other:?}"),
        }
    }
    let ch = c.channel().unwrap();
    match ch.exchange_declare(&Exchange::new("h", ExchangeKind::Headers)) {
        Err(Error::InvalidArgument(why)) => assert!(why.contains("headers exchanges"), "{why}"),
        other => panic!("{other:?}"),
    }
    // Nothing was written for any of them.
    assert_eq!(cmd(&r, &["DBSIZE"]), ":0");
}

#[test]
fn priorities_map_to_kombus_steps_in_both_directions() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("p").with_max_priority(9))
        .unwrap();
    let p = ch.producer();
    // dashi 9 → kombu 0 (the bare list, drained first); 5 → kombu 4
    // (step 3); 2 → kombu 7 (step 6); none → kombu 9 (step 9).
    for (prio, body) in [
        (Some(2), "two"),
        (None, "none"),
        (Some(9), "nine"),
        (Some(5), "five"),
    ] {
        let mut m = Message::new(body);
        m.properties.priority = prio;
        p.publish(m, "p").unwrap();
    }
    assert_eq!(llen(&r, "p"), 1);
    assert_eq!(llen(&r, "p\x06\x163"), 1);
    assert_eq!(llen(&r, "p\x06\x166"), 1);
    assert_eq!(llen(&r, "p\x06\x169"), 1);
    let s = c.stats().queue("p").unwrap();
    assert_eq!(s.depth_by_lane, [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]);
    assert_eq!(s.messages, 4);
    // kombu's own priorities: 0 is its most urgent, read as dashi's 9.
    for (kp, tag) in [(9, "k9"), (0, "k0")] {
        let raw = format!(
            r#"{{"body": "{tag}", "properties": {{"delivery_tag": "{tag}", "priority": {kp}, "delivery_info": {{"exchange": "", "routing_key": "p"}}}}}}"#
        );
        let key = if kp == 0 {
            "p".to_owned()
        } else {
            format!("p\x06\x16{kp}")
        };
        r.command(&["LPUSH", &key, &raw]).unwrap();
    }
    let mut got = Vec::new();
    while let Some(d) = ch.get("p", Duration::ZERO).unwrap() {
        got.push((String::from_utf8_lossy(d.body()).into_owned(), d.priority()));
        d.ack().unwrap();
    }
    assert_eq!(
        got,
        [
            ("nine".into(), 9),
            ("k0".into(), 9),
            ("five".into(), 5),
            ("two".into(), 2),
            ("none".into(), 0),
            ("k9".into(), 0),
        ]
    );
    // Everything acked: kombu's unacked keys are gone, as kombu leaves them.
    eventually(&r, &["EXISTS", "unacked", "unacked_index"], ":0");
}

#[test]
fn stats_from_another_process_see_every_queue_and_its_unacked() {
    let r = RedisServer::start();
    let a = connect(&r.url());
    let ch = a.channel().unwrap();
    ch.queue_declare(&Queue::new("s").with_max_priority(9))
        .unwrap();
    let p = ch.producer();
    p.publish(Message::new("urgent").with_priority(9), "s")
        .unwrap();
    p.publish("plain", "s").unwrap();
    p.publish("plain", "s").unwrap();
    let held = ch.get("s", WAIT).unwrap().unwrap();
    assert_eq!(&held.body()[..], b"urgent");
    // A kombu queue: bound by kombu, one message, one unacked entry of its own.
    r.command_bytes(&[
        b"SADD",
        b"_kombu.binding.celery",
        b"celery\x06\x16\x06\x16celery",
    ])
    .unwrap();
    cmd(
        &r,
        &[
            "LPUSH",
            "celery",
            r#"{"body": "", "properties": {"delivery_tag": "c1"}}"#,
        ],
    );
    cmd(
        &r,
        &[
            "HSET",
            "unacked",
            "k1",
            r#"[{"body": "", "properties": {"delivery_tag": "k1"}}, "celery", "celery"]"#,
        ],
    );
    // Another process (another transport) that declared nothing.
    let b = connect(&format!("{}?timeout=5", r.url()));
    let all = b.stats().queues().unwrap();
    let s = all.iter().find(|q| q.name == "s").expect("s is listed");
    assert_eq!((s.messages, s.unacked, s.consumers), (2, 1, 0));
    assert_eq!(
        s.depth_by_lane[0], 2,
        "priority-less messages are dashi's lane 0"
    );
    let celery = b.stats().queue("celery").expect("kombu's queue is listed");
    assert_eq!((celery.messages, celery.unacked), (1, 1));
    assert!(b
        .stats()
        .queue("nothing-here")
        .is_err_and(|e| matches!(e, dashi::Error::UnknownQueue(_))));
    held.ack().unwrap();
}

#[test]
fn garbage_is_set_aside_and_consumption_continues() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("g")).unwrap();
    for bad in [
        "not json",
        r#"{"body": "x"}"#,
        r#"{"body": "x", "headers": null, "properties": {"delivery_tag": "n"}}"#,
        r#"{"body": "x", "properties": {"delivery_tag": "e", "body_encoding": "rot13"}}"#,
    ] {
        r.command(&["LPUSH", "g", bad]).unwrap();
    }
    // Bytes that are not UTF-8, in a tag and in a header: these stayed
    // unacked (for the visibility timeout, an hour by default) while the
    // log said they were set aside.
    let not_utf8 = |before: &str, after: &str, byte: u8| {
        [before.as_bytes(), &[byte], after.as_bytes()].concat()
    };
    for bad in [
        not_utf8(
            r#"{"body": "aGk=", "properties": {"delivery_tag": "t"#,
            r#"", "body_encoding": "base64"}}"#,
            0xff,
        ),
        not_utf8(
            r#"{"body": "aGk=", "headers": {"x": ""#,
            r#""}, "properties": {"delivery_tag": "t2", "body_encoding": "base64"}}"#,
            0xc3,
        ),
    ] {
        r.command_bytes(&[b"LPUSH", b"g", &bad]).unwrap();
    }
    ch.producer().publish("good", "g").unwrap();
    let d = ch.get("g", WAIT).unwrap().expect("the good one");
    assert_eq!(&d.body()[..], b"good");
    d.ack().unwrap();
    assert!(ch.get("g", Duration::ZERO).unwrap().is_none());
    // All six kept, none lost, none left unacked.
    assert_eq!(llen(&r, "_dashi.garbage.g"), 6);
    eventually(&r, &["EXISTS", "unacked"], ":0");
    // Counted in the queue's figures, here and from another process.
    assert_eq!(c.stats().queue("g").expect("figures of g").garbage, 6);
    let other = connect(&format!("{}?timeout=5", r.url()));
    let figures = other.stats().queues().unwrap();
    let g = figures.iter().find(|q| q.name == "g").expect("g is listed");
    assert_eq!((g.messages, g.garbage), (0, 6));
}

/// `HLEN` of a key.
fn hlen(r: &RedisServer, key: &str) -> i64 {
    cmd(r, &["HLEN", key])
        .trim_start_matches(':')
        .parse()
        .unwrap()
}

/// Deliveries a consumer's callback keeps (not acked).
type Kept = std::sync::Arc<std::sync::Mutex<Vec<dashi::Delivery>>>;

/// A connection (`?batch=4` and `options`) whose queue `queue` holds
/// `m0`..`m{n-1}`, and a consumer on it (`opts`) that keeps every delivery
/// (the channel is returned: dropping it would close it).
fn keeping_consumer(
    r: &RedisServer,
    options: &str,
    queue: &str,
    n: usize,
    opts: ConsumerOptions,
) -> (Connection, dashi::Channel, dashi::Consumer, Kept) {
    let c = connect(&format!("{}?batch=4{options}", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new(queue)).unwrap();
    let p = ch.producer();
    for i in 0..n {
        p.publish(format!("m{i}"), queue).unwrap();
    }
    let kept = Kept::default();
    let consumer = ch
        .consume(opts, {
            let kept = kept.clone();
            move |d| kept.lock().unwrap().push(d)
        })
        .unwrap();
    (c, ch, consumer, kept)
}

/// The bodies of `kept`, taken out of it (acked when `ack`), each checked
/// not redelivered.
fn take_bodies(kept: &Kept, ack: bool) -> Vec<String> {
    kept.lock()
        .unwrap()
        .drain(..)
        .map(|d| {
            assert!(!d.redelivered());
            let body = String::from_utf8_lossy(d.body()).into_owned();
            if ack {
                d.ack().unwrap();
            }
            body
        })
        .collect()
}

/// `m{from}`..`m{to-1}`.
fn bodies_from(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("m{i}")).collect()
}

#[test]
fn a_lone_consumer_takes_the_next_batch_ahead_and_a_cancel_puts_it_back_unseen() {
    let r = RedisServer::start();
    let (c, _ch, consumer, kept) = keeping_consumer(&r, "", "ra", 300, ConsumerOptions::new("ra"));
    // One pass delivers a drain batch (256) in pops of 4, each sent before
    // the one before it is delivered; the last leaves the next 4 on the
    // way, held for this consumer (its window has room for them).
    assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 256);
    let held: Vec<String> = kept
        .lock()
        .unwrap()
        .iter()
        .map(|d| String::from_utf8_lossy(d.body()).into_owned())
        .collect();
    assert_eq!(
        held,
        bodies_from(0, 256),
        "delivered in order across the pops"
    );
    eventually(&r, &["HLEN", "unacked"], ":260");
    assert_eq!(llen(&r, "ra"), 40);
    // Cancelled: the 4 taken ahead go back at the head, unseen; the 256
    // delivered stay unacked on the channel (AMQP).
    consumer.cancel().unwrap();
    assert_eq!(llen(&r, "ra"), 44);
    assert_eq!(hlen(&r, "unacked"), 256);
    let other = connect(&format!("{}?timeout=5", r.url()));
    let och = other.channel().unwrap();
    let next = och
        .get("ra", WAIT)
        .unwrap()
        .expect("the first one taken ahead");
    assert_eq!(
        (&next.body()[..], next.redelivered()),
        (&b"m256"[..], false)
    );
    next.ack().unwrap();
}

#[test]
fn messages_taken_ahead_and_not_yet_asked_for_are_kept_from_restorers() {
    let r = RedisServer::start();
    let (c, _ch, _consumer, kept) = keeping_consumer(
        &r,
        "&visibility_timeout=2",
        "k",
        300,
        ConsumerOptions::new("k"),
    );
    assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 256);
    let mut bodies = take_bodies(&kept, true);
    eventually(&r, &["HLEN", "unacked"], ":4");
    // Nobody asks for the 4 taken ahead for twice the visibility timeout:
    // they are re-scored like deliveries, so no restore scan (this
    // process's own runs every 0.5 s) puts them back.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(llen(&r, "k"), 40);
    let mut n = 256;
    while n < 300 {
        n += c.drain_events(Some(WAIT)).unwrap();
    }
    bodies.extend(take_bodies(&kept, true));
    assert_eq!(bodies, bodies_from(0, 300));
    assert!(c.drain_events(Some(Duration::from_millis(300))).is_err());
}

#[test]
fn messages_taken_ahead_of_a_deleted_queue_do_not_bring_it_back() {
    let r = RedisServer::start();
    let (c, ch, consumer, kept) =
        keeping_consumer(&r, "", "gone", 300, ConsumerOptions::new("gone"));
    assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 256);
    eventually(&r, &["HLEN", "unacked"], ":260");
    // Deleted with 40 ready, 256 delivered and 4 taken ahead: the 4 are
    // dropped with the queue when the consumer goes, not pushed back.
    assert_eq!(ch.queue_delete("gone", false, false).unwrap(), 40);
    drop(consumer);
    eventually(&r, &["HLEN", "unacked"], ":256");
    assert_eq!(cmd(&r, &["EXISTS", "gone"]), ":0");
    // The deliveries settle as acked: nothing is left behind.
    assert_eq!(take_bodies(&kept, true), bodies_from(0, 256));
    eventually(&r, &["EXISTS", "unacked"], ":0");
    assert_eq!(cmd(&r, &["EXISTS", "gone"]), ":0");
}

#[test]
fn messages_are_taken_ahead_only_within_the_prefetch_window() {
    let r = RedisServer::start();
    let opts = ConsumerOptions::new("w").prefetch_count(8);
    let (c, _ch, _consumer, kept) = keeping_consumer(&r, "", "w", 20, opts);
    let drain = |want: usize| {
        let mut n = 0;
        while n < want {
            n += c.drain_events(Some(WAIT)).unwrap();
        }
    };
    drain(8);
    assert!(c.drain_events(Some(Duration::from_millis(200))).is_err());
    // The window holds 8: nothing beyond them left the queue.
    assert_eq!((hlen(&r, "unacked"), llen(&r, "w")), (8, 12));
    // Acked, the next 8 come, in order.
    assert_eq!(take_bodies(&kept, true), bodies_from(0, 8));
    drain(8);
    assert_eq!(take_bodies(&kept, false), bodies_from(8, 16));
    eventually(&r, &["HLEN", "unacked"], ":8");
    assert_eq!(llen(&r, "w"), 4);
}

#[test]
fn the_pop_script_reads_every_tag_form_and_keeps_copies_of_one_tag_apart() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("t")).unwrap();
    let env = |body: &str, tag: &str| {
        format!(
            r#"{{"body": "{body}", "headers": {{}}, "properties": {{"body_encoding": "base64", "delivery_info": {{"exchange": "", "routing_key": "t"}}, "priority": 0, "delivery_tag": {tag}}}}}"#
        )
    };
    // The tag where kombu writes it (last), as a string and as a number;
    // elsewhere (read by decoding); and one tag twice.
    let mid = r#"{"properties": {"delivery_tag": "mid", "body_encoding": "base64", "delivery_info": {"exchange": "", "routing_key": "t"}}, "body": "Yw==", "headers": {"x": "a/b"}}"#;
    for raw in [
        env("YQ==", r#""s-1""#),
        env("Yg==", "42"),
        mid.to_owned(),
        env("ZA==", r#""same""#),
        env("ZQ==", r#""same""#),
    ] {
        r.command(&["LPUSH", "t", &raw]).unwrap();
    }
    let mut held = Vec::new();
    while let Some(d) = ch.get("t", Duration::from_millis(500)).unwrap() {
        held.push(d);
    }
    let bodies: Vec<&[u8]> = held.iter().map(|d| &d.body()[..]).collect();
    assert_eq!(bodies, [&b"a"[..], b"b", b"c", b"d", b"e"]);
    assert_eq!(
        held[2].properties().headers.get("x"),
        Some(&dashi::Value::Str("a/b".into()))
    );
    // One unacked entry each: the copies of "same" under two fields.
    let fields = cmd(&r, &["HKEYS", "unacked"]);
    for f in ["s-1", "42", "mid", "same"] {
        assert!(fields.lines().any(|l| l == f), "{f} in {fields:?}");
    }
    assert_eq!(hlen(&r, "unacked"), 5);
    assert!(fields.lines().any(|l| l.starts_with("same.")), "{fields:?}");
    assert_eq!(llen(&r, "_dashi.garbage.t"), 0);
    for d in held {
        d.ack().unwrap();
    }
    eventually(&r, &["EXISTS", "unacked"], ":0");
    eventually(&r, &["EXISTS", "unacked_index"], ":0");
}

#[test]
fn a_script_flush_costs_nothing() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("s")).unwrap();
    let p = ch.producer();
    p.publish("1", "s").unwrap();
    let d = ch.get("s", WAIT).unwrap().unwrap();
    assert_eq!(cmd(&r, &["SCRIPT", "FLUSH"]), "+OK");
    d.reject(true).unwrap();
    p.publish("2", "s").unwrap();
    let again = ch.get("s", WAIT).unwrap().unwrap();
    assert_eq!((&again.body()[..], again.redelivered()), (&b"1"[..], true));
    again.ack().unwrap();
    assert_eq!(&ch.get("s", WAIT).unwrap().unwrap().body()[..], b"2");
}

/// `calls` of one command in `INFO commandstats`.
fn calls(r: &RedisServer, command: &str) -> u64 {
    let info = cmd(r, &["INFO", "commandstats"]);
    let key = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[test]
fn publishes_made_while_replies_are_awaited_go_out_as_one_push() {
    let r = RedisServer::start();
    let c = connect(&format!("{}?timeout=10", r.url()));
    let ch = c
        .channel_with(dashi::ChannelOptions::new().confirm_window(4096))
        .unwrap();
    ch.queue_declare(&Queue::new("g")).unwrap();
    let p = ch.producer();
    p.publish("first", "g").unwrap();
    let before = calls(&r, "lpush");
    // Writes wait at the server, so the first publish's reply is late:
    // everything published meanwhile waits for it and then goes out as
    // one flush (one variadic LPUSH), not one command per publish.
    assert_eq!(cmd(&r, &["CLIENT", "PAUSE", "300", "WRITE"]), "+OK");
    let mut confirms = Vec::new();
    for i in 0..2000 {
        confirms.push(p.publish_async(format!("m{i}"), "g").unwrap());
    }
    for cf in confirms {
        cf.wait().unwrap();
    }
    let pushes = calls(&r, "lpush") - before;
    assert!(pushes <= 4, "{pushes} LPUSH calls for 2000 publishes");
    // In publish order for a kombu consumer (RPOP takes the oldest).
    assert_eq!(llen(&r, "g"), 2001);
    for want in std::iter::once("first".to_owned()).chain((0..2000).map(|i| format!("m{i}"))) {
        let d = ch.get("g", WAIT).unwrap().expect("a message");
        assert_eq!(d.body(), want.as_bytes());
        d.ack().unwrap();
    }
}

#[test]
fn a_delivery_is_scored_in_whole_seconds_never_before_it_was_taken() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("s")).unwrap();
    ch.producer().publish("x", "s").unwrap();
    let secs = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = secs();
    let _d = ch.get("s", WAIT).unwrap().expect("a message");
    let after = secs();
    // `*2 $len tag $len score`: the score is the last line.
    let reply = cmd(&r, &["ZRANGE", "unacked_index", "0", "-1", "WITHSCORES"]);
    let score = reply.lines().last().unwrap();
    let whole: u64 = score.parse().unwrap_or_else(|_| panic!("score {score:?}"));
    // Rounded up: a restorer never finds it older than it is.
    assert!(whole as f64 >= before, "{whole} < {before}");
    assert!(whole as f64 <= after.ceil(), "{whole} > {after}");
}

#[test]
fn killed_connections_leave_publishes_confirmed_or_reported_unconfirmed() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("k")).unwrap();
    let p = ch.producer();
    let mut confirms = Vec::new();
    for i in 0..2000 {
        confirms.push(p.publish_async(i.to_string(), "k").unwrap());
        if i == 1000 {
            let reply = r.command(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
            assert!(reply.unwrap().starts_with(':'));
        }
    }
    let (mut ok, mut unconfirmed) = (0, 0);
    for cf in confirms {
        match cf.wait() {
            Ok(()) => ok += 1,
            Err(e) => {
                assert!(
                    e.is_unconfirmed() || matches!(e, PublishError::Store { .. }),
                    "{e}"
                );
                assert!(e.is_transient(), "{e}");
                unconfirmed += 1;
            }
        }
    }
    assert_eq!(ok + unconfirmed, 2000);
    // Every confirmed publish is stored (unconfirmed ones may be too).
    let stored = llen(&r, "k");
    assert!(stored >= ok as i64, "{stored} stored, {ok} confirmed");
    // The connection heals: publish and consume go on.
    p.publish("after", "k").unwrap();
    assert!(ch.get("k", WAIT).unwrap().is_some());
    assert!(c.health().is_ok());
}

#[test]
fn a_paused_server_times_calls_out_and_they_work_again_after() {
    let r = RedisServer::start();
    let c = connect(&format!("{}?timeout=0.3", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("z")).unwrap();
    let sleeper = std::thread::spawn({
        let port = r.port();
        move || RedisServer::command_on(port, &["DEBUG", "SLEEP", "1.5"])
    });
    std::thread::sleep(Duration::from_millis(100));
    // Ok when the publish reached the server before the pause began.
    if let Err(e) = ch.producer().publish("during", "z") {
        assert!(e.is_transient(), "{e}");
    }
    sleeper.join().unwrap().unwrap();
    ch.producer().publish("after", "z").unwrap();
    let mut bodies = Vec::new();
    while let Some(d) = ch.get("z", Duration::from_millis(200)).unwrap() {
        bodies.push(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().unwrap();
    }
    assert!(bodies.contains(&"after".to_owned()), "{bodies:?}");
}

#[test]
fn writes_paused_past_the_timeout_are_unconfirmed_and_nothing_confirmed_is_lost() {
    let r = RedisServer::start();
    let c = connect(&format!("{}?timeout=0.3", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("pw")).unwrap();
    ch.producer().publish("before", "pw").unwrap();
    assert_eq!(cmd(&r, &["CLIENT", "PAUSE", "1500", "WRITE"]), "+OK");
    let during = ch.producer().publish("during", "pw");
    if let Err(e) = &during {
        // Sent, never answered in time: it may be stored.
        assert!(e.is_unconfirmed() && e.is_transient(), "{e}");
    }
    // Reads go on while writes are paused: the figures answer.
    assert!(c.stats().queue("pw").is_ok());
    // Past the pause (1.5 s), everything stored has been taken.
    let until = Instant::now() + Duration::from_secs(3);
    let mut bodies = Vec::new();
    while Instant::now() < until {
        match ch.get("pw", Duration::from_millis(200)) {
            Ok(Some(d)) => {
                bodies.push(String::from_utf8_lossy(d.body()).into_owned());
                d.ack().unwrap();
            }
            Ok(None) => {}
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    assert!(bodies.contains(&"before".to_owned()), "{bodies:?}");
    if during.is_ok() {
        assert!(bodies.contains(&"during".to_owned()), "{bodies:?}");
    }
    ch.producer().publish("after", "pw").unwrap();
    assert!(ch.get("pw", WAIT).unwrap().is_some());
}

#[test]
fn a_restarted_server_keeps_every_confirmed_message_and_consumers_resume() {
    let mut r = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("r")).unwrap();
    let p = ch.producer();
    for i in 0..100 {
        p.publish(i.to_string(), "r").unwrap();
    }
    r.restart();
    // The first call after the restart finds the old link dead.
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < 100 && Instant::now() < deadline {
        match ch.get("r", Duration::from_millis(100)) {
            Ok(Some(d)) => {
                d.ack().unwrap();
                got += 1;
            }
            Ok(None) => {}
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    assert_eq!(got, 100);
}

/// A replica of `primary`, once it is in sync.
fn replica_of(primary: &RedisServer) -> RedisServer {
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    let until = Instant::now() + WAIT;
    while !cmd(primary, &["INFO", "replication"]).contains("state=online") && Instant::now() < until
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    replica
}

#[test]
fn replicated_confirms_wait_for_a_replica_and_say_when_none_answers() {
    let primary = RedisServer::start();
    let mut replica = replica_of(&primary);
    let c = connect(&format!("{}?confirm=replicated:1&timeout=5", primary.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("rep")).unwrap();
    let p = ch.producer();
    for i in 0..50 {
        p.publish(i.to_string(), "rep").unwrap();
    }
    // Confirmed means on the replica too.
    assert_eq!(llen(&replica, "rep"), 50);
    replica.kill();
    match p.publish("alone", "rep") {
        Err(e) => {
            assert!(e.is_unconfirmed(), "{e}");
            assert!(e.to_string().contains("0 of 1 replicas"), "{e}");
        }
        Ok(()) => panic!("confirmed without a replica"),
    }
}

#[test]
fn a_promoted_replica_has_every_replicated_confirm_and_the_failover_list_finds_it() {
    let mut primary = RedisServer::start();
    let replica = replica_of(&primary);
    // Options are the first URL's; the second is where the list goes next.
    let url = format!(
        "{}?confirm=replicated:1&timeout=5;{}",
        primary.url(),
        replica.url()
    );
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("ha")).unwrap();
    for i in 0..100 {
        ch.producer().publish(i.to_string(), "ha").unwrap();
    }
    primary.kill();
    assert_eq!(cmd(&replica, &["REPLICAOF", "NO", "ONE"]), "+OK");
    // The connection walks its list to the promoted replica: every
    // confirmed message is there.
    let mut got = 0;
    let until = Instant::now() + WAIT;
    while got < 100 && Instant::now() < until {
        match ch.get("ha", Duration::from_millis(200)) {
            Ok(Some(d)) => {
                d.ack().unwrap();
                got += 1;
            }
            Ok(None) => {}
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    assert_eq!(got, 100);
}

/// A failover as Sentinel makes it: the replica promoted, the old primary
/// made its replica. The old primary answers writes with `READONLY` from
/// then on; the connection used to stay with it, failing every publish
/// and pop, and a list naming the replica first never got past it.
#[test]
fn a_failover_list_leaves_a_server_that_became_a_replica() {
    let a = RedisServer::start();
    let b = replica_of(&a);
    let url = format!("{}?timeout=5;{}", a.url(), b.url());
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("fo")).unwrap();
    ch.producer().publish("one", "fo").unwrap();
    eventually(&b, &["LLEN", "fo"], ":1");
    assert_eq!(cmd(&b, &["REPLICAOF", "NO", "ONE"]), "+OK");
    assert_eq!(
        cmd(&a, &["REPLICAOF", "127.0.0.1", &b.port().to_string()]),
        "+OK"
    );
    // At most the publish that met `READONLY` fails (refused, transient).
    let until = Instant::now() + WAIT;
    let mut refusals = 0;
    loop {
        match ch.producer().publish("two", "fo") {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                refusals += 1;
                assert!(Instant::now() < until, "never published: {e}");
            }
        }
    }
    assert!(refusals <= 1, "{refusals} refusals");
    assert_eq!(llen(&b, "fo"), 2, "on the promoted server");
    let mut got = Vec::new();
    while let Some(d) = ch.get("fo", Duration::ZERO).unwrap() {
        got.push(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().unwrap();
    }
    assert_eq!(got, ["one", "two"]);
    // A list that names the replica first goes on to the primary at once:
    // the replica refuses it nothing (its count of `READONLY` answers).
    let refused = || {
        cmd(&a, &["INFO", "errorstats"])
            .lines()
            .find(|l| l.starts_with("errorstat_READONLY:"))
            .map(str::to_owned)
    };
    let before = refused();
    // (Another URL: a transport of its own, as in another process.)
    let c = connect(&format!("{}?timeout=6;{}", a.url(), b.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("fo")).unwrap();
    ch.producer().publish("three", "fo").unwrap();
    assert_eq!(refused(), before);
    assert_eq!(llen(&b, "fo"), 1);
}

#[test]
fn a_full_redis_refuses_publishes_and_consumers_still_drain_it() {
    let r = RedisServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("full")).unwrap();
    let body = vec![b'x'; 2000];
    let mut confirmed = 0;
    let refused = loop {
        match ch.producer().publish(body.clone(), "full") {
            Ok(()) => confirmed += 1,
            Err(e) => break e,
        }
        assert!(confirmed < 100_000, "never full");
    };
    // Refused, not unconfirmed: Redis said OOM before storing it.
    assert!(
        matches!(&refused, PublishError::Store { failure, .. } if failure.kind == dashi::FailureKind::NoSpace),
        "{refused}"
    );
    assert!(!refused.is_transient());
    assert_eq!(refused.into_message().body.len(), 2000, "handed back");
    // Pipelined the same: the confirm fails refused, never "may or may not
    // be stored" (it did, and a retry then looked like a duplicate risk).
    let confirm = ch
        .producer()
        .publish_async(body.clone(), "full")
        .expect("sent");
    let refused = confirm.wait().unwrap_err();
    assert!(
        matches!(&refused, PublishError::Refused { failure, routing_key, .. }
            if failure.is_refused() && &**routing_key == "full"),
        "{refused}"
    );
    assert!(!refused.is_unconfirmed());
    // The pop script's first write grows nothing, and Redis refuses a
    // growing write to a script only as its first: it runs on a full
    // server.
    let mut got = 0;
    while let Some(d) = ch.get("full", Duration::from_millis(200)).unwrap() {
        d.ack().unwrap();
        got += 1;
    }
    assert_eq!(got, confirmed, "every confirmed publish consumed");
    ch.producer().publish(body, "full").unwrap();
}

/// Figures Redis refuses to give (here an ACL user without access to the
/// queue's keys) are an error naming what Redis said: they used to read as
/// "no such queue" and an empty list, which a monitor would take for a
/// queue deleted and a server with no queues.
#[test]
fn figures_the_server_refuses_are_an_error_not_a_missing_queue() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("fig")).unwrap();
    ch.producer().publish("x", "fig").unwrap();
    r.command(&[
        "ACL", "SETUSER", "nokeys", "on", ">pw", "~other*", "&*", "+@all",
    ])
    .unwrap();
    let limited = connect(&format!("redis://nokeys:pw@127.0.0.1:{}", r.port()));
    let e = limited.stats().queue("fig").unwrap_err();
    assert!(!matches!(e, dashi::Error::UnknownQueue(_)), "{e}");
    assert!(e.to_string().contains("NOPERM"), "{e}");
    let e = limited.stats().queues().unwrap_err();
    assert!(e.to_string().contains("NOPERM"), "{e}");
    // The same figures with access: the queue and its message.
    assert_eq!(c.stats().queue("fig").unwrap().messages, 1);
    assert!(matches!(
        c.stats().queue("none-such"),
        Err(dashi::Error::UnknownQueue(_))
    ));
}

/// Lines a `tracing` subscriber writes, kept for a test to read.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An auto-delete queue whose delete Redis refuses (here an ACL user
/// without `DEL`) stays, with its messages, and the cancel says so: it was
/// kept without a word.
#[test]
fn an_auto_delete_queue_redis_will_not_delete_stays_and_is_warned_of() {
    let r = RedisServer::start();
    r.command(&[
        "ACL", "SETUSER", "nodel", "on", ">pw", "~*", "&*", "+@all", "-del",
    ])
    .unwrap();
    let url = format!("redis://nodel:pw@127.0.0.1:{}", r.port());
    let lines = Captured::default();
    let sink = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let c = connect(&url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("ad").with_auto_delete(true))
            .unwrap();
        ch.producer().publish("kept", "ad").unwrap();
        // No drain runs the callback: whatever was taken ahead goes back
        // unseen at the cancel, and the message stays ready.
        let consumer = ch.consume(ConsumerOptions::new("ad"), |_| {}).unwrap();
        consumer.cancel().unwrap();
    });
    let said = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    assert!(
        said.contains("auto-delete queue kept") && said.contains("NOPERM"),
        "{said}"
    );
    // Still there for anyone, with its message.
    let admin = connect(&r.url());
    assert_eq!(admin.stats().queue("ad").unwrap().messages, 1);
}

#[test]
fn passwords_are_never_printed() {
    let r = RedisServer::start_with(&["--requirepass", "s3cr3t-pw"]);
    let good = format!("redis://:s3cr3t-pw@127.0.0.1:{}", r.port());
    let c = connect(&good);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("pw")).unwrap();
    ch.producer().publish("x", "pw").unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t"));
    let bad = format!("redis://:wrong-pw@127.0.0.1:{}", r.port());
    let e = dashi::connect(&bad).unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(!shown.contains("wrong-pw"), "{shown}");
    assert!(
        shown.contains("WRONGPASS") || shown.contains("invalid"),
        "{shown}"
    );
    assert!(!e.is_transient(), "a refused login is not retried: {e}");
    let list = format!(
        "redis://:wrong-pw@127.0.0.1:1;redis://:other-pw@127.0.0.1:{}",
        r.port()
    );
    let e = dashi::connect(&list).unwrap_err();
    assert!(!format!("{e:?}").contains("-pw"), "{e:?}");
}

#[test]
fn a_unix_socket_url_reaches_the_server() {
    let dir = dashi_test_support::TestDir::new();
    let sock = dir.child("redis.sock");
    let sock = sock.to_str().unwrap();
    let r = RedisServer::start_with(&["--unixsocket", sock, "--unixsocketperm", "700"]);
    let c = connect(&format!("redis+socket://{sock}?db=3"));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("u")).unwrap();
    ch.producer().publish("over a unix socket", "u").unwrap();
    assert_eq!(
        r.command(&[
            "EVAL",
            "redis.call('SELECT', 3) return redis.call('LLEN', 'u')",
            "0"
        ])
        .unwrap(),
        ":1"
    );
    let d = ch.get("u", WAIT).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"over a unix socket");
    d.ack().unwrap();
}

#[test]
fn a_health_check_finds_a_dead_link_before_a_caller_does() {
    let r = RedisServer::start();
    let c = connect(&format!("{}?health_check_interval=0.05", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("h")).unwrap();
    let clients = |r: &RedisServer| cmd(r, &["CLIENT", "LIST"]).matches("name=dashi").count();
    let before = clients(&r);
    assert!(before >= 1);
    cmd(&r, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
    // Without any call from the application, the links come back.
    let until = Instant::now() + WAIT;
    while clients(&r) < before && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(clients(&r) >= before, "reconnected by the health check");
    assert!(c.health().is_ok());
}

#[test]
fn a_failover_list_is_walked_to_the_server_that_answers() {
    let r = RedisServer::start();
    // Port 1 refuses at once; the second server answers.
    let c = connect(&format!("redis://127.0.0.1:1;{}", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("f")).unwrap();
    ch.producer().publish("x", "f").unwrap();
    assert_eq!(llen(&r, "f"), 1);
}

// ---- a consumer killed with deliveries it never acked --------------------

const CHILD: &str = "DASHI_REDIS_CHILD";

/// Run as a child: takes two messages, says so, and waits to be killed.
#[test]
#[ignore = "run by a_killed_consumers_messages_come_back_marked_redelivered"]
fn child_role() {
    let url = std::env::var(CHILD).expect("run by the tests in this file");
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("crash")).unwrap();
    let a = ch.get("crash", WAIT).unwrap().expect("a message");
    let b = ch.get("crash", WAIT).unwrap().expect("a message");
    dashi_test_support::say(format!(
        "held {} {}",
        String::from_utf8_lossy(a.body()),
        String::from_utf8_lossy(b.body())
    ));
    std::thread::sleep(Duration::from_secs(600));
}

fn holder(url: &str) -> (Child, ChildLines) {
    let mut child = dashi_test_support::child_role("child_role", CHILD, url.to_owned())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = ChildLines::of(&mut child);
    lines.until("held ");
    (child, lines)
}

#[test]
fn a_killed_consumers_messages_come_back_marked_redelivered() {
    let r = RedisServer::start();
    let url = format!("{}?visibility_timeout=1", r.url());
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("crash")).unwrap();
    for b in ["a", "b", "c"] {
        ch.producer().publish(b, "crash").unwrap();
    }
    let (mut child, _lines) = holder(&url);
    dashi_test_support::kill(&mut child);
    // The survivor's scan restores them after the visibility timeout, in
    // their order; "c" was never taken and is delivered unmarked.
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 3 && Instant::now() < deadline {
        if let Some(d) = ch.get("crash", Duration::from_millis(200)).unwrap() {
            got.push((
                String::from_utf8_lossy(d.body()).into_owned(),
                d.redelivered(),
            ));
            d.ack().unwrap();
        }
    }
    let marked: Vec<&(String, bool)> = got.iter().filter(|(_, r)| *r).collect();
    assert_eq!(
        marked,
        [&("a".to_owned(), true), &("b".to_owned(), true)],
        "{got:?}"
    );
    assert!(got.contains(&("c".to_owned(), false)), "{got:?}");
    eventually(&r, &["EXISTS", "unacked"], ":0");
}

#[test]
fn entries_of_one_second_are_restored_in_their_order() {
    let r = RedisServer::start();
    // Three deliveries of a process that died, taken in one second (one
    // score), their tags in the order they were taken, as kombu and dashi
    // write them.
    let old = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60)
        .to_string();
    for (tag, body) in [("t1", "b1"), ("t2", "b2"), ("t3", "b3")] {
        let env = format!(
            "{{\"body\": \"{body}\", \"content-encoding\": \"utf-8\", \"content-type\": \"text/plain\", \"headers\": {{}}, \"properties\": {{\"delivery_mode\": 2, \"delivery_info\": {{\"exchange\": \"\", \"routing_key\": \"o\"}}, \"priority\": 0, \"body_encoding\": \"utf-8\", \"delivery_tag\": \"{tag}\"}}}}"
        );
        let value = format!("[{env}, \"\", \"o\"]");
        assert_eq!(cmd(&r, &["HSET", "unacked", tag, &value]), ":1");
        assert_eq!(cmd(&r, &["ZADD", "unacked_index", &old, tag]), ":1");
    }
    let c = connect(&format!("{}?visibility_timeout=1", r.url()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("o")).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 3 && Instant::now() < deadline {
        if let Some(d) = ch.get("o", Duration::from_millis(200)).unwrap() {
            assert!(d.redelivered());
            got.push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        }
    }
    assert_eq!(got, ["b1", "b2", "b3"]);
}

/// The restore lock is a short lease (at most 10 s, renewed while a pass
/// runs), not kombu's 300 s: a restorer killed while holding it holds the
/// others up for seconds. Here a dead holder's lease stands when a
/// consumer dies; its messages come back once the lease ran out, and the
/// lock dashi itself takes is `PX` 10000 with kombu's default
/// `unacked_mutex_expire` of 300 s.
#[test]
fn a_restore_lock_left_by_a_dead_restorer_runs_out_in_seconds() {
    let r = RedisServer::start();
    let url = format!("{}?visibility_timeout=1", r.url());
    let mut monitor = std::process::Command::new("redis-cli")
        .args(["-p", &r.port().to_string(), "monitor"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-cli runs");
    let mut seen = ChildLines::of(&mut monitor);
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("crash")).unwrap();
    for b in ["a", "b", "c"] {
        ch.producer().publish(b, "crash").unwrap();
    }
    let (mut child, _lines) = holder(&url);
    // A restorer that died holding the lock, as dashi takes it.
    assert_eq!(
        cmd(&r, &["SET", "unacked_mutex", "dead", "PX", "3000"]),
        "+OK"
    );
    dashi_test_support::kill(&mut child);
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < 3 && started.elapsed() < 2 * WAIT {
        if let Some(d) = ch.get("crash", Duration::from_millis(200)).unwrap() {
            got.push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        }
    }
    got.sort();
    assert_eq!(got, ["a", "b", "c"]);
    let lock = seen.until("\"NX\"").pop().unwrap();
    assert!(
        lock.contains("\"SET\" \"unacked_mutex\"") && lock.contains("\"NX\" \"PX\" \"10000\""),
        "dashi's lock: {lock}"
    );
    let _ = monitor.kill();
    let _ = monitor.wait();
}

// ---- consumers killed at seeded points ------------------------------------

const WORKER: &str = "DASHI_REDIS_WORKER";

/// Run as a child: consumes "work", saying what it got before acking and
/// what it acked after, until killed.
#[test]
#[ignore = "run by consumers_killed_at_seeded_points_lose_nothing_and_flag_every_redelivery"]
fn worker_role() {
    let url = std::env::var(WORKER).expect("run by the tests in this file");
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("work")).unwrap();
    let _consumer = ch
        .consume(ConsumerOptions::new("work").prefetch_count(16), |d| {
            let body = String::from_utf8_lossy(d.body()).into_owned();
            dashi_test_support::say(format!("got {body} {}", d.redelivered()));
            // Work: widens the window between delivery and ack.
            std::thread::sleep(Duration::from_millis(2));
            d.ack().unwrap();
            dashi_test_support::say(format!("acked {body}"));
        })
        .unwrap();
    loop {
        let _ = c.drain_events(Some(Duration::from_secs(1)));
    }
}

/// A small deterministic generator (the seed is printed on failure).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn consumers_killed_at_seeded_points_lose_nothing_and_flag_every_redelivery() {
    let seed0: u64 = std::env::var("DASHI_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_da51);
    let mut seed = seed0 | 1;
    let r = RedisServer::start();
    let url = format!("{}?visibility_timeout=1", r.url());
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("work")).unwrap();
    let n = 400;
    for i in 0..n {
        ch.producer().publish(format!("m{i}"), "work").unwrap();
    }
    // Every delivery seen by the application, in order: (body, redelivered).
    let mut deliveries: Vec<(String, bool)> = Vec::new();
    let mut acked: std::collections::HashSet<String> = Default::default();
    for _ in 0..8 {
        let mut child = dashi_test_support::child_role("worker_role", WORKER, url.clone())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = ChildLines::of(&mut child);
        // The kill lands while it consumes: after its first delivery (a
        // loaded machine may take long to start a process).
        let first = if acked.len() < n {
            lines.until("got ")
        } else {
            Vec::new()
        };
        let reader = std::thread::spawn(move || lines.rest().collect::<Vec<String>>());
        std::thread::sleep(Duration::from_millis(next(&mut seed) % 400));
        dashi_test_support::kill(&mut child);
        for l in first.into_iter().chain(reader.join().unwrap()) {
            let parts: Vec<&str> = l.split_whitespace().collect();
            match parts[..] {
                ["got", body, flag] => deliveries.push((body.to_owned(), flag == "true")),
                ["acked", body] => {
                    acked.insert(body.to_owned());
                }
                _ => {}
            }
        }
    }
    // What the killed workers left unacked comes back after the
    // visibility timeout; the survivor takes the rest.
    let until = Instant::now() + Duration::from_secs(30);
    while acked.len() < n && Instant::now() < until {
        if let Some(d) = ch.get("work", Duration::from_millis(200)).unwrap() {
            let body = String::from_utf8_lossy(d.body()).into_owned();
            deliveries.push((body.clone(), d.redelivered()));
            d.ack().unwrap();
            acked.insert(body);
        }
    }
    let missing: Vec<String> = (0..n)
        .map(|i| format!("m{i}"))
        .filter(|m| !acked.contains(m))
        .collect();
    assert!(missing.is_empty(), "seed {seed0}: lost {missing:?}");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (body, redelivered) in &deliveries {
        let k = seen.entry(body).or_default();
        assert!(
            *k == 0 || *redelivered,
            "seed {seed0}: {body} delivered again without the redelivered mark"
        );
        *k += 1;
    }
    let again = deliveries.iter().filter(|(_, r)| *r).count();
    assert!(
        again > 0,
        "seed {seed0}: no kill landed between a delivery and its ack"
    );
    eventually(&r, &["EXISTS", "unacked"], ":0");
}

/// An auto-delete queue consumed by two dashi processes goes with the last
/// consumer of the two, not with one process's last: that took its lists
/// and bindings, and the messages the other process was consuming, with
/// it. A consuming process renews its lease; one that stops (killed) stops
/// counting once its lease runs out.
#[test]
fn an_auto_delete_queue_stays_while_another_dashi_process_consumes_it() {
    use std::sync::{Arc, Mutex};
    let r = RedisServer::start();
    // Another URL is another transport instance: as another process.
    let a = connect(&format!("{}?visibility_timeout=3", r.url()));
    let b = connect(&format!("{}?visibility_timeout=3&timeout=5", r.url()));
    let decl = Queue::new("shared").with_auto_delete(true);
    let (ach, bch) = (a.channel().unwrap(), b.channel().unwrap());
    let declare = || {
        for ch in [&ach, &bch] {
            ch.exchange_declare(&Exchange::new("ex", ExchangeKind::Direct))
                .unwrap();
            ch.queue_declare(&decl).unwrap();
            ch.queue_bind("shared", "ex", "k", Default::default())
                .unwrap();
        }
    };
    declare();
    let bound = || cmd(&r, &["SMEMBERS", "_kombu.binding.ex"]);
    assert!(bound().contains("shared"), "{}", bound());
    let got = Arc::new(Mutex::new(Vec::new()));
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
        bound().contains("shared"),
        "the queue went while another process consumed it"
    );
    ach.producer()
        .with_exchange("ex")
        .publish("after", "k")
        .unwrap();
    let until = Instant::now() + WAIT;
    while got.lock().unwrap().is_empty() && Instant::now() < until {
        let _ = b.drain_events(Some(Duration::from_millis(100)));
    }
    assert_eq!(*got.lock().unwrap(), [b"after".to_vec()]);
    in_b.cancel().unwrap();
    assert!(!bound().contains("shared"), "the last consumer left it");

    // A consuming process renews its lease.
    declare();
    let held = bch.consume(ConsumerOptions::new("shared"), |_| {}).unwrap();
    let key = "_dashi.consumers.shared";
    assert_eq!(cmd(&r, &["ZCARD", key]), ":1");
    // Its lease (5 s with this visibility timeout, renewed every second)
    // is renewed while it consumes.
    std::thread::sleep(Duration::from_secs(6));
    let in_a = ach.consume(ConsumerOptions::new("shared"), |_| {}).unwrap();
    in_a.cancel().unwrap();
    assert!(
        bound().contains("shared"),
        "a consumer's lease ran out while it consumed"
    );
    held.cancel().unwrap();
    assert!(!bound().contains("shared"), "the last consumer left it");

    // The entry of a process that died consuming (nobody renews it) whose
    // lease ran out no longer keeps the queue. A live process would renew
    // its own entry: this one belongs to no transport.
    declare();
    cmd(&r, &["ZADD", key, "1", "a-process-killed-long-ago"]);
    let in_a = ach.consume(ConsumerOptions::new("shared"), |_| {}).unwrap();
    in_a.cancel().unwrap();
    assert!(
        !bound().contains("shared"),
        "an entry whose lease ran out kept the queue"
    );
    assert_eq!(cmd(&r, &["EXISTS", key]), ":0");
}

/// A queue another process declared is found by name from a process that
/// declared nothing, whatever is on the server at that moment: when every
/// message of it is delivered and unacked (its consumer may be dead, and the
/// next must wait for them to come back), and when its last message goes
/// between a look at its figures and the consumer's start (kombu's layout
/// leaves no trace of an empty queue; `dashi consume` does exactly this).
/// And it is purged by name, as kombu purges.
#[test]
fn a_queue_declared_elsewhere_is_found_and_purged_by_name_whatever_it_holds() {
    let r = RedisServer::start();
    let a = connect(&r.url());
    let cha = a.channel().unwrap();
    for q in ["held", "drained", "purged"] {
        cha.queue_declare(&Queue::new(q)).unwrap();
    }
    let p = cha.producer();
    p.publish("h", "held").unwrap();
    p.publish("d", "drained").unwrap();
    for _ in 0..3 {
        p.publish("x", "purged").unwrap();
    }
    let held = cha.get("held", WAIT).unwrap().expect("held");
    assert_eq!(llen(&r, "held"), 0, "only its unacked entry names it");

    // Another process (another transport) that declared nothing.
    let b = connect(&format!("{}?timeout=5", r.url()));
    let chb = b.channel().unwrap();
    assert!(
        chb.get("held", Duration::ZERO).unwrap().is_none(),
        "found, nothing ready"
    );

    assert_eq!(b.stats().queue("drained").unwrap().messages, 1);
    let d = cha.get("drained", WAIT).unwrap().expect("drained");
    d.ack().unwrap();
    eventually(&r, &["EXISTS", "drained", "unacked"], ":1");
    let (tx, rx) = std::sync::mpsc::channel();
    let _late = chb
        .consume(ConsumerOptions::new("drained"), move |d| {
            tx.send(d.body().to_vec()).unwrap();
            d.ack().unwrap();
        })
        .expect("a queue seen a moment ago is still known");
    p.publish("after", "drained").unwrap();
    assert_eq!(b.drain_events(Some(WAIT)).unwrap(), 1);
    assert_eq!(rx.try_recv().unwrap(), b"after");

    assert_eq!(chb.queue_purge("purged").unwrap(), 3);
    assert_eq!(llen(&r, "purged"), 0);
    assert!(chb
        .queue_purge("never-declared")
        .is_err_and(|e| matches!(e, Error::UnknownQueue(_))));
    held.ack().unwrap();
}

/// A user whose ACL does not allow naming its connection (`client|setname`,
/// which kombu never sends) still connects and works: the name is only
/// for `CLIENT LIST`. Connecting used to be refused.
#[test]
fn a_user_who_may_not_name_its_connection_still_connects() {
    let r = RedisServer::start();
    r.command(&[
        "ACL",
        "SETUSER",
        "plain",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-client|setname",
    ])
    .unwrap();
    let c = connect(&format!("redis://plain:pw@127.0.0.1:{}", r.port()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("n")).unwrap();
    ch.producer().publish("x", "n").unwrap();
    let d = ch.get("n", WAIT).unwrap().expect("delivered");
    d.ack().unwrap();
}

/// A server that accepts and never answers (a stopped redis-server, not
/// Redis at all) is an error that says so within the URL's timeout; it
/// said "Resource temporarily unavailable".
#[test]
fn a_server_that_never_answers_is_a_timeout_that_says_so() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _held = std::thread::spawn(move || {
        let kept: Vec<_> = listener.incoming().take(8).collect();
        std::thread::sleep(Duration::from_secs(30));
        drop(kept);
    });
    let start = Instant::now();
    let e = dashi::connect(&format!("redis://127.0.0.1:{port}/0?timeout=1"))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no answer to the login within 1 s"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(20));
}

/// A write the server refuses for want of permission (an ACL without
/// `LPUSH`) is certainly not stored: refused, synchronous or pipelined,
/// never "unconfirmed".
#[test]
fn a_publish_the_server_may_not_do_is_refused_not_unconfirmed() {
    let r = RedisServer::start();
    r.command(&[
        "ACL", "SETUSER", "nopush", "on", ">pw", "~*", "&*", "+@all", "-lpush",
    ])
    .unwrap();
    let c = connect(&format!("redis://nopush:pw@127.0.0.1:{}", r.port()));
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("np")).unwrap();
    let e = ch.producer().publish("x", "np").unwrap_err();
    assert!(
        matches!(&e, PublishError::Store { failure, .. } if failure.is_refused()),
        "{e}"
    );
    assert!(e.to_string().contains("NOPERM"), "{e}");
    let e = ch
        .producer()
        .publish_async("y", "np")
        .expect("sent")
        .wait()
        .unwrap_err();
    assert!(!e.is_unconfirmed(), "{e}");
    assert_eq!(e.into_message().body, "y".as_bytes());
}

/// A queue without priorities keeps its messages in kombu's bare list, and
/// their envelopes say so (kombu priority 0): a kombu restore files a
/// message by the priority its envelope names, and the 9 written before
/// moved restored messages to the least urgent list, behind newer ones.
/// dashi's own priority still comes back exactly.
#[test]
fn messages_of_a_queue_without_priorities_name_the_list_they_are_in() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("nop")).unwrap();
    ch.queue_declare(&Queue::new("pri").with_max_priority(9))
        .unwrap();
    ch.exchange_declare(&Exchange::new("both", ExchangeKind::Fanout))
        .unwrap();
    for q in ["nop", "pri"] {
        ch.queue_bind(q, "both", "", Default::default()).unwrap();
    }
    let p = ch.producer();
    p.publish("plain", "nop").unwrap();
    p.publish(Message::new("zero").with_priority(0), "nop")
        .unwrap();
    p.with_exchange("both").publish("fan", "").unwrap();
    let raw = cmd(&r, &["LRANGE", "nop", "0", "-1"]);
    assert_eq!(raw.matches(r#""priority": 0,"#).count(), 3, "{raw}");
    assert_eq!(
        llen(&r, "pri\x06\x169"),
        1,
        "the same message, least urgent there"
    );
    let mut got = Vec::new();
    while let Some(d) = ch.get("nop", Duration::ZERO).unwrap() {
        got.push((String::from_utf8(d.body().to_vec()).unwrap(), d.priority()));
        d.ack().unwrap();
    }
    assert_eq!(
        got,
        [
            ("plain".to_string(), 0),
            ("zero".to_string(), 0),
            ("fan".to_string(), 0)
        ]
    );
    let d = ch.get("pri", WAIT).unwrap().expect("fanned out");
    assert_eq!(d.priority(), 0);
    d.ack().unwrap();
}

/// A queue declared by another process (kombu's, or dashi's) is found on
/// the server, and binding it here needs no declaration of this
/// process's own: `dashi consume --exchange` on such a queue failed with
/// "unknown queue".
#[test]
fn a_queue_declared_elsewhere_can_be_bound_here() {
    let r = RedisServer::start();
    let a = connect(&r.url());
    let ach = a.channel().unwrap();
    ach.queue_declare(&Queue::new("theirs")).unwrap();
    ach.producer().publish("first", "theirs").unwrap();
    // Another transport instance (another URL): as another process.
    let b = connect(&format!("{}?timeout=5", r.url()));
    let bch = b.channel().unwrap();
    bch.exchange_declare(&Exchange::new("ex", ExchangeKind::Direct))
        .unwrap();
    bch.queue_bind("theirs", "ex", "k", Default::default())
        .unwrap();
    bch.producer()
        .publish_to(Message::new("second"), "ex", "k", true)
        .unwrap();
    let mut got = Vec::new();
    while let Some(d) = bch.get("theirs", Duration::ZERO).unwrap() {
        got.push(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().unwrap();
    }
    assert_eq!(got, ["first", "second"]);
}

/// The next delivery of a stream within `within`, polled.
fn next_of(s: &mut dashi::DeliveryStream, within: Duration) -> Option<dashi::Delivery> {
    use dashi::futures_core::Stream;
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

/// A stream's run, taken ahead, stays this process's while it lives: it is
/// re-scored like any delivery, so another process's restore leaves it.
/// Leasing it when taken (as local:// does, where a lease can tell a claim
/// taken back) stopped the re-scoring here: a stream slow to ask for its
/// next message had the rest of its run restored elsewhere and still
/// handed it out, each message delivered twice.
#[test]
fn a_slow_stream_s_run_is_not_restored_elsewhere() {
    let r = RedisServer::start();
    let a = connect(&format!("{}?visibility_timeout=1", r.url()));
    let ach = a.channel().unwrap();
    ach.queue_declare(&Queue::new("run")).unwrap();
    for i in 1..=5 {
        ach.producer().publish(format!("job-{i}"), "run").unwrap();
    }
    let mut s = ach.stream(ConsumerOptions::new("run")).unwrap();
    let first = next_of(&mut s, WAIT).expect("job-1");
    assert_eq!(&first.body()[..], b"job-1");
    first.ack().unwrap();
    // Another process consumes for three visibility timeouts meanwhile
    // (its restore scan runs every quarter of one).
    let b = connect(&format!("{}?visibility_timeout=1&timeout=5", r.url()));
    let bch = b.channel().unwrap();
    bch.queue_declare(&Queue::new("run")).unwrap();
    let mut theirs = Vec::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Some(d) = bch.get("run", Duration::from_millis(100)).unwrap() {
            theirs.push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        }
    }
    let mut mine = Vec::new();
    while let Some(d) = next_of(&mut s, Duration::from_secs(1)) {
        mine.push(String::from_utf8_lossy(d.body()).into_owned());
        d.ack().unwrap();
    }
    assert!(theirs.is_empty(), "restored elsewhere: {theirs:?}");
    assert_eq!(mine, ["job-2", "job-3", "job-4", "job-5"]);
}
