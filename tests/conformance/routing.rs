//! Routing for every exchange type, the default exchange, alternate exchanges
//! and mandatory publishes.

use dashi::{Exchange, Headers, Message, PublishError, Value};

use super::*;

conformance! {
    fn default_exchange_routes_by_queue_name(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "a");
        queue(&ch, "b");
        let p = ch.producer();
        p.publish("to-a", "a").unwrap();
        p.publish("to-b", "b").unwrap();
        assert_eq!(drain_bodies(&ch, "a"), ["to-a"]);
        assert_eq!(drain_bodies(&ch, "b"), ["to-b"]);
    }

    fn direct_exchange_matches_key_exactly_and_copies_to_each_queue(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::direct("d")).unwrap();
        for q in ["q1", "q2", "q3"] {
            queue(&ch, q);
        }
        ch.queue_bind("q1", "d", "red", Headers::new()).unwrap();
        ch.queue_bind("q2", "d", "red", Headers::new()).unwrap();
        ch.queue_bind("q3", "d", "blue", Headers::new()).unwrap();
        let p = ch.producer().with_exchange("d");
        p.publish("r", "red").unwrap();
        p.publish("b", "blue").unwrap();
        p.publish("g", "green").unwrap();
        assert_eq!(drain_bodies(&ch, "q1"), ["r"]);
        assert_eq!(drain_bodies(&ch, "q2"), ["r"]);
        assert_eq!(drain_bodies(&ch, "q3"), ["b"]);
        assert_eq!(c.stats().counters().dropped_unroutable, 1);
    }

    fn topic_exchange_follows_amqp_word_rules(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::topic("t")).unwrap();
        let binds = [
            ("star", "stock.*.nyse"),
            ("hash", "stock.#"),
            ("all", "#"),
            ("tail", "*.eu"),
        ];
        for (q, key) in binds {
            queue(&ch, q);
            ch.queue_bind(q, "t", key, Headers::new()).unwrap();
        }
        // A queue bound twice gets one copy.
        ch.queue_bind("hash", "t", "stock.*.nyse", Headers::new())
            .unwrap();
        let p = ch.producer().with_exchange("t");
        for key in ["stock.ibm.nyse", "stock", "stock.a.b.c", "x.eu", "eu", ""] {
            p.publish(Message::new(key.to_owned()), key).unwrap();
        }
        assert_eq!(drain_bodies(&ch, "star"), ["stock.ibm.nyse"]);
        assert_eq!(
            drain_bodies(&ch, "hash"),
            ["stock.ibm.nyse", "stock", "stock.a.b.c"]
        );
        assert_eq!(drain_bodies(&ch, "all").len(), 6);
        assert_eq!(drain_bodies(&ch, "tail"), ["x.eu"]);
    }

    fn fanout_exchange_ignores_the_key(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::fanout("f")).unwrap();
        for q in ["f1", "f2"] {
            queue(&ch, q);
            ch.queue_bind(q, "f", "ignored", Headers::new()).unwrap();
        }
        ch.producer()
            .with_exchange("f")
            .publish("x", "any")
            .unwrap();
        assert_eq!(drain_bodies(&ch, "f1"), ["x"]);
        assert_eq!(drain_bodies(&ch, "f2"), ["x"]);
        let s = c.stats().counters();
        assert_eq!((s.published, s.routed), (1, 2));
    }

    fn headers_exchange_all_and_any(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::headers("h")).unwrap();
        queue(&ch, "all");
        queue(&ch, "any");
        let args = |mode: &str| -> Headers {
            [
                ("x-match".to_string(), Value::from(mode)),
                ("format".to_string(), Value::from("pdf")),
                ("type".to_string(), Value::from("report")),
            ]
            .into_iter()
            .collect()
        };
        ch.queue_bind("all", "h", "", args("all")).unwrap();
        ch.queue_bind("any", "h", "", args("any")).unwrap();
        let p = ch.producer().with_exchange("h");
        p.publish(
            Message::new("both")
                .with_header("format", "pdf")
                .with_header("type", "report"),
            "",
        )
        .unwrap();
        p.publish(Message::new("one").with_header("format", "pdf"), "")
            .unwrap();
        p.publish(Message::new("none").with_header("format", "zip"), "")
            .unwrap();
        assert_eq!(drain_bodies(&ch, "all"), ["both"]);
        assert_eq!(drain_bodies(&ch, "any"), ["both", "one"]);
    }

    fn alternate_exchange_takes_unroutable_messages(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::fanout("ae")).unwrap();
        ch.exchange_declare(&Exchange::direct("main").with_alternate_exchange("ae"))
            .unwrap();
        queue(&ch, "unrouted");
        ch.queue_bind("unrouted", "ae", "", Headers::new()).unwrap();
        ch.producer()
            .with_exchange("main")
            .publish_mandatory("lost?", "nobody")
            .unwrap();
        assert_eq!(drain_bodies(&ch, "unrouted"), ["lost?"]);
    }

    fn mandatory_unroutable_hands_the_message_back(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::direct("d")).unwrap();
        let err = ch
            .producer()
            .with_exchange("d")
            .publish_mandatory(Message::new("keep me").with_priority(0), "k")
            .unwrap_err();
        assert!(matches!(err, PublishError::Unroutable { .. }), "{err}");
        assert_eq!(&err.into_message().body[..], b"keep me");
        assert_eq!(c.stats().counters().published, 0);
    }

    fn unbind_and_delete_stop_routing(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::direct("d")).unwrap();
        queue(&ch, "q");
        ch.queue_bind("q", "d", "k", Headers::new()).unwrap();
        ch.queue_unbind("q", "d", "k", Headers::new()).unwrap();
        let p = ch.producer().with_exchange("d");
        assert!(matches!(
            p.publish_mandatory("x", "k"),
            Err(PublishError::Unroutable { .. })
        ));
        ch.exchange_delete("d", false).unwrap();
        assert!(matches!(
            p.publish("x", "k"),
            Err(PublishError::UnknownExchange { .. })
        ));
        assert_eq!(ch.queue_delete("q", false, false).unwrap(), 0);
        assert!(ch.producer().publish_mandatory("x", "q").is_err());
    }

    fn topology_is_shared_between_connections(url: &str) {
        let a = connect(url);
        let b = connect(url);
        let cha = a.channel().unwrap();
        let chb = b.channel().unwrap();
        cha.exchange_declare(&Exchange::topic("t")).unwrap();
        queue(&cha, "q");
        cha.queue_bind("q", "t", "#", Headers::new()).unwrap();
        chb.producer()
            .with_exchange("t")
            .publish("hi", "x.y")
            .unwrap();
        assert_eq!(body(&must_get(&cha, "q")), "hi");
    }

    fn every_property_and_the_body_arrive_intact_without_a_copy(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let body = bytes::Bytes::from(vec![7u8; 4096]);
        let mut m = Message::new(body.clone())
            .with_content_type("application/json")
            .with_header("k", Value::from(1))
            .with_header("nested", Value::List(vec![Value::Null, Value::Bool(true)]));
        m.properties.content_encoding = Some("utf-8".into());
        m.properties.delivery_mode = dashi::DeliveryMode::Transient;
        m.properties.correlation_id = Some("corr".into());
        m.properties.reply_to = Some("replies".into());
        m.properties.expiration = Some(std::time::Duration::from_secs(3600));
        m.properties.message_id = Some("id-1".into());
        m.properties.timestamp = Some(1_700_000_000);
        let sent = m.properties.clone();
        ch.producer().publish(m, "q").unwrap();
        let d = must_get(&ch, "q");
        assert_eq!(d.properties(), &sent);
        assert_eq!(&d.body()[..], &body[..]);
        if url.starts_with("memory") {
            // In process, the publisher's buffer itself is delivered.
            assert_eq!(d.body().as_ptr(), body.as_ptr(), "body was copied");
        }
        assert_eq!((d.exchange(), d.routing_key(), d.queue()), ("", "q", "q"));
        assert_eq!(d.consumer_tag(), None);
        let again = d.to_message();
        assert_eq!(again.properties, sent);
        assert!(format!("{d:?}").contains("delivery_tag"));
    }
}
