//! Bad input gets its own error variant, never a panic, and nothing is lost:
//! every failed publish hands the message back.

use std::time::Duration;

use dashi::{
    AckError, ConsumerOptions, Error, Exchange, Headers, Message, NameError, PublishError, Queue,
    Settled, UrlError,
};

use super::*;

fn long() -> String {
    "n".repeat(256)
}

conformance! {
    fn empty_and_overlong_names(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for e in [
            ch.queue_declare(&Queue::new("")).unwrap_err(),
            ch.exchange_declare(&Exchange::direct("")).unwrap_err(),
            ch.get("", Duration::ZERO).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    Error::InvalidName {
                        reason: NameError::Empty,
                        ..
                    }
                ),
                "{e}"
            );
        }
        for e in [
            ch.queue_declare(&Queue::new(long())).unwrap_err(),
            ch.exchange_declare(&Exchange::topic(long())).unwrap_err(),
            ch.consume(ConsumerOptions::new("q").tag(long()), |_| {})
                .unwrap_err(),
        ] {
            assert!(
                matches!(
                    e,
                    Error::InvalidName {
                        reason: NameError::TooLong { len: 256 },
                        ..
                    }
                ),
                "{e}"
            );
        }
        // 255 bytes of multi-byte UTF-8 is fine.
        let ok = "é".repeat(127);
        assert_eq!(ok.len(), 254);
        ch.queue_declare(&Queue::new(ok.clone())).unwrap();
        ch.producer().publish("x", &ok).unwrap();
        assert_eq!(drain_bodies(&ch, &ok), ["x"]);
    }

    // Issue 11 item 16: every transport validates a declaration the same way
    // (a dead-letter routing key that could never be published is refused at
    // declare, not found out when every dead-lettered message is dropped).
    fn overlong_dead_letter_names_are_refused_at_declare(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        for q in [
            Queue::new("dl").with_dead_letter("dlx", Some(&long())),
            Queue::new("dl").with_dead_letter(long(), None),
        ] {
            let e = ch.queue_declare(&q).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidName {
                        reason: NameError::TooLong { len: 256 },
                        ..
                    }
                ),
                "{e}"
            );
        }
        assert!(c.stats().queue("dl").is_err_and(|e| matches!(e, dashi::Error::UnknownQueue(_))), "nothing was declared");
    }

    fn overlong_routing_key_hands_message_back(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        let err = ch.producer().publish("keep", &long()).unwrap_err();
        assert!(matches!(
            err,
            PublishError::InvalidRoutingKey {
                reason: NameError::TooLong { .. },
                ..
            }
        ));
        assert_eq!(&err.message().body[..], b"keep");
    }

    fn invalid_topic_patterns_and_headers_arguments(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::topic("t")).unwrap();
        ch.exchange_declare(&Exchange::headers("h")).unwrap();
        queue(&ch, "q");
        for bad in ["a*", "a.b#", "#x", "a.*b.c"] {
            assert!(
                matches!(
                    ch.queue_bind("q", "t", bad, Headers::new()),
                    Err(Error::InvalidPattern { .. })
                ),
                "{bad}"
            );
        }
        let args: Headers = [("x-match".to_string(), dashi::Value::from("most"))]
            .into_iter()
            .collect();
        assert!(matches!(
            ch.queue_bind("q", "h", "", args),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ch.queue_bind("q", "", "q", Headers::new()),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            ch.queue_bind("q", "missing", "k", Headers::new()),
            Err(Error::UnknownExchange(_))
        ));
        assert!(matches!(
            ch.queue_bind("missing", "t", "k", Headers::new()),
            Err(Error::UnknownQueue(_))
        ));
        assert!(matches!(
            ch.queue_unbind("q", "t", "never.bound", Headers::new()),
            Err(Error::InvalidArgument(_))
        ));
    }

    fn oversized_body_is_refused_and_returned(url: &str) {
        let sep = if url.contains('?') { '&' } else { '?' };
        let c = connect(&format!("{url}{sep}max_body_size=1K"));
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish(vec![1u8; 1024], "q").unwrap();
        let err = ch.producer().publish(vec![7u8; 1025], "q").unwrap_err();
        match &err {
            PublishError::BodyTooLarge { size, max, .. } => assert_eq!((*size, *max), (1025, 1024)),
            other => panic!("{other}"),
        }
        assert_eq!(err.into_message().body.len(), 1025);
        assert_eq!(c.stats().queue("q").unwrap().messages, 1);
    }

    fn default_body_limit_is_128_mib(url: &str) {
        let c = connect(url);
        assert_eq!(c.config().max_body_size, 128 << 20);
        let ch = c.channel().unwrap();
        let big = bytes::Bytes::from(vec![0u8; (128 << 20) + 1]);
        let err = ch.producer().publish(big.clone(), "q").unwrap_err();
        assert!(matches!(err, PublishError::BodyTooLarge { .. }));
        // Handed back without a copy.
        assert_eq!(err.into_message().body.as_ptr(), big.as_ptr());
    }

    fn unknown_exchange_and_queue(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        let err = ch
            .producer()
            .with_exchange("nope")
            .publish(Message::new("m"), "k")
            .unwrap_err();
        assert!(
            matches!(&err, PublishError::UnknownExchange { exchange, .. } if exchange == "nope")
        );
        assert_eq!(&err.into_message().body[..], b"m");
        assert!(matches!(
            ch.get("nope", Duration::ZERO),
            Err(Error::UnknownQueue(_))
        ));
        assert!(matches!(
            ch.consume(ConsumerOptions::new("nope"), |_| {}),
            Err(Error::UnknownQueue(_))
        ));
        assert!(matches!(
            ch.queue_purge("nope"),
            Err(Error::UnknownQueue(_))
        ));
        assert!(matches!(
            ch.queue_delete("nope", false, false),
            Err(Error::UnknownQueue(_))
        ));
        assert!(matches!(
            ch.exchange_delete("nope", false),
            Err(Error::UnknownExchange(_))
        ));
        // An alternate exchange that does not exist is named in the error.
        ch.exchange_declare(&Exchange::direct("d").with_alternate_exchange("ghost"))
            .unwrap();
        let err = ch
            .producer()
            .with_exchange("d")
            .publish("m", "k")
            .unwrap_err();
        assert!(
            matches!(&err, PublishError::UnknownExchange { exchange, .. } if exchange == "ghost")
        );
    }

    fn redeclare_with_other_arguments_is_refused(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_priority(5))
            .unwrap();
        ch.queue_declare(&Queue::new("q").with_max_priority(5))
            .unwrap();
        assert!(matches!(
            ch.queue_declare(&Queue::new("q")),
            Err(Error::PreconditionFailed(_))
        ));
        ch.exchange_declare(&Exchange::direct("e")).unwrap();
        assert!(matches!(
            ch.exchange_declare(&Exchange::fanout("e")),
            Err(Error::PreconditionFailed(_))
        ));
        assert!(matches!(
            ch.queue_declare(&Queue::new("z").with_max_length(0)),
            Err(Error::InvalidArgument(_))
        ));
        assert!("bogus".parse::<dashi::ExchangeKind>().is_err());
    }

    fn delete_preconditions(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        assert!(matches!(
            ch.queue_delete("q", false, true),
            Err(Error::NotEmpty(_))
        ));
        let _c = ch.consume(ConsumerOptions::new("q"), |_| {}).unwrap();
        assert!(matches!(
            ch.queue_delete("q", true, false),
            Err(Error::InUse(_))
        ));
        ch.exchange_declare(&Exchange::fanout("f")).unwrap();
        ch.queue_bind("q", "f", "", Headers::new()).unwrap();
        assert!(matches!(
            ch.exchange_delete("f", true),
            Err(Error::InUse(_))
        ));
        assert_eq!(ch.queue_delete("q", false, false).unwrap(), 1);
    }

    fn publish_on_a_closed_channel_hands_message_back(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        ch.close();
        let err = p.publish("kept", "q").unwrap_err();
        assert!(matches!(err, PublishError::ChannelClosed(_)));
        assert_eq!(&err.into_message().body[..], b"kept");
        assert_eq!(c.stats().queue("q").unwrap().messages, 0);
    }

    fn ack_of_unknown_or_settled_tags(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        ch.producer().publish("y", "q").unwrap();
        assert_eq!(ch.ack(1, false), Err(AckError::UnknownTag(1)));
        assert_eq!(ch.ack(0, false), Err(AckError::UnknownTag(0)));
        let d = must_get(&ch, "q");
        d.ack().unwrap();
        assert_eq!(
            d.ack(),
            Err(AckError::AlreadySettled {
                tag: 1,
                state: Settled::Acked
            })
        );
        assert!(matches!(
            d.reject(true),
            Err(AckError::AlreadySettled { .. })
        ));
        assert!(matches!(
            ch.ack(1, false),
            Err(AckError::AlreadySettled { tag: 1, .. })
        ));
        assert_eq!(ch.ack(99, false), Err(AckError::UnknownTag(99)));
        let e = must_get(&ch, "q");
        e.reject(false).unwrap();
        assert_eq!(
            e.ack(),
            Err(AckError::AlreadySettled {
                tag: 2,
                state: Settled::Rejected
            })
        );
        assert!(!e.ack().unwrap_err().is_restored());
    }

    fn bad_consumer_options(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        for opts in [
            ConsumerOptions::new("q").prefetch_count(0),
            ConsumerOptions::new("q").prefetch_bytes(0),
        ] {
            assert!(matches!(
                ch.consume(opts, |_| {}),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
}

#[test]
fn malformed_urls() {
    for (url, check) in [
        (
            "",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::Empty)))
                as Box<dyn Fn(&Error) -> bool>,
        ),
        (
            "memory",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::MissingScheme { .. }))),
        ),
        (
            "amqp://host",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::UnknownScheme { .. }))),
        ),
        (
            "memory://x?bogus=1",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::UnknownOption { .. }))),
        ),
        (
            "memory://x?prefetch_count=zero",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::InvalidOption { .. }))),
        ),
        (
            "memory://x/some/path",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::Malformed { .. }))),
        ),
        (
            "memory://u:pw@x",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::Malformed { .. }))),
        ),
        (
            "memory://x;",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::Empty))),
        ),
        (
            "memory://%ZZ",
            Box::new(|e: &Error| matches!(e, Error::Url(UrlError::Malformed { .. }))),
        ),
    ] {
        let e = dashi::connect(url).unwrap_err();
        assert!(check(&e), "{url:?} gave {e:?}");
        assert!(!e.to_string().is_empty());
        assert!(!e.to_string().contains("pw"), "{e}");
    }
    // Failover: the first URL that opens wins.
    let c = dashi::connect("amqp://nowhere;memory://failover-ok").unwrap();
    assert_eq!(c.transport().scheme(), "memory");
}
