//! Message TTL (queue and per message) and dead-lettering on reject, expiry and
//! overflow.

use std::time::Duration;

use dashi::{Exchange, Headers, Message, Overflow, Queue, Value};

use super::*;

fn dlx(ch: &Channel) {
    ch.exchange_declare(&Exchange::fanout("dlx")).unwrap();
    queue(ch, "dead");
    ch.queue_bind("dead", "dlx", "", Headers::new()).unwrap();
}

conformance! {
    /// A dead-lettered message whose priority is above its dead-letter
    /// queue's maximum is clamped (there is nobody to hand it back to), and
    /// its consumer sees the clamped priority in its properties too.
    fn dead_lettered_priority_is_clamped_to_the_target(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::fanout("dlx")).unwrap();
        ch.queue_declare(&Queue::new("low").with_max_priority(3)).unwrap();
        ch.queue_bind("low", "dlx", "", Headers::new()).unwrap();
        ch.queue_declare(
            &Queue::new("src")
                .with_max_priority(9)
                .with_dead_letter("dlx", None),
        )
        .unwrap();
        ch.producer()
            .publish(Message::new("hot").with_priority(9), "src")
            .unwrap();
        must_get(&ch, "src").reject(false).unwrap();
        let d = must_get(&ch, "low");
        assert_eq!(body(&d), "hot");
        assert_eq!(d.priority(), 3);
        assert_eq!(d.properties().priority, Some(3));
        d.ack().unwrap();
    }

    /// The delay-queue idiom: a TTL queue nobody consumes, dead-lettering
    /// into a work queue. Messages expire on a timer, not only when a
    /// consumer reaches them; a message with its own expiration in a queue
    /// without TTL too.
    fn ttl_expires_in_a_queue_nobody_reads(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "work");
        ch.queue_declare(
            &Queue::new("delay")
                .with_message_ttl(Duration::from_millis(100))
                .with_dead_letter("", Some("work")),
        )
        .unwrap();
        ch.queue_declare(&Queue::new("own").with_dead_letter("", Some("work")))
            .unwrap();
        let sent = std::time::Instant::now();
        ch.producer().publish("later", "delay").unwrap();
        ch.producer()
            .publish(
                Message::new("own").with_expiration(Duration::from_millis(100)),
                "own",
            )
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let d = ch
                .get("work", Duration::from_secs(10))
                .unwrap()
                .expect("dead-lettered by the expiry timer");
            assert_eq!(
                d.properties().headers.get("x-first-death-reason"),
                Some(&Value::from("expired"))
            );
            got.push(body(&d));
            d.ack().unwrap();
        }
        got.sort();
        assert_eq!(got, ["later", "own"]);
        assert!(sent.elapsed() >= Duration::from_millis(100), "expired early");
        let s = c.stats();
        assert_eq!(s.queue("delay").unwrap().messages, 0);
        assert_eq!(s.queue("own").unwrap().messages, 0);
        assert_eq!(s.counters().expired, 2);
    }

    /// While the expiry timer looks at heads that have not expired, nothing
    /// moves: every lane keeps its order.
    fn the_expiry_timer_never_reorders_what_has_not_expired(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.queue_declare(
            &Queue::new("q")
                .with_max_priority(2)
                .with_message_ttl(Duration::from_secs(60)),
        )
        .unwrap();
        for i in 0..30u8 {
            ch.producer()
                .publish(Message::new(format!("m{i}")).with_priority(i % 3), "q")
                .unwrap();
        }
        // Several sweeps pass; a consumer takes some meanwhile.
        let mut got = Vec::new();
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(60));
            let d = must_get(&ch, "q");
            got.push((d.priority(), body(&d)));
            d.ack().unwrap();
        }
        while let Some(d) = ch.get("q", Duration::from_millis(100)).unwrap() {
            got.push((d.priority(), body(&d)));
            d.ack().unwrap();
        }
        let want: Vec<(u8, String)> = (0..3u8)
            .rev()
            .flat_map(|p| (0..30u8).filter(move |i| i % 3 == p).map(move |i| (p, format!("m{i}"))))
            .collect();
        assert_eq!(got, want);
    }

    fn queue_ttl_expires_and_dead_letters(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        dlx(&ch);
        ch.queue_declare(
            &Queue::new("q")
                .with_message_ttl(Duration::from_millis(20))
                .with_dead_letter("dlx", None),
        )
        .unwrap();
        ch.producer().publish("old", "q").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        ch.producer().publish("fresh", "q").unwrap();
        assert_eq!(drain_bodies(&ch, "q"), ["fresh"]);
        let d = must_get(&ch, "dead");
        assert_eq!(body(&d), "old");
        assert_eq!(
            d.properties().headers.get("x-first-death-reason"),
            Some(&Value::from("expired"))
        );
        assert_eq!(
            d.properties().headers.get("x-first-death-queue"),
            Some(&Value::from("q"))
        );
        // The dead-letter count is recorded when the republish returns; on
        // `local://?fsync=always` that is after its sync, while the message
        // can be read as soon as it is committed. So the count may trail
        // the message by a sync: wait for it, then check it is exact.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut s = c.stats().counters();
        while s.dead_lettered == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            s = c.stats().counters();
        }
        assert_eq!((s.expired, s.dead_lettered), (1, 1));
    }

    fn per_message_expiration_without_dlx_is_counted(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        let p = ch.producer();
        p.publish(
            Message::new("short").with_expiration(Duration::from_millis(10)),
            "q",
        )
        .unwrap();
        p.publish(
            Message::new("long").with_expiration(Duration::from_secs(600)),
            "q",
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(drain_bodies(&ch, "q"), ["long"]);
        assert_eq!(c.stats().counters().expired, 1);
    }

    fn reject_dead_letters_with_routing_key_override(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::direct("dlx-d")).unwrap();
        queue(&ch, "parking");
        ch.queue_bind("parking", "dlx-d", "parked", Headers::new())
            .unwrap();
        ch.queue_declare(&Queue::new("work").with_dead_letter("dlx-d", Some("parked")))
            .unwrap();
        ch.producer().publish("bad", "work").unwrap();
        must_get(&ch, "work").reject(false).unwrap();
        let d = must_get(&ch, "parking");
        assert_eq!(body(&d), "bad");
        assert_eq!(d.exchange(), "dlx-d");
        assert_eq!(d.routing_key(), "parked");
        assert_eq!(
            d.properties().headers.get("x-first-death-reason"),
            Some(&Value::from("rejected"))
        );
    }

    fn drop_head_overflow_dead_letters_the_oldest(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        dlx(&ch);
        ch.queue_declare(
            &Queue::new("q")
                .with_max_length(2)
                .with_overflow(Overflow::DropHead)
                .with_dead_letter("dlx", None),
        )
        .unwrap();
        for b in ["1", "2", "3"] {
            ch.producer().publish(b, "q").unwrap();
        }
        assert_eq!(drain_bodies(&ch, "q"), ["2", "3"]);
        let d = must_get(&ch, "dead");
        assert_eq!(body(&d), "1");
        assert_eq!(
            d.properties().headers.get("x-first-death-reason"),
            Some(&Value::from("maxlen"))
        );
    }

    fn dead_letter_with_no_matching_queue_is_counted_not_silent(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        ch.exchange_declare(&Exchange::direct("empty-dlx")).unwrap();
        ch.queue_declare(&Queue::new("q").with_dead_letter("empty-dlx", None))
            .unwrap();
        ch.producer().publish("x", "q").unwrap();
        must_get(&ch, "q").reject(false).unwrap();
        assert_eq!(c.stats().counters().dropped_dead_letter, 1);
    }
}
