//! Channel close, channel drop and connection close restore every unacked
//! delivery to the front of its lane with `redelivered = true`; delivery tags
//! are per channel, monotonic and never reused.

use dashi::{AckError, ConsumerOptions, Settled};

use super::*;

fn publish_n(ch: &Channel, q: &str, n: usize) {
    let p = ch.producer();
    for i in 0..n {
        p.publish(i.to_string(), q).unwrap();
    }
}

conformance! {
    fn channel_close_restores_unacked_to_front_in_order(url: &str) {
        let c = connect(url);
        let admin = c.channel().unwrap();
        queue(&admin, "q");
        publish_n(&admin, "q", 5);
        let ch = c.channel().unwrap();
        let a = must_get(&ch, "q");
        let b = must_get(&ch, "q");
        let cc = must_get(&ch, "q");
        b.ack().unwrap();
        assert_eq!(ch.unacked(), 2);
        ch.close();
        assert!(matches!(
            a.ack(),
            Err(AckError::AlreadySettled {
                state: Settled::Restored,
                ..
            })
        ));
        drop(cc);
        assert_eq!(
            drain_flags(&admin, "q"),
            flags(&[("0", true), ("2", true), ("3", false), ("4", false)])
        );
        assert_eq!(c.stats().counters().restored, 2);
    }

    fn dropping_a_channel_restores(url: &str) {
        let c = connect(url);
        let admin = c.channel().unwrap();
        queue(&admin, "q");
        publish_n(&admin, "q", 1);
        {
            let ch = c.channel().unwrap();
            let _unacked = must_get(&ch, "q");
        }
        let d = must_get(&admin, "q");
        assert!(d.redelivered());
    }

    fn connection_close_restores_for_other_connections(url: &str) {
        let keeper = connect(url);
        let kch = keeper.channel().unwrap();
        queue(&kch, "q");
        publish_n(&kch, "q", 3);
        let worker = connect(url);
        let wch = worker.channel().unwrap();
        let _consumer = wch
            .consume(ConsumerOptions::new("q"), |_d| { /* never acks */ })
            .unwrap();
        assert_eq!(worker.drain_events(Some(WAIT)).unwrap(), 3);
        assert_eq!(keeper.stats().queue("q").unwrap().unacked, 3);
        worker.close();
        assert!(kch.get("q", std::time::Duration::ZERO).unwrap().is_some());
        let s = keeper.stats().queue("q").unwrap();
        assert_eq!((s.messages, s.unacked), (2, 1));
        assert!(matches!(
            wch.get("q", std::time::Duration::ZERO),
            Err(dashi::Error::ConnectionClosed)
        ));
    }

    fn delivery_tags_are_monotonic_per_channel(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        publish_n(&ch, "q", 4);
        let t1 = must_get(&ch, "q");
        t1.reject(true).unwrap();
        let tags: Vec<u64> = (0..4)
            .map(|_| {
                let d = must_get(&ch, "q");
                d.ack().unwrap();
                d.delivery_tag()
            })
            .collect();
        assert_eq!(t1.delivery_tag(), 1);
        assert_eq!(tags, [2, 3, 4, 5]);
        let other = c.channel().unwrap();
        publish_n(&other, "q", 1);
        assert_eq!(must_get(&other, "q").delivery_tag(), 1);
    }

    fn ack_by_tag_and_ack_multiple(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        publish_n(&ch, "q", 5);
        let ds: Vec<_> = (0..5).map(|_| must_get(&ch, "q")).collect();
        ch.ack(2, false).unwrap();
        ch.ack(4, true).unwrap();
        assert_eq!(ch.unacked(), 1);
        assert!(matches!(
            ds[0].ack(),
            Err(AckError::AlreadySettled {
                state: Settled::Acked,
                ..
            })
        ));
        ch.ack(0, true).unwrap();
        assert_eq!(ch.unacked(), 0);
        assert_eq!(c.stats().counters().acked, 5);
        assert_eq!(c.stats().queue("q").unwrap().unacked, 0);
    }
}
