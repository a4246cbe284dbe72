//! Strict priority across lanes (higher number first), FIFO within a lane.

use dashi::{Message, PublishError, Queue};

use super::*;

conformance! {
    fn lanes_drain_highest_first_and_fifo_within(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("p").with_max_priority(10))
            .unwrap();
        let p = ch.producer();
        let sends = [
            (1, "a1"),
            (5, "b1"),
            (10, "c1"),
            (1, "a2"),
            (5, "b2"),
            (0, "z1"),
            (10, "c2"),
        ];
        for (prio, b) in sends {
            p.publish(Message::new(b).with_priority(prio), "p").unwrap();
        }
        p.publish(Message::new("none"), "p").unwrap();
        let s = c.stats().queue("p").unwrap();
        assert_eq!(s.depth_by_lane.len(), 11);
        assert_eq!(
            (s.depth_by_lane[10], s.depth_by_lane[5], s.depth_by_lane[0]),
            (2, 2, 2)
        );
        let got = drain_bodies(&ch, "p");
        assert_eq!(got, ["c1", "c2", "b1", "b2", "a1", "a2", "z1", "none"]);
    }

    fn priority_is_reported_on_delivery(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("p").with_max_priority(255))
            .unwrap();
        ch.producer()
            .publish(Message::new("x").with_priority(255), "p")
            .unwrap();
        let d = must_get(&ch, "p");
        assert_eq!(d.priority(), 255);
        assert_eq!(d.properties().priority, Some(255));
    }

    fn priority_above_max_is_refused_everywhere(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(&Queue::new("p").with_max_priority(3))
            .unwrap();
        let err = ch
            .producer()
            .publish(Message::new("x").with_priority(4), "p")
            .unwrap_err();
        match &err {
            PublishError::PriorityTooHigh {
                priority,
                max,
                queue,
                ..
            } => {
                assert_eq!((*priority, *max, queue.as_str()), (4, 3, "p"))
            }
            other => panic!("{other}"),
        }
        assert_eq!(err.into_message().properties.priority, Some(4));
        assert_eq!(c.stats().queue("p").unwrap().messages, 0);
    }

    fn fifo_for_a_single_producer_in_one_lane(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "f");
        let p = ch.producer();
        for i in 0..1000 {
            p.publish(Message::new(i.to_string()), "f").unwrap();
        }
        let got = drain_bodies(&ch, "f");
        let want: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        assert_eq!(got, want);
    }
}
