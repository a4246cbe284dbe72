//! local:// on real small filesystems mounted from loop images: on a
//! filesystem without `fallocate` (ext2) every segment is written with zeros
//! (never sparse, so a full disk is an error at allocation, never a SIGBUS on
//! a mapped page), with and without fsync. Needs root and loop devices; where
//! they are missing the test says why and does nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dashi_engine::message::Message;
use dashi_engine::queue::Queue;
use dashi_engine::spi::ConnectUrl;
use dashi_test_support::{files_under, TestDir};

/// A filesystem image made with `mkfs` and loop-mounted on a fresh
/// directory; unmounted when dropped.
struct LoopFs {
    mount: PathBuf,
    _dir: TestDir,
}

impl LoopFs {
    /// `Err` says why it could not be made (not root, no loop device, no
    /// mkfs).
    fn make(mkfs: &str, mb: u64) -> Result<LoopFs, String> {
        let dir = TestDir::new();
        let image = dir.child("fs.img");
        let mount = dir.child("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mb << 20))
            .map_err(|e| e.to_string())?;
        run(Command::new(mkfs).args(["-q", "-F"]).arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount))?;
        Ok(LoopFs { mount, _dir: dir })
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?}: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn segments(root: &Path) -> Vec<PathBuf> {
    files_under(root, |p| p.extension().is_some_and(|x| x == "seg"))
}

#[test]
fn without_fallocate_segments_are_written_with_zeros_not_left_sparse() {
    let fs = match LoopFs::make("mkfs.ext2", 32) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("skipped: no ext2 loop mount here ({why})");
            return;
        }
    };
    // The premise: this filesystem has no fallocate.
    let probe = std::fs::File::create(fs.mount.join("probe")).unwrap();
    let err = rustix::fs::fallocate(&probe, rustix::fs::FallocateFlags::empty(), 0, 4096)
        .expect_err("ext2 has no fallocate");
    assert_eq!(err, rustix::io::Errno::OPNOTSUPP);
    drop(probe);
    for (i, fsync) in ["never", "always"].into_iter().enumerate() {
        let root = fs.mount.join(format!("store-{i}"));
        let url = format!("local://{}?segment_size=64K&fsync={fsync}", root.display());
        let conn = dashi_transport_local::open(ConnectUrl::parse(&url).unwrap()).unwrap();
        let ch = conn.channel().unwrap();
        ch.queue_declare(&Queue::new("q")).unwrap();
        for n in 0..300 {
            ch.producer()
                .publish(Message::new(vec![n as u8; 500]), "q")
                .unwrap();
        }
        let segs = segments(&root);
        assert!(segs.len() >= 2, "fsync={fsync}: {segs:?}");
        for s in &segs {
            let m = std::fs::metadata(s).unwrap();
            assert!(
                m.blocks() * 512 >= m.len(),
                "fsync={fsync}: {} is sparse ({} of {} bytes allocated)",
                s.display(),
                m.blocks() * 512,
                m.len()
            );
        }
        for n in 0..300 {
            let d = ch.get("q", Duration::from_secs(5)).unwrap().unwrap();
            assert_eq!(d.body()[0], n as u8);
            d.ack().unwrap();
        }
    }
}
