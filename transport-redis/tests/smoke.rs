use std::time::Duration;

use dashi::{Exchange, ExchangeKind, Message, Queue};
use dashi_test_support::RedisServer;

#[test]
fn publish_get_ack_restore() {
    let r = RedisServer::start();
    let conn = dashi::connect(&r.url()).unwrap();
    let ch = conn.channel().unwrap();
    ch.queue_declare(&Queue::new("q1").with_max_priority(9))
        .unwrap();
    ch.exchange_declare(&Exchange::new("ex1", ExchangeKind::Direct))
        .unwrap();
    ch.queue_bind("q1", "ex1", "rk1", Default::default())
        .unwrap();
    let p = ch.producer();
    p.publish("a", "q1").unwrap();
    let mut m = Message::new("b");
    m.properties.priority = Some(9);
    p.publish_to(m, "ex1", "rk1", false).unwrap();
    let d = ch.get("q1", Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"b");
    let d2 = ch.get("q1", Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!(&d2.body()[..], b"a");
    d.ack().unwrap();
    drop(d2);
    ch.close();
    let ch = conn.channel().unwrap();
    let d = ch.get("q1", Duration::from_secs(2)).unwrap().unwrap();
    assert_eq!(&d.body()[..], b"a");
    assert!(d.redelivered());
    d.ack().unwrap();
    println!("{}", r.command(&["KEYS", "*"]).unwrap());
}
