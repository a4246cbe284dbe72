//! Reject with requeue and restore put the message at the front of its lane
//! with `redelivered = true`.

use dashi::{Message, Queue};

use super::*;

#[test]
fn reject_requeue_goes_to_front_marked_redelivered() {
    each("requeue-front", |url| {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in ["1", "2", "3"] {
            p.publish(b, "q").unwrap();
        }
        let first = must_get(&ch, "q");
        assert!(!first.redelivered());
        first.reject(true).unwrap();
        let again = must_get(&ch, "q");
        assert_eq!(body(&again), "1");
        assert!(again.redelivered());
        again.ack().unwrap();
        let next = must_get(&ch, "q");
        assert_eq!(body(&next), "2");
        assert!(!next.redelivered());
        next.ack().unwrap();
        assert_eq!(c.stats().counters().redelivered, 1);
    });
}

#[test]
fn requeue_stays_in_its_own_lane() {
    each("requeue-lane", |url| {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("q").with_max_priority(5))
            .unwrap();
        let p = ch.producer();
        p.publish(Message::new("low").with_priority(1), "q")
            .unwrap();
        p.publish(Message::new("high").with_priority(5), "q")
            .unwrap();
        let low_first = {
            let h = must_get(&ch, "q");
            assert_eq!(body(&h), "high");
            let l = must_get(&ch, "q");
            assert_eq!(body(&l), "low");
            h.ack().unwrap();
            l
        };
        p.publish(Message::new("low2").with_priority(1), "q")
            .unwrap();
        low_first.reject(true).unwrap();
        p.publish(Message::new("high2").with_priority(5), "q")
            .unwrap();
        assert_eq!(drain_bodies(&ch, "q"), ["high2", "low", "low2"]);
    });
}

#[test]
fn nack_multiple_requeues_in_tag_order() {
    each("nack-multiple", |url| {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        for b in ["a", "b", "c", "d"] {
            p.publish(b, "q").unwrap();
        }
        let ds: Vec<_> = (0..3).map(|_| must_get(&ch, "q")).collect();
        ds[2].nack_multiple(true).unwrap();
        assert_eq!(
            drain_flags(&ch, "q"),
            flags(&[("a", true), ("b", true), ("c", true), ("d", false)])
        );
    });
}

#[test]
fn reject_without_requeue_drops_and_counts() {
    each("reject-drop", |url| {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("x", "q").unwrap();
        must_get(&ch, "q").reject(false).unwrap();
        assert!(ch.get("q", std::time::Duration::ZERO).unwrap().is_none());
        let s = c.stats().counters();
        assert_eq!((s.rejected, s.acked), (1, 0));
        assert_eq!(c.stats().queue("q").unwrap().unacked, 0);
    });
}
