//! `busy_poll=<secs>`: a waiting consumer polls on the CPU before it sleeps.
//! Messages published while it polls (or after it went to sleep) arrive, and
//! a wait shorter than the polling budget still ends on time.

use std::time::{Duration, Instant};

use dashi::{ConsumerOptions, Error};

use super::*;

fn with_option(url: &str, opt: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{opt}")
}

conformance! {
    fn a_busy_polling_get_and_drain_receive_and_respect_their_timeouts(url: &str) {
        let url = with_option(url, "busy_poll=10");
        let c = connect(&url);
        assert_eq!(c.config().busy_poll, Duration::from_secs(10));
        let ch = c.channel().unwrap();
        queue(&ch, "q");
        // A wait of 100 ms ends after about 100 ms, not after the 10 s budget.
        let t = Instant::now();
        assert!(ch.get("q", Duration::from_millis(100)).unwrap().is_none());
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        // A message published by another connection while the get polls.
        let publisher = {
            let url = url.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                let p = connect(&url);
                p.channel()
                    .unwrap()
                    .producer()
                    .publish("late", "q")
                    .unwrap();
            })
        };
        let d = ch.get("q", WAIT).unwrap().expect("polled message");
        assert_eq!(body(&d), "late");
        d.ack().unwrap();
        publisher.join().unwrap();
        // drain_events: same budget rules.
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let g = got.clone();
        let _consumer = ch
            .consume(ConsumerOptions::new("q"), move |d| {
                g.lock().unwrap().push(body(&d));
                d.ack().unwrap();
            })
            .unwrap();
        let t = Instant::now();
        assert!(matches!(
            c.drain_events(Some(Duration::from_millis(100))),
            Err(Error::Timeout)
        ));
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        ch.producer().publish("pushed", "q").unwrap();
        assert_eq!(c.drain_events(Some(WAIT)).unwrap(), 1);
        assert_eq!(*got.lock().unwrap(), vec!["pushed".to_string()]);
    }

    fn a_bad_busy_poll_value_is_an_error_naming_it(url: &str) {
        let e = dashi::connect(&with_option(url, "busy_poll=soon"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("busy_poll"), "{e}");
    }
}
