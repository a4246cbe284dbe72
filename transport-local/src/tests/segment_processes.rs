//! Real processes appending to one segment at once, and a writer killed with
//! SIGKILL in the middle of its appends: every committed record is present and
//! intact, each writer's records are in its order, and readers get past the
//! dead writer's hole.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::common::reopen;
use dashi_test_support::TestDir;

use crate::recovery::recover;
use crate::segment::{Segment, Slot, HEADER_LEN};

const CHILD: &str = "DASHI_SEGMENT_CHILD";

/// The child role: `path,writer,count` (count 0 = until killed). Not a test of
/// its own: the tests below run it in child processes.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let mut parts = spec.split(',');
    let path = PathBuf::from(parts.next().unwrap());
    let writer: u32 = parts.next().unwrap().parse().unwrap();
    let count: u32 = parts.next().unwrap().parse().unwrap();
    let seg = reopen(&path);
    let mut i = 0u32;
    while count == 0 || i < count {
        let mut p = writer.to_le_bytes().to_vec();
        p.extend_from_slice(&i.to_le_bytes());
        p.resize(8 + (i % 300) as usize, 0x5A);
        match seg.append(&p, 0, u64::from(std::process::id()) << 32, 0) {
            Ok(_) => i += 1,
            Err(e) => panic!("child append: {e}"),
        }
    }
}

fn spawn(path: &Path, writer: u32, count: u32) -> Child {
    super::common::child_role(
        "segment_processes",
        CHILD,
        format!("{},{writer},{count}", path.display()),
    )
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap()
}

fn setup(size: u64) -> (TestDir, PathBuf) {
    let (dir, _seg) = super::common::fresh_segment(size);
    let path = dir.join("0.seg");
    (dir, path)
}

/// Per writer, the sequence numbers found, in log order.
fn per_writer(seg: &Segment, writers: u32) -> Vec<Vec<u32>> {
    let mut out = vec![Vec::new(); writers as usize];
    let mut off = HEADER_LEN;
    loop {
        match seg.read(off) {
            Slot::Record { meta, len } => {
                let p = seg.payload(off, &meta);
                let w = u32::from_le_bytes(p[..4].try_into().unwrap());
                out[w as usize].push(u32::from_le_bytes(p[4..8].try_into().unwrap()));
                off += len;
            }
            Slot::Padding { len } | Slot::Moved { len } => off += len,
            Slot::End => return out,
            other => panic!("{other:?} at {off}"),
        }
    }
}

#[test]
fn processes_append_concurrently() {
    let (_dir, path) = setup(16 << 20);
    let mut kids: Vec<Child> = (0..3).map(|w| spawn(&path, w, 3000)).collect();
    for k in &mut kids {
        assert!(k.wait().unwrap().success());
    }
    let seg = reopen(&path);
    for (w, seqs) in per_writer(&seg, 3).into_iter().enumerate() {
        assert_eq!(seqs, (0..3000).collect::<Vec<_>>(), "writer {w}");
    }
}

#[test]
fn a_writer_killed_mid_append_leaves_nothing_blocked_or_lost() {
    let (_dir, path) = setup(64 << 20);
    // Bounded so it can never fill the segment, should the kill come late.
    let mut victim = spawn(&path, 0, 100_000);
    let seg = reopen(&path);
    // Let the victim get going on its own, then start the survivor and let
    // them interleave before the victim is killed without warning.
    let grow_to = |target: u64| {
        let start = Instant::now();
        while seg.reserved_to() < target {
            assert!(start.elapsed() < Duration::from_secs(30), "writers stalled");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    grow_to(HEADER_LEN + 200_000);
    let mut survivor = spawn(&path, 1, 20_000);
    grow_to(seg.reserved_to() + 100_000);
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert!(survivor.wait().unwrap().success());
    // A reader walking the log pads over the dead writer's hole (if the kill
    // landed between reserve and commit) and reaches everything after it.
    let mut off = HEADER_LEN;
    let mut holes = 0;
    loop {
        match seg.read(off) {
            Slot::Record { len, .. } | Slot::Padding { len } | Slot::Moved { len } => off += len,
            Slot::Pending { .. } => {
                if seg.next_valid(off) >= seg.reserved_to() {
                    break; // the dead writer's reservation is the last one
                }
                assert!(seg.pad(off));
                holes += 1;
            }
            Slot::End => break,
            Slot::Corrupt { reason, .. } => panic!("corrupt record at {off}: {reason}"),
        }
    }
    assert!(holes <= 1, "{holes}");
    let found = per_writer_after_recovery(&path);
    assert_eq!(found[1], (0..20_000).collect::<Vec<_>>());
    let victim_seqs = &found[0];
    assert!(!victim_seqs.is_empty());
    assert_eq!(
        *victim_seqs,
        (0..victim_seqs.len() as u32).collect::<Vec<_>>()
    );
}

fn per_writer_after_recovery(path: &Path) -> Vec<Vec<u32>> {
    let seg = reopen(path);
    let report = recover(&seg, true, true, |_, _, reason| {
        panic!("nothing is corrupt after a kill: {reason}")
    })
    .unwrap();
    assert!(report.moved.is_empty());
    per_writer(&seg, 2)
}
