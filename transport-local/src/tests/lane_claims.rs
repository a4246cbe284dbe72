//! A lane shared by threads and processes: every record is claimed once, in
//! log order; restored records come back first, flagged; segments roll over;
//! records held by a consumer killed with SIGKILL are reclaimed for others.

use dashi_test_support::TestDir;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::lane::Lane;
use crate::procs::Registration;
use crate::segment::claim;
use crate::shared_page::SharedPage;
use crate::tests::common::segment_files;

const CHILD: &str = "DASHI_LANE_CHILD";

fn dir(_tag: &str) -> TestDir {
    TestDir::new()
}

fn payload(writer: u32, i: u32) -> Vec<u8> {
    let mut p = writer.to_le_bytes().to_vec();
    p.extend_from_slice(&i.to_le_bytes());
    p.resize(8 + (i % 100) as usize, 0x11);
    p
}

/// A claim owner for tests: store process `n` (never registered, so never
/// a live process to `procs::alive`).
fn who(n: u32) -> u32 {
    n
}

/// Registers the calling process with the "store" at `d` (the lane
/// directory doubles as one here): its id, alive while the value lives.
fn register(d: &Path) -> Registration {
    let control = SharedPage::open(&d.join("control")).unwrap();
    Registration::register(d, &control).unwrap()
}

fn parse(c: &crate::lane::Claimed) -> (u32, u32) {
    let p = c.segment.payload(c.pos.off, &c.meta);
    (
        u32::from_le_bytes(p[..4].try_into().unwrap()),
        u32::from_le_bytes(p[4..8].try_into().unwrap()),
    )
}

/// A lane of small segments holding records 0..100 of writer 0, rolled
/// over several times.
fn hundred_records_over_segments() -> (TestDir, Lane) {
    let d = dir("hundred");
    let lane = Lane::open_dir(&d, 0, 8192).unwrap();
    for i in 0..100 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    assert!(
        std::fs::read_dir(&d).unwrap().count() > 3,
        "segments rolled over"
    );
    (d, lane)
}

#[test]
fn claims_in_order_restores_first_and_rolls_over() {
    let (_d, lane) = hundred_records_over_segments();
    assert_eq!(lane.counts().0, 100);
    let mut got = Vec::new();
    let mut held = Vec::new();
    for _ in 0..10 {
        let c = lane.claim(who(7)).unwrap().unwrap();
        assert!(!c.redelivered);
        got.push(parse(&c).1);
        held.push(c);
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
    // Give back 3 and 5: they come next, in log order, flagged.
    assert!(lane.restore(&held[5], who(7), true));
    assert!(lane.restore(&held[3], who(7), true));
    assert!(!lane.restore(&held[3], who(7), true), "restored twice");
    let a = lane.claim(who(8)).unwrap().unwrap();
    let b = lane.claim(who(8)).unwrap().unwrap();
    assert_eq!((parse(&a).1, a.redelivered), (3, true));
    assert_eq!((parse(&b).1, b.redelivered), (5, true));
    assert!(!lane.settle(&a, who(7), claim::ACKED), "not the owner");
    assert!(lane.settle(&a, who(8), claim::ACKED));
    let rest: Vec<u32> = std::iter::from_fn(|| lane.claim(who(9)).unwrap())
        .map(|c| parse(&c).1)
        .collect();
    assert_eq!(rest, (10..100).collect::<Vec<_>>());
    assert!(lane.claim(who(9)).unwrap().is_none());
    assert_eq!(lane.counts().0, 0);
}

/// Runs take what one-by-one claims would, in the same order: restored
/// records first (flagged), then the log across segment ends and padding;
/// a run stops at a reservation not yet committed, and the counters and
/// `next` end where one-by-one claims leave them.
#[test]
fn runs_claim_what_single_claims_would_in_the_same_order() {
    let (_d, lane) = hundred_records_over_segments();
    let mut first = Vec::new();
    assert_eq!(lane.claim_run(who(7), 10, &mut first).unwrap(), 10);
    let ids = |v: &[crate::lane::Claimed]| v.iter().map(|c| parse(c).1).collect::<Vec<_>>();
    assert_eq!(ids(&first), (0..10).collect::<Vec<_>>());
    assert!(first.iter().all(|c| !c.redelivered));
    assert_eq!(lane.counts().0, 90, "ten taken");
    // Give back 5 and 3: the next run starts with them, in log order, flagged.
    assert!(lane.restore(&first[5], who(7), true));
    assert!(lane.restore(&first[3], who(7), true));
    let mut second = Vec::new();
    assert_eq!(lane.claim_run(who(8), 40, &mut second).unwrap(), 40);
    assert_eq!(ids(&second[..2]), [3, 5]);
    assert!(second[..2].iter().all(|c| c.redelivered));
    assert_eq!(ids(&second[2..]), (10..48).collect::<Vec<_>>());
    // The rest in one run that asks for more than there is, across the
    // remaining segment ends.
    let mut rest = Vec::new();
    assert_eq!(lane.claim_run(who(9), 1000, &mut rest).unwrap(), 52);
    assert_eq!(ids(&rest), (48..100).collect::<Vec<_>>());
    assert_eq!(lane.claim_run(who(9), 10, &mut rest).unwrap(), 0);
    assert!(lane.claim(who(9)).unwrap().is_none());
    assert_eq!(lane.counts().0, 0);
    // Settled by their owners, every claim of the runs is accounted for.
    for c in first.iter().filter(|c| ![3, 5].contains(&parse(c).1)) {
        assert!(lane.settle(c, who(7), claim::ACKED));
    }
    for c in &second {
        assert!(lane.settle(c, who(8), claim::ACKED));
    }
    for c in &rest {
        assert!(lane.settle(c, who(9), claim::ACKED));
    }
    assert_eq!(lane.counts(), (0, 0, 0));
    // A reservation not yet committed stops a run: what was committed
    // before it is taken, and what comes after waits until it is padded
    // over (its writer died).
    let d = dir("runs-blocked");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    let at = lane.append(&payload(1, 0), 0, 1, 0).unwrap();
    lane.segment(at.seq).unwrap().unwrap().reserve_only(40);
    lane.append(&payload(1, 2), 0, 1, 0).unwrap();
    let mut got = Vec::new();
    assert_eq!(lane.claim_run(who(9), 10, &mut got).unwrap(), 1);
    assert_eq!(
        lane.claim_run(who(9), 10, &mut got).unwrap(),
        0,
        "blocked by the hole"
    );
    assert!(lane
        .unblock(|_| true, Duration::ZERO, Duration::ZERO)
        .unwrap());
    assert_eq!(lane.claim_run(who(9), 10, &mut got).unwrap(), 1);
    assert_eq!(got.iter().map(parse).collect::<Vec<_>>(), [(1, 0), (1, 2)]);
}

/// Two producer threads append 3000 records each while three consumer
/// threads claim with `take` (which gets the lane, the consumer's number
/// and its owner, and pushes what it claimed) and settle: each record is
/// claimed once, each producer's records in order within each consumer.
fn produce_and_claim_concurrently(
    tag: &str,
    segment_size: u64,
    take: impl Fn(&Lane, u32, u32, &mut Vec<crate::lane::Claimed>) + Send + Sync + 'static,
) {
    let d = dir(tag);
    let lane = Arc::new(Lane::open_dir(&d, 0, segment_size).unwrap());
    let producers: Vec<_> = (0..2u32)
        .map(|w| {
            let lane = lane.clone();
            std::thread::spawn(move || {
                for i in 0..3000 {
                    lane.append(&payload(w, i), 0, u64::from(w), 0).unwrap();
                }
            })
        })
        .collect();
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let take = Arc::new(take);
    let consumers: Vec<_> = (0..3u32)
        .map(|c| {
            let (lane, total, take) = (lane.clone(), total.clone(), take.clone());
            std::thread::spawn(move || {
                let me = who(100 + c);
                let mut got = Vec::new();
                let mut run = Vec::new();
                let start = Instant::now();
                while total.load(std::sync::atomic::Ordering::SeqCst) < 6000 {
                    assert!(
                        start.elapsed() < Duration::from_secs(30),
                        "consumers stalled"
                    );
                    take(&lane, c, me, &mut run);
                    if run.is_empty() {
                        std::thread::yield_now();
                    }
                    for x in run.drain(..) {
                        got.push(parse(&x));
                        assert!(lane.settle(&x, me, claim::ACKED));
                        total.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                got
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let mut all: Vec<(u32, u32)> = Vec::new();
    for c in consumers {
        let got = c.join().unwrap();
        for w in 0..2 {
            let seqs: Vec<u32> = got.iter().filter(|x| x.0 == w).map(|x| x.1).collect();
            assert!(seqs.windows(2).all(|p| p[0] < p[1]), "out of order");
        }
        all.extend(got);
    }
    assert!(lane.claim(who(1)).unwrap().is_none());
    let set: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!(set.len(), all.len(), "a record was claimed twice");
    assert_eq!(all.len(), 6000);
    assert_eq!(lane.counts(), (0, 0, 0));
}

#[test]
fn threads_claim_each_record_once() {
    produce_and_claim_concurrently("threads", 64 * 1024, |lane, _, me, out| {
        out.extend(lane.claim(me).unwrap());
    });
}

/// Runs against each other and against one-by-one claims, across segment
/// ends (small segments).
#[test]
fn threads_claiming_runs_take_each_record_once() {
    produce_and_claim_concurrently("threads-runs", 16 * 1024, |lane, c, me, out| {
        // Consumer 2 claims one at a time, the others in runs of 1 and 17.
        if c == 2 {
            out.extend(lane.claim(me).unwrap());
        } else {
            lane.claim_run(me, 1 + c as usize * 16, out).unwrap();
        }
    });
}

/// Child role: `dir,mode,id,count` — mode `p` appends `count` records, mode
/// `c` claims and acks until `count` are done, mode `h` claims `count` records,
/// prints "held" and waits to be killed.
#[test]
#[ignore = "run as a child process by the tests in this file"]
fn child_role() {
    let spec = std::env::var(CHILD).expect("run by the tests in this file");
    let parts: Vec<&str> = spec.split(',').collect();
    let d = Path::new(parts[0]);
    let lane = Lane::open_dir(d, 0, 256 * 1024).unwrap();
    let me = register(d);
    let id: u32 = parts[2].parse().unwrap();
    let count: u32 = parts[3].parse().unwrap();
    match parts[1] {
        "p" => {
            for i in 0..count {
                lane.append(&payload(id, i), 0, u64::from(me.id()), 0)
                    .unwrap();
            }
        }
        "h" => {
            let mut held = Vec::new();
            while held.len() < count as usize {
                if let Some(c) = lane.claim(me.id()).unwrap() {
                    held.push(c);
                }
            }
            println!("held");
            std::thread::sleep(Duration::from_secs(600));
        }
        _ => unreachable!(),
    }
}

fn spawn(d: &Path, mode: &str, id: u32, count: u32) -> Child {
    super::common::child_role(
        "lane_claims",
        CHILD,
        format!("{},{mode},{id},{count}", d.display()),
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.split_whitespace().nth(2) == Some("Z"))
            .unwrap_or(true)
}

#[test]
fn processes_produce_and_a_killed_consumer_s_records_come_back() {
    let d = dir("procs");
    std::fs::create_dir_all(&d).unwrap();
    let lane = Lane::open_dir(&d, 0, 256 * 1024).unwrap();
    let mut producers: Vec<Child> = (0..2).map(|w| spawn(&d, "p", w, 2000)).collect();
    for p in &mut producers {
        assert!(p.wait().unwrap().success());
    }
    assert_eq!(lane.counts().0, 4000);
    // A consumer process takes 50 records and dies holding them.
    let mut holder = spawn(&d, "h", 9, 50);
    use std::io::BufRead;
    let line = std::io::BufReader::new(holder.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("held"))
        .unwrap_or_default();
    assert!(line.contains("held"), "{line}");
    let pid = holder.id();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(lane.counts().2, 50);
    let reg = register(&d);
    let me = reg.id();
    let root = d.to_path_buf();
    assert_eq!(
        lane.reclaim(
            |id| crate::procs::alive(&root, id),
            me,
            crate::clock::shared_now_ns(),
            0
        )
        .unwrap(),
        50
    );
    assert_eq!(lane.counts(), (4000, lane.counts().1, 0));
    // Everything is there once; the 50 come first, flagged redelivered.
    let mut all = Vec::new();
    let mut redelivered = 0;
    while let Some(c) = lane.claim(me).unwrap() {
        if c.redelivered {
            assert_eq!(redelivered, all.len(), "restored records come first");
            redelivered += 1;
        }
        all.push(parse(&c));
        assert!(lane.settle(&c, me, claim::ACKED));
    }
    assert_eq!(redelivered, 50);
    let set: BTreeSet<_> = all.iter().copied().collect();
    assert_eq!((all.len(), set.len()), (4000, 4000));
    for w in 0..2 {
        let seqs: BTreeSet<u32> = all.iter().filter(|x| x.0 == w).map(|x| x.1).collect();
        assert_eq!(seqs, (0..2000).collect());
    }
    assert!(!alive(pid));
}

#[test]
fn retention_deletes_settled_segments_and_follows_the_slowest_consumer() {
    let d = dir("retention");
    let lane = Lane::open_dir(&d, 0, 64 * 1024).unwrap();
    for i in 0..3000 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    let total = segment_files(&d);
    assert!(total > 5, "{total}");
    // A consumer holds the very first record: nothing can go.
    let first = lane.claim(who(1)).unwrap().unwrap();
    let mut rest = Vec::new();
    while let Some(c) = lane.claim(who(2)).unwrap() {
        rest.push(c);
    }
    for c in &rest {
        assert!(lane.settle(c, who(2), claim::ACKED));
    }
    assert_eq!(lane.retire().unwrap(), 0);
    assert_eq!(segment_files(&d), total);
    // Once it is acked, every segment but the one being written goes.
    assert!(lane.settle(&first, who(1), claim::ACKED));
    assert_eq!(lane.retire().unwrap(), total - 1);
    assert_eq!(segment_files(&d), 1);
    // The lane keeps working after retention.
    lane.append(b"after", 0, 1, 0).unwrap();
    assert!(lane.claim(who(3)).unwrap().is_some());
}

#[test]
fn a_dead_producers_reservation_does_not_block_consumers() {
    let d = dir("unblock");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    // A producer reserves and dies before writing anything (no pid in the
    // header), then another commits after it.
    lane.segment(0).unwrap().unwrap().reserve_only(40);
    lane.append(&payload(0, 2), 0, 1, 0).unwrap();
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 0);
    assert!(lane.claim(who(1)).unwrap().is_none(), "blocked by the hole");
    // Not old enough yet: nothing happens.
    assert!(!lane
        .unblock(
            |_| true,
            Duration::from_secs(3600),
            Duration::from_secs(3600)
        )
        .unwrap());
    assert!(lane.claim(who(1)).unwrap().is_none());
    // Old enough: padded over, and the record after it flows.
    assert!(lane
        .unblock(|_| true, Duration::ZERO, Duration::ZERO)
        .unwrap());
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 2);
}

/// A reservation whose header names no writer waits the short wait (its
/// writer names itself a few instructions after reserving, so it died
/// there); one naming a writer that is alive waits the long one (stopped,
/// or copying a large record). Both waited the long one: a producer killed
/// right after reserving blocked its lane 10 s.
#[test]
fn an_unnamed_reservation_waits_less_than_a_live_writer_s() {
    let d = dir("unblock-waits");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    let seg = lane.segment(0).unwrap().unwrap();
    // A live writer's record, written, not committed; a dead writer's
    // reservation with nothing written; a committed record.
    let live = seg.reserve_and_write(&payload(0, 1), 0, 7);
    seg.reserve_only(40);
    lane.append(&payload(0, 3), 0, 1, 0).unwrap();
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 0);
    let (long, short) = (Duration::from_secs(3600), Duration::ZERO);
    assert!(
        !lane.unblock(|_| true, long, short).unwrap(),
        "a live writer's reservation padded after the short wait"
    );
    assert!(seg.commit_reserved(live), "the live writer's commit");
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 1);
    assert!(
        lane.unblock(|_| true, long, short).unwrap(),
        "an unnamed reservation waited the long wait"
    );
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 3);
}

/// Defect 3 of the log-protocol review: padding over a dead writer's
/// reservation covers exactly that reservation, never the uncommitted one of
/// a live writer right after it, whose commit then succeeds and is read.
#[test]
fn padding_a_dead_writers_hole_spares_the_live_writer_after_it() {
    let d = dir("exactpad");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    let seg = lane.segment(0).unwrap().unwrap();
    // Dead: reserved, nothing written. Live: reserved and written, not yet
    // committed. Then a committed record after both.
    seg.reserve_only(40);
    let live = seg.reserve_and_write(&payload(0, 2), 0, 7);
    lane.append(&payload(0, 3), 0, 1, 0).unwrap();
    assert_eq!(parse(&lane.claim(who(1)).unwrap().unwrap()).1, 0);
    // The dead writer's hole is padded (it never named itself: age).
    assert!(lane
        .unblock(|_| true, Duration::ZERO, Duration::ZERO)
        .unwrap());
    // The live writer's reservation is next, still pending: not skipped.
    assert!(
        lane.claim(who(1)).unwrap().is_none(),
        "the live reservation was padded over"
    );
    assert!(seg.commit_reserved(live), "the live writer's commit");
    let got: Vec<u32> = std::iter::from_fn(|| lane.claim(who(1)).unwrap())
        .map(|c| parse(&c).1)
        .collect();
    assert_eq!(got, [2, 3]);
}

#[test]
fn a_segment_the_disk_cannot_hold_is_a_clear_error() {
    // A lane's first segment is 1 MiB (whatever the segment size): a
    // 512 KiB filesystem cannot hold it. Opening needs no space; the first
    // append says why it cannot.
    let Some(fs) = dashi_test_support::Tmpfs::make(512) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let d = fs.mount.join("lane");
    std::fs::create_dir(&d).unwrap();
    let lane = Lane::open_dir(&d, 0, 64 << 20).unwrap();
    let e = lane.append(b"x", 1, 1, 0).unwrap_err().to_string();
    assert!(e.contains("cannot allocate"), "{e}");
    assert!(e.contains("(the disk or the quota is full)"), "{e}");
    // The lane is still an empty lane.
    assert!(lane.claim(who(1)).unwrap().is_none());
    assert_eq!(lane.counts(), (0, 0, 0));
    // Nothing half-made is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".seg"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn an_expired_lease_of_another_process_comes_back_after_the_grace() {
    let d = dir("lease");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    for i in 0..3 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    // "Another process" that is alive: this one, seen from a second owner.
    let reg = register(&d);
    let holder = reg.id();
    let other = who(4);
    let now = crate::clock::shared_now_ns();
    let a = lane.claim(holder).unwrap().unwrap();
    let b = lane.claim(holder).unwrap().unwrap();
    let c = lane.claim(holder).unwrap().unwrap();
    assert!(lane.set_deadline(&a, holder, now - 5_000_000_000));
    assert!(lane.set_deadline(&b, holder, now - 500_000_000));
    assert!(lane.set_deadline(&c, holder, now + 60_000_000_000));
    assert!(!lane.set_deadline(&c, other, 1), "not the owner");
    // The holder itself leaves its leases to its engine.
    assert_eq!(
        lane.reclaim(|_| true, holder, now, 1_000_000_000).unwrap(),
        0
    );
    // Another process: only the lease more than a grace past its deadline.
    assert_eq!(
        lane.reclaim(|_| true, other, now, 1_000_000_000).unwrap(),
        1
    );
    let again = lane.claim(other).unwrap().unwrap();
    assert!(again.redelivered);
    assert_eq!(parse(&again).1, 0);
    // The old holder can neither settle nor extend what it lost.
    assert!(!lane.settle(&a, holder, claim::ACKED));
    assert!(!lane.set_deadline(&a, holder, now + 1));
    // The old deadline belongs to the old claim (its generation): the new
    // claim has no lease.
    assert_eq!(lane.reclaim(|_| true, who(5), now, 0).unwrap(), 1, "b only");
    assert!(lane.settle(&c, holder, claim::ACKED));
    assert!(lane.settle(&again, other, claim::ACKED));
}

/// An owner whose lock nobody holds is gone (a process that ended, or an id
/// that never registered): its claims come back; a registered owner's stay.
#[test]
fn only_owners_that_run_keep_their_claims() {
    let d = dir("owners");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    lane.append(&payload(0, 1), 0, 1, 0).unwrap();
    let reg = register(&d);
    let ghost = reg.id() + 1000;
    lane.claim(ghost).unwrap().unwrap();
    lane.claim(reg.id()).unwrap().unwrap();
    let root = d.to_path_buf();
    let n = lane
        .reclaim(
            |id| crate::procs::alive(&root, id),
            who(3),
            crate::clock::shared_now_ns(),
            0,
        )
        .unwrap();
    assert_eq!(n, 1, "only the ghost's claim comes back");
    let back = lane.claim(reg.id()).unwrap().unwrap();
    assert!(back.redelivered);
    assert_eq!(parse(&back).1, 0);
}

#[test]
fn a_ready_record_stranded_below_next_is_delivered_after_recovery() {
    // After a power loss the state page can be newer than a segment page: a
    // claim word reads ready again while `next` has moved past it.
    let d = dir("stranded");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    for i in 0..3 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    let lost = lane.claim(who(1)).unwrap().unwrap();
    lost.segment
        .claim_word(lost.pos.off)
        .store(0, std::sync::atomic::Ordering::SeqCst);
    let got: Vec<u32> = std::iter::from_fn(|| lane.claim(who(2)).unwrap())
        .map(|c| parse(&c).1)
        .collect();
    assert_eq!(
        got,
        vec![1, 2],
        "without a restore mark record 0 is stranded"
    );
    drop(lane);
    // Reopened by the store's first user, which recovers it.
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    assert!(
        lane.claim(who(3)).unwrap().is_none(),
        "found without recovery"
    );
    let t = lane.recover().unwrap();
    // Recovery runs when every other user has ended: their claims (records
    // 1 and 2 here) come back too, flagged, in log order after record 0.
    assert_eq!(t.claims_restored, 2);
    let back: Vec<(u32, bool)> = std::iter::from_fn(|| lane.claim(who(3)).unwrap())
        .map(|c| (parse(&c).1, c.redelivered))
        .collect();
    assert_eq!(back, [(0, false), (1, true), (2, true)]);
    assert_eq!(lane.counts().0, 0);
}

/// A restorer killed between returning its record to ready and lowering
/// the restore mark left a ready record below `next` that no claim walks
/// to; the next reclaim (every consumer process runs one every 100 ms)
/// marks it, so it is delivered without waiting for a recovery.
#[test]
fn a_ready_record_left_unmarked_below_next_comes_back_at_the_next_reclaim() {
    let d = dir("unmarked");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    for i in 0..3 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    let held = lane.claim(who(1)).unwrap().unwrap();
    let w = held.segment.claim_word(held.pos.off);
    let k = claim::Claim::decode(w.load(std::sync::atomic::Ordering::SeqCst)).unwrap();
    // The restore's CAS, and nothing after it.
    let ready = claim::Claim {
        state: claim::READY,
        redelivered: true,
        owner: 0,
        ..k
    };
    w.store(ready.encode(), std::sync::atomic::Ordering::SeqCst);
    let got: Vec<u32> = std::iter::from_fn(|| lane.claim(who(2)).unwrap())
        .map(|c| parse(&c).1)
        .collect();
    assert_eq!(got, [1, 2], "record 0 is behind `next` and unmarked");
    assert_eq!(lane.reclaim(|_| true, who(2), 0, 0).unwrap(), 0);
    let back = lane.claim(who(2)).unwrap().expect("marked by the reclaim");
    assert_eq!((parse(&back).1, back.redelivered), (0, true));
    assert!(lane.claim(who(2)).unwrap().is_none());
}

/// A record whose checksum fails is skipped by claims but keeps a
/// ready-looking claim word below `next`. Reclaim does not mark it: a mark
/// there would send a walk to it after every reclaim, for nothing, and
/// turn every run into single claims.
#[test]
fn reclaim_does_not_mark_a_record_whose_checksum_fails() {
    use std::os::unix::fs::FileExt;
    let d = dir("corrupt");
    let lane = Lane::open_dir(&d, 0, 1 << 20).unwrap();
    let bad = lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    lane.append(&payload(0, 1), 0, 1, 0).unwrap();
    // A payload byte of record 0, through the file (the mapping is shared).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.join(format!("{:016x}.seg", bad.seq)))
        .unwrap();
    let at = bad.off + 64 + 3;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, at).unwrap();
    let got: Vec<u32> = std::iter::from_fn(|| lane.claim(who(2)).unwrap())
        .map(|c| parse(&c).1)
        .collect();
    assert_eq!(got, [1], "the corrupt record is skipped");
    lane.reclaim(|_| true, who(2), 0, 0).unwrap();
    let mark = lane.shared_word(crate::lane::at::RESTORE_LOW);
    assert_eq!(
        mark.load(std::sync::atomic::Ordering::SeqCst),
        crate::lane::NO_POS,
        "marked"
    );
}

#[test]
fn every_process_lets_go_of_segments_retention_deleted() {
    // Two opens of one lane stand for two processes: each maps on its own.
    let d = dir("unmap");
    let producer = Lane::open_dir(&d, 0, 64 * 1024).unwrap();
    let consumer = Lane::open_dir(&d, 0, 64 * 1024).unwrap();
    for i in 0..3000 {
        producer.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    let written = segment_files(&d);
    assert!(written > 5, "{written}");
    // A writer keeps only the segments it writes to mapped, however far
    // ahead of its consumers it is (it kept every one it wrote, with a
    // descriptor each under fsync=always).
    assert!(
        producer.mapped_segments() <= 3,
        "{} of {written} mapped",
        producer.mapped_segments()
    );
    while let Some(c) = consumer.claim(who(2)).unwrap() {
        assert!(consumer.settle(&c, who(2), claim::ACKED));
    }
    let deleted = consumer.retire().unwrap();
    assert_eq!(deleted, written - 1);
    assert!(
        consumer.mapped_segments() <= 1,
        "{}",
        consumer.mapped_segments()
    );
    // The producer drops its mappings of deleted files when it next rolls over.
    for i in 0..1000 {
        producer.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    assert!(
        producer.mapped_segments() <= 3,
        "{} still mapped",
        producer.mapped_segments()
    );
}

/// One process that publishes and reads a lane keeps what it mapped until
/// retention deletes it (its upkeep scans walk from the oldest unsettled
/// record, and would map every segment again after each rotation); every
/// record comes once, in order; retention then lets go of them.
#[test]
fn a_process_that_reads_a_lane_keeps_its_segments_until_retention() {
    let d = dir("backlog-read");
    let lane = Lane::open_dir(&d, 0, 64 * 1024).unwrap();
    lane.append(&payload(0, 0), 0, 1, 0).unwrap();
    // Read, and held: the oldest unsettled record stays in segment 0.
    let held = lane.claim(who(1)).unwrap().unwrap();
    for i in 1..3000 {
        lane.append(&payload(0, i), 0, 1, 0).unwrap();
    }
    let written = segment_files(&d);
    assert!(written > 5, "{written}");
    assert_eq!(lane.mapped_segments(), written, "segments let go of");
    assert!(lane.settle(&held, who(1), claim::ACKED));
    let mut next = 3000u32;
    let mut got = 1u32;
    while let Some(c) = lane.claim(who(1)).unwrap() {
        assert_eq!(parse(&c).1, got);
        assert!(lane.settle(&c, who(1), claim::ACKED));
        got += 1;
        // The writer goes on meanwhile, rotating many times.
        if next < 6000 {
            lane.append(&payload(0, next), 0, 1, 0).unwrap();
            next += 1;
        }
    }
    assert_eq!(got, 6000);
    lane.retire().unwrap();
    assert!(lane.mapped_segments() <= 2, "{}", lane.mapped_segments());
    assert!(segment_files(&d) <= 2);
}
