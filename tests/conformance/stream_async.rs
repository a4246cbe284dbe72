//! The async `Stream` of deliveries, on a minimal executor (futures'
//! `block_on`), so it does not depend on any particular runtime.

use std::time::Duration;

use dashi::ConsumerOptions;
use futures::StreamExt;

use super::*;

conformance! {
    fn stream_yields_in_order_and_wakes_on_publish(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        ch.producer().publish("a", "q").unwrap();
        let mut s = ch.stream(ConsumerOptions::new("q")).unwrap();
        let url2 = url.to_owned();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            let c2 = connect(&url2);
            c2.channel().unwrap().producer().publish("b", "q").unwrap();
        });
        let got = futures::executor::block_on(async {
            let mut v = Vec::new();
            for _ in 0..2 {
                let d = s.next().await.unwrap().unwrap();
                v.push(body(&d));
                d.ack().unwrap();
            }
            v
        });
        t.join().unwrap();
        assert_eq!(got, ["a", "b"]);
        assert!(s.tag().starts_with("ctag"));
    }

    fn stream_respects_prefetch_and_ends_when_the_queue_is_deleted(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        numbered(&ch, 3);
        let mut s = ch
            .stream(ConsumerOptions::new("q").prefetch_count(1))
            .unwrap();
        let first = futures::executor::block_on(s.next()).unwrap().unwrap();
        // Window full: the next poll must not yield until the ack.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(s.poll_next_unpin(&mut cx).is_pending());
        first.ack().unwrap();
        let second = futures::executor::block_on(s.next()).unwrap().unwrap();
        assert_eq!(body(&second), "1");
        second.ack().unwrap();
        let admin = c.channel().unwrap();
        admin.queue_delete("q", false, false).unwrap();
        assert!(futures::executor::block_on(s.next()).is_none());
    }

    fn a_lone_stream_takes_a_run_and_its_drop_puts_the_rest_back_unseen(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        numbered(&ch, 10);
        let mut s = ch.stream(ConsumerOptions::new("q")).unwrap();
        let first = futures::executor::block_on(s.next()).unwrap().unwrap();
        assert_eq!(body(&first), "0");
        first.ack().unwrap();
        // One store call took the run: nothing is left ready in the queue.
        assert_eq!(c.stats().queue("q").unwrap().messages, 0);
        let second = futures::executor::block_on(s.next()).unwrap().unwrap();
        assert_eq!(body(&second), "1");
        second.ack().unwrap();
        drop(s);
        assert_eq!(drain_flags(&ch, "q"), unseen(2..10));
    }

    fn a_no_ack_streams_run_goes_back_unseen_and_unacked(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        numbered(&ch, 6);
        let mut s = ch.stream(ConsumerOptions::new("q").no_ack(true)).unwrap();
        let first = futures::executor::block_on(s.next()).unwrap().unwrap();
        assert_eq!(body(&first), "0");
        drop(s);
        // Only the one handed out counts as acked; the rest are ready again.
        let q = c.stats().queue("q").unwrap();
        assert_eq!((q.messages, q.unacked), (5, 0));
        assert_eq!(drain_flags(&ch, "q"), unseen(1..6));
    }

    fn closing_the_channel_puts_a_streams_run_back(url: &str) {
        let c = connect(url);
        let ch = c.channel().unwrap();
        numbered(&ch, 5);
        let mut s = ch.stream(ConsumerOptions::new("q")).unwrap();
        let first = futures::executor::block_on(s.next()).unwrap().unwrap();
        first.ack().unwrap();
        ch.close();
        // The stream is still held: its run is back all the same.
        let other = c.channel().unwrap();
        assert_eq!(drain_flags(&other, "q"), unseen(1..5));
        assert!(futures::executor::block_on(s.next()).is_none());
    }
}

/// Declares "q" on `ch` and publishes "0", "1", ... "n-1" to it.
fn numbered(ch: &dashi::Channel, n: u32) {
    queue(ch, "q");
    for i in 0..n {
        ch.producer().publish(i.to_string(), "q").unwrap();
    }
}

/// `(body, redelivered = false)` for the numbered messages in `range`.
fn unseen(range: std::ops::Range<u32>) -> Vec<(String, bool)> {
    range.map(|i| (i.to_string(), false)).collect()
}
