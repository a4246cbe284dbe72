//! redis:// against a server that refuses part of what a consumer does: a
//! user not allowed a command, a key of the wrong type, an output limit
//! on its clients, and names that are keys of the layout itself (a server
//! out of memory: `a_full_redis_refuses_publishes_and_consumers_still_drain_it`
//! in redis.rs). None of them may lose a message or stop a consumer
//! without a word. Every test starts its own `redis-server`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashi::{Connection, ConsumerOptions, Error, Exchange, ExchangeKind, NameError, Queue};
use dashi_test_support::RedisServer;

const WAIT: Duration = Duration::from_secs(10);

fn connect(url: &str) -> Connection {
    dashi::connect(url).unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

fn cmd(r: &RedisServer, args: &[&str]) -> String {
    r.command(args).unwrap()
}

fn int(r: &RedisServer, args: &[&str]) -> i64 {
    let reply = cmd(r, args);
    reply
        .trim_start_matches(':')
        .parse()
        .unwrap_or_else(|_| panic!("{args:?} answered {reply:?}"))
}

/// Publishes `bodies` to queue `q` (declared) through dashi.
fn publish(url: &str, q: &str, bodies: &[String]) {
    let c = connect(url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new(q)).unwrap();
    let p = ch.producer();
    for b in bodies {
        p.publish(b.as_bytes().to_vec(), q).unwrap();
    }
}

/// Takes and acks every message of `q` until `n` came or [`WAIT`] passed.
fn drain(url: &str, q: &str, n: usize) -> Vec<String> {
    let c = connect(url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new(q)).unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n && Instant::now() < deadline {
        if let Some(d) = ch.get(q, Duration::from_millis(200)).unwrap() {
            got.push(String::from_utf8_lossy(d.body()).into_owned());
            d.ack().unwrap();
        }
    }
    got
}

fn bodies(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m{i}")).collect()
}

/// The pop script used to `RPOP` first and record after: a script's
/// writes are not undone by a later command's error, so a refused record
/// left the popped messages in neither the queue nor `unacked`.
#[test]
fn a_key_of_the_wrong_type_stops_a_pop_before_it_takes_anything() {
    let r = RedisServer::start();
    publish(&r.url(), "q", &bodies(3));
    assert_eq!(cmd(&r, &["SET", "unacked_index", "x"]), "+OK");
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let err = ch.get("q", Duration::ZERO).expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("WRONGTYPE") && text.contains("(key unacked_index)"),
        "{text}"
    );
    assert_eq!(int(&r, &["LLEN", "q"]), 3, "nothing was taken");
    assert_eq!(int(&r, &["EXISTS", "unacked"]), 0);
    assert_eq!(cmd(&r, &["DEL", "unacked_index"]), ":1");
    assert_eq!(drain(&r.url(), "q", 3), bodies(3), "all three, in order");
}

#[test]
fn a_user_not_allowed_to_record_a_pop_takes_nothing() {
    let r = RedisServer::start();
    publish(&r.url(), "q", &bodies(3));
    cmd(
        &r,
        &[
            "ACL", "SETUSER", "nozadd", "on", ">p", "~*", "&*", "+@all", "-zadd",
        ],
    );
    let url = format!("redis://nozadd:p@127.0.0.1:{}/0", r.port());
    let c = connect(&url);
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let err = ch.get("q", Duration::ZERO).expect_err("refused");
    assert!(err.to_string().contains("(key unacked_index)"), "{err}");
    assert_eq!(int(&r, &["LLEN", "q"]), 3, "nothing was taken");
    assert_eq!(int(&r, &["EXISTS", "unacked", "unacked_index"]), 0);
    assert_eq!(drain(&r.url(), "q", 3), bodies(3));
}

/// A queue whose list is one of kombu's bookkeeping keys broke every
/// consumer of the server (`unacked_index` made a list), and one holding
/// the separator wrote into another queue's priority list.
#[test]
fn queue_names_that_are_keys_of_the_layout_are_refused() {
    let r = RedisServer::start();
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    for name in [
        "unacked",
        "unacked_index",
        "unacked_mutex",
        "_kombu.binding.celery",
        "_dashi.garbage.q",
        "good\x06\x163",
    ] {
        match ch.queue_declare(&Queue::new(name)) {
            Err(Error::InvalidName {
                kind: "queue",
                reason: NameError::Reserved { .. },
                ..
            }) => {}
            other => panic!("{name:?}: {other:?}"),
        }
        // Nor through a look-up without a declaration.
        assert!(ch.get(name, Duration::ZERO).is_err(), "{name:?}");
    }
    ch.exchange_declare(&Exchange::new("ex", ExchangeKind::Direct))
        .unwrap();
    ch.queue_declare(&Queue::new("good")).unwrap();
    let err = ch
        .queue_bind("good", "ex", "k\x06\x16", Default::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidName {
                kind: "binding key",
                reason: NameError::Reserved { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let one_line = err.to_string();
    assert!(
        !one_line.contains('\n') && one_line.contains("separator"),
        "{one_line}"
    );
    assert_eq!(
        int(
            &r,
            &[
                "EXISTS",
                "unacked",
                "unacked_index",
                "unacked_mutex",
                "good\x06\x163"
            ]
        ),
        0
    );
    assert_eq!(cmd(&r, &["SMEMBERS", "_kombu.binding.ex"]), "*0");
}

/// A server that cuts a client whose replies pass 4 MB: a pop of 50
/// messages of 100 KB was cut at every try, and so was a restore reading
/// 256 entries at once; the consumer got nothing and said nothing. (A pop
/// stops past 1 MB, and a second may be on its way: 4 MB holds both.)
#[test]
fn pops_and_restores_stay_within_a_client_output_limit() {
    let r = RedisServer::start_with(&["--client-output-buffer-limit", "normal 4mb 4mb 0"]);
    let big: Vec<String> = (0..50)
        .map(|i| format!("{i:04}{}", "x".repeat(99_996)))
        .collect();
    publish(&r.url(), "q", &big);
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    ch.queue_declare(&Queue::new("q")).unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let consumer = ch
        .consume(ConsumerOptions::new("q").prefetch_count(256), {
            let got = got.clone();
            move |d| {
                got.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&d.body()[..4]).into_owned());
                d.ack().unwrap();
            }
        })
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while got.lock().unwrap().len() < 50 && Instant::now() < deadline {
        match c.drain_events(Some(Duration::from_millis(200))) {
            Ok(_) | Err(Error::Timeout) => {}
            Err(e) => panic!("{e}"),
        }
    }
    let want: Vec<String> = (0..50).map(|i| format!("{i:04}")).collect();
    assert_eq!(*got.lock().unwrap(), want, "every message, in order");
    consumer.cancel().unwrap();
    // Fifty deliveries of a process that died a minute ago, 100 KB each.
    let old = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60)
        .to_string();
    for i in 0..50 {
        let tag = format!("t{i:02}");
        let env = format!(
            "{{\"body\": \"{i:04}{}\", \"content-encoding\": \"utf-8\", \"content-type\": \"text/plain\", \"headers\": {{}}, \"properties\": {{\"delivery_mode\": 2, \"delivery_info\": {{\"exchange\": \"\", \"routing_key\": \"q\"}}, \"priority\": 0, \"body_encoding\": \"utf-8\", \"delivery_tag\": \"{tag}\"}}}}",
            "y".repeat(99_996)
        );
        let value = format!("[{env}, \"\", \"q\"]");
        assert_eq!(cmd(&r, &["HSET", "unacked", &tag, &value]), ":1");
        assert_eq!(cmd(&r, &["ZADD", "unacked_index", &old, &tag]), ":1");
    }
    let restorer = connect(&format!("{}?visibility_timeout=1", r.url()));
    let rch = restorer.channel().unwrap();
    rch.queue_declare(&Queue::new("q")).unwrap();
    let mut back = 0;
    let deadline = Instant::now() + WAIT;
    while back < 50 && Instant::now() < deadline {
        if let Some(d) = rch.get("q", Duration::from_millis(200)).unwrap() {
            assert!(d.redelivered());
            d.ack().unwrap();
            back += 1;
        }
    }
    assert_eq!(back, 50, "every entry restored and delivered");
}

/// Another application's string under a queue's name: a purge by that
/// name (kombu's purge-by-name) used to delete it and say "purged 0".
#[test]
fn a_purge_deletes_nothing_that_is_not_a_queue_s_list() {
    let r = RedisServer::start();
    assert_eq!(cmd(&r, &["SET", "theirs", "keep me"]), "+OK");
    let c = connect(&r.url());
    let ch = c.channel().unwrap();
    let err = ch.queue_purge("theirs").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("WRONGTYPE")
            && text.contains("theirs holds a string")
            && !text.contains('\n'),
        "{text}"
    );
    assert_eq!(cmd(&r, &["GET", "theirs"]), "$7\r\nkeep me");
    // A queue's lists are purged as before, every priority step.
    ch.queue_declare(&Queue::new("q").with_max_priority(9))
        .unwrap();
    for p in [0, 5, 9] {
        ch.producer()
            .publish(dashi::Message::new("x").with_priority(p), "q")
            .unwrap();
    }
    assert_eq!(ch.queue_purge("q").unwrap(), 3);
    assert_eq!(int(&r, &["EXISTS", "q", "q\x06\x163", "q\x06\x166"]), 0);
}
