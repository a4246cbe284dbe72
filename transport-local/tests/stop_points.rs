//! `stop_at`, the named points a fault-injection harness kills a process
//! at (`dashi torture --kill-points`): unknown points and bad markers are
//! one-line errors, a build without the `failpoints` feature says so, and
//! with it an armed point stops the next thread that reaches it once (the
//! CLI's torture tests kill processes stopped there).

use dashi_transport_local::{stop_at, HAS_STOP_POINTS, STOP_POINTS};

#[test]
fn stop_points_are_named_and_checked() {
    let e = stop_at("segment::sneezed", "m1").unwrap_err();
    assert!(
        e.contains("unknown stop point") && e.contains("segment::written"),
        "{e}"
    );
    assert_eq!(HAS_STOP_POINTS, cfg!(feature = "failpoints"));
    assert_eq!(STOP_POINTS.len(), 8);
    if !HAS_STOP_POINTS {
        let e = stop_at("lane::rotating", "m1").unwrap_err();
        assert!(e.contains("failpoints feature"), "{e}");
        return;
    }
    for bad in ["", "two words", "x;y", "m)"] {
        let e = stop_at("lane::rotating", bad).unwrap_err();
        assert!(e.contains("stop marker"), "{bad:?}: {e}");
    }
    #[cfg(feature = "failpoints")]
    {
        for p in STOP_POINTS {
            stop_at(p, "m-1").unwrap();
            assert_eq!(
                fail::list()
                    .into_iter()
                    .find(|(n, _)| n == p)
                    .map(|(_, a)| a),
                Some("1*return(m-1)".to_owned())
            );
            fail::remove(p);
        }
    }
}
