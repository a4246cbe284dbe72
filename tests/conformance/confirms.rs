//! Pipelined publishing: `publish_async` and its `Confirm`,
//! `wait_for_confirms`, `publish_batch`, and the channel's window of
//! publishes awaiting their confirm. A confirm that fails is tested with a
//! transport whose syncs fail (`tests/confirms.rs` and local://'s
//! failpoint tests).

use dashi::{BatchError, ChannelOptions, Confirm, Error, Message, PublishError};

use super::*;

fn numbers(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

conformance! {
    fn publish_async_confirms_and_delivers_in_order(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        let confirms: Vec<Confirm> = numbers(300)
            .into_iter()
            .map(|b| p.publish_async(b, "q").unwrap())
            .collect();
        for confirm in confirms {
            confirm.wait().unwrap();
        }
        assert_eq!(ch.confirms_outstanding(), 0);
        ch.wait_for_confirms(WAIT).unwrap();
        assert_eq!(drain_bodies(&ch, "q"), numbers(300));
    }

    fn wait_for_confirms_covers_confirms_that_were_dropped(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in numbers(100) {
            drop(p.publish_async(b, "q").unwrap());
        }
        p.wait_for_confirms(WAIT).unwrap();
        assert_eq!(ch.confirms_outstanding(), 0);
        // Nothing is left to report.
        ch.wait_for_confirms(Duration::ZERO).unwrap();
        assert_eq!(drain_bodies(&ch, "q"), numbers(100));
    }

    fn a_confirm_is_a_future_and_can_be_waited_with_a_timeout(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        let first = p.publish_async("a", "q").unwrap();
        futures::executor::block_on(first).unwrap();
        let mut second = p.publish_async("b", "q").unwrap();
        let outcome = loop {
            match second.wait_timeout(WAIT) {
                Ok(outcome) => break outcome,
                Err(still_pending) => second = still_pending,
            }
        };
        outcome.unwrap();
        let third = p.publish_async("c", "q").unwrap();
        while !third.is_resolved() {
            std::thread::sleep(Duration::from_millis(1));
        }
        third.wait().unwrap();
        assert_eq!(drain_bodies(&ch, "q"), ["a", "b", "c"]);
    }

    fn publish_batch_publishes_all_and_hands_back_what_was_refused(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer()
            .publish_batch(numbers(500).iter().map(|b| (b.clone(), "q")))
            .unwrap();
        assert_eq!(drain_bodies(&ch, "q"), numbers(500));
        let long = "k".repeat(256);
        let batch = vec![
            (Message::new("a"), String::new(), "q".to_owned(), false),
            (Message::new("b"), String::new(), long, false),
            (Message::new("c"), String::new(), "nobody".to_owned(), true),
            (Message::new("d"), String::new(), "q".to_owned(), true),
        ];
        let BatchError { total, failed } = ch.publish_batch(batch).unwrap_err();
        assert_eq!(total, 4);
        assert_eq!(failed.len(), 2);
        assert_eq!(failed[0].0, 1);
        assert!(matches!(failed[0].1, PublishError::InvalidRoutingKey { .. }));
        assert_eq!(failed[1].0, 2);
        assert!(matches!(failed[1].1, PublishError::Unroutable { .. }));
        let bodies: Vec<_> = failed
            .into_iter()
            .map(|(_, e)| e.into_message().body)
            .collect();
        assert_eq!(bodies, ["b", "c"]);
        assert_eq!(drain_bodies(&ch, "q"), ["a", "d"]);
        assert_eq!(ch.confirms_outstanding(), 0);
    }

    fn a_publish_refused_before_the_transport_comes_back_at_once(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        let e = p
            .publish_async(Message::new("hi").with_priority(9), "q")
            .unwrap_err();
        assert!(matches!(e, PublishError::PriorityTooHigh { .. }), "{e}");
        assert_eq!(&e.into_message().body[..], b"hi");
        assert_eq!(ch.confirms_outstanding(), 0, "the window share came back");
        let e = ch
            .publish_async(Message::new("x"), "no-such-exchange", "q", false)
            .unwrap_err();
        assert!(matches!(e, PublishError::UnknownExchange { .. }), "{e}");
        assert_eq!(ch.confirms_outstanding(), 0);
    }

    fn a_nonblocking_window_is_never_exceeded_and_full_hands_the_message_back(url: &str) {
        let c = connect(url);
        let ch = c
            .channel_with(ChannelOptions::new().confirm_window(2).nonblocking(true))
            .unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        let mut held = Vec::new();
        let mut accepted = Vec::new();
        for b in numbers(200) {
            match p.publish_async(b.clone(), "q") {
                Ok(confirm) => {
                    held.push(confirm);
                    accepted.push(b);
                }
                Err(PublishError::Full { messages, message, .. }) => {
                    assert_eq!(messages, 2);
                    assert_eq!(&message.body[..], b.as_bytes());
                    // Make room: the oldest confirm resolves.
                    held.remove(0).wait().unwrap();
                }
                Err(e) => panic!("{e}"),
            }
            assert!(ch.confirms_outstanding() <= 2);
        }
        for confirm in held {
            confirm.wait().unwrap();
        }
        assert_eq!(drain_bodies(&ch, "q"), accepted);
    }

    fn a_blocking_window_waits_for_room(url: &str) {
        let c = connect(url);
        let ch = c
            .channel_with(
                ChannelOptions::new()
                    .confirm_window(4)
                    .confirm_window_bytes(64 << 10),
            )
            .unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        let mut held = Vec::new();
        for b in numbers(300) {
            held.push(p.publish_async(b, "q").unwrap());
            assert!(ch.confirms_outstanding() <= 4);
        }
        // A message larger than the byte window goes through on its own.
        held.push(p.publish_async(vec![7u8; 256 << 10], "q").unwrap());
        for confirm in held {
            confirm.wait().unwrap();
        }
        let mut want = numbers(300);
        want.push(String::from_utf8(vec![7u8; 256 << 10]).unwrap());
        assert_eq!(drain_bodies(&ch, "q"), want);
    }

    fn a_zero_window_and_a_closed_channel_are_clear_errors(url: &str) {
        let c = connect(url);
        for opts in [
            ChannelOptions::new().confirm_window(0),
            ChannelOptions::new().confirm_window_bytes(0),
        ] {
            let e = c.channel_with(opts).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        ch.close();
        let e = p.publish_async("late", "q").unwrap_err();
        assert!(matches!(e, PublishError::ChannelClosed(_)), "{e}");
        assert_eq!(&e.into_message().body[..], b"late");
        assert!(matches!(
            p.wait_for_confirms(WAIT),
            Err(dashi::ConfirmsError::ChannelClosed)
        ));
    }
}
