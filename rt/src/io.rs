//! Operations for tasks running on a core: each builds one SQE on the core's
//! ring and completes when its CQE arrives. Buffers are owned (passed in and
//! handed back), so nothing the kernel writes to can be freed under it, and the
//! file or socket is held (`Arc`) until the CQE, so its descriptor number
//! cannot be reused under an in-flight operation.
//! Called off a core thread, they fail with [`RtError::NotOnCore`](super::RtError).
//!
//! # Invariants
//! - An operation's buffer and file stay in its reactor slot until the kernel
//!   posts its CQE, even when the future is dropped first.

use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use io_uring::{opcode, types};

use super::reactor::{self, Resources};
use super::RtError;

fn not_on_core() -> io::Error {
    io::Error::other(RtError::NotOnCore)
}

/// One in-flight operation.
struct Op {
    key: u64,
    done: bool,
}

impl Future for Op {
    type Output = (i32, Resources);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let key = self.key;
        match reactor::with(|r| r.poll_op(key, cx)) {
            Some(Poll::Ready(out)) => {
                self.done = true;
                Poll::Ready(out)
            }
            Some(Poll::Pending) => Poll::Pending,
            None => {
                self.done = true;
                Poll::Ready((-libc::ECANCELED, Resources::default()))
            }
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.done {
            let key = self.key;
            reactor::with(|r| r.drop_op(key));
        }
    }
}

fn start(
    res: Resources,
    build: impl FnOnce(&mut Resources) -> io_uring::squeue::Entry,
) -> io::Result<Op> {
    reactor::with(|r| Op {
        key: r.start(res, build),
        done: false,
    })
    .ok_or_else(not_on_core)
}

fn check(res: i32) -> io::Result<u32> {
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

/// A no-op through the ring (measures the submit → complete path).
pub async fn nop() -> io::Result<()> {
    let (res, _) = start(Resources::default(), |_| opcode::Nop::new().build())?.await;
    check(res).map(|_| ())
}

/// An operation on a held descriptor with an owned buffer: the SQE is built
/// from the buffer's address as it sits in the operation's slot, and the
/// buffer comes back with the result.
async fn buffer_op<F: AsRawFd + Send + Sync + 'static>(
    fd_owner: &Arc<F>,
    buf: Vec<u8>,
    build: impl FnOnce(types::Fd, *mut u8, u32) -> io_uring::squeue::Entry,
) -> (io::Result<usize>, Vec<u8>) {
    let fd = types::Fd(fd_owner.as_raw_fd());
    let res = Resources {
        buf: Some(buf),
        file: Some(fd_owner.clone() as Arc<dyn AsRawFd + Send + Sync>),
        ..Resources::default()
    };
    let op = start(res, |r| {
        // The Vec's heap buffer does not move while the slot owns the Vec.
        let (ptr, len) = r.buf.as_mut().map_or((std::ptr::null_mut(), 0), |b| {
            (b.as_mut_ptr(), b.len().min(u32::MAX as usize) as u32)
        });
        build(fd, ptr, len)
    });
    match op {
        Ok(op) => {
            let (n, res) = op.await;
            (check(n).map(|n| n as usize), res.buf.unwrap_or_default())
        }
        Err(e) => (Err(e), Vec::new()),
    }
}

/// Writes `buf` at `offset`; returns the bytes written and the buffer.
pub async fn write_at<F: AsRawFd + Send + Sync + 'static>(
    file: &Arc<F>,
    buf: Vec<u8>,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    buffer_op(file, buf, |fd, ptr, len| {
        opcode::Write::new(fd, ptr, len).offset(offset).build()
    })
    .await
}

/// Reads into `buf` (its length is the most read) at `offset`; returns the
/// bytes read and the buffer.
pub async fn read_at<F: AsRawFd + Send + Sync + 'static>(
    file: &Arc<F>,
    buf: Vec<u8>,
    offset: u64,
) -> (io::Result<usize>, Vec<u8>) {
    buffer_op(file, buf, |fd, ptr, len| {
        opcode::Read::new(fd, ptr, len).offset(offset).build()
    })
    .await
}

/// `fdatasync(2)` through the ring.
pub async fn fdatasync<F: AsRawFd + Send + Sync + 'static>(file: &Arc<F>) -> io::Result<()> {
    let fd = types::Fd(file.as_raw_fd());
    let res = Resources {
        file: Some(file.clone() as Arc<dyn AsRawFd + Send + Sync>),
        ..Resources::default()
    };
    let (n, _) = start(res, |_| {
        opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
    })?
    .await;
    check(n).map(|_| ())
}

/// `fallocate(2)` through the ring (`mode` 0 = allocate and extend).
pub async fn fallocate<F: AsRawFd + Send + Sync + 'static>(
    file: &Arc<F>,
    offset: u64,
    len: u64,
    mode: i32,
) -> io::Result<()> {
    let fd = types::Fd(file.as_raw_fd());
    let res = Resources {
        file: Some(file.clone() as Arc<dyn AsRawFd + Send + Sync>),
        ..Resources::default()
    };
    let (n, _) = start(res, |_| {
        opcode::Fallocate::new(fd, len)
            .offset(offset)
            .mode(mode)
            .build()
    })?
    .await;
    check(n).map(|_| ())
}

/// Sends `buf` on a connected socket; returns the bytes sent and the buffer.
pub async fn send<S: AsRawFd + Send + Sync + 'static>(
    socket: &Arc<S>,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    buffer_op(socket, buf, |fd, ptr, len| {
        opcode::Send::new(fd, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
    })
    .await
}

/// Receives into `buf` (its length is the most read) from a socket; returns
/// the bytes received (0 = the peer closed) and the buffer.
pub async fn recv<S: AsRawFd + Send + Sync + 'static>(
    socket: &Arc<S>,
    buf: Vec<u8>,
) -> (io::Result<usize>, Vec<u8>) {
    buffer_op(socket, buf, |fd, ptr, len| {
        opcode::Recv::new(fd, ptr, len).build()
    })
    .await
}

/// Sleeps on the core's ring (an `IORING_OP_TIMEOUT`, no timer thread).
pub async fn sleep(d: Duration) -> io::Result<()> {
    timeout(d, false).await
}

/// Waits like [`sleep`], for housekeeping that has nothing to finish when
/// the runtime stops (a periodic flush, a watchdog): when the core starts
/// stopping, an idle wait in flight ends at once with `ECANCELED`, and one
/// begun after that fails at once, so such a task never holds a shutdown
/// up for its period. [`sleep`] runs its full time (a task may still be
/// finishing work during shutdown).
pub async fn idle(d: Duration) -> io::Result<()> {
    if reactor::with(|r| r.stopping()).ok_or_else(not_on_core)? {
        return Err(io::Error::from_raw_os_error(libc::ECANCELED));
    }
    timeout(d, true).await
}

async fn timeout(d: Duration, idle: bool) -> io::Result<()> {
    let res = Resources {
        timespec: Some(Box::new(
            types::Timespec::new()
                .sec(d.as_secs())
                .nsec(d.subsec_nanos()),
        )),
        idle,
        ..Resources::default()
    };
    let (n, _) = start(res, |r| {
        let ts: *const types::Timespec = r
            .timespec
            .as_deref()
            .map_or(std::ptr::null(), |t| t as *const _);
        opcode::Timeout::new(ts).build()
    })?
    .await;
    match n {
        n if n == -libc::ETIME => Ok(()),
        n => check(n).map(|_| ()),
    }
}

/// The core the calling task runs on (`None` off a core thread).
pub fn current_core() -> Option<usize> {
    super::core_thread::current()
}
