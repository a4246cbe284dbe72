//! Connections.

use std::ffi::{c_char, c_int};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};
use std::time::Duration;

use dashi::{Armed, Connection, Error};

use crate::boundary::{check_out, ffi_guard, try_ref, try_str, write_out};
use crate::result::dashi_result;

/// A connection to one transport (`memory://`, `local:///dir`, ...).
///
/// Thread rules: a connection may be used from several threads at once
/// (opening channels, `dashi_drain_events`); it must not be freed while
/// another thread uses it or any of its channels.
#[derive(Debug)]
pub struct dashi_connection {
    pub(crate) conn: Connection,
    /// The event descriptor, once asked for.
    events: Mutex<Option<Events>>,
}

/// An eventfd signalled when `dashi_drain_events` may have work, and the
/// registrations that signal it.
#[derive(Debug)]
struct Events {
    fd: Arc<EventFd>,
    armed: Option<Armed>,
}

#[derive(Debug)]
struct EventFd(OwnedFd);

impl EventFd {
    fn signal(&self) {
        // A full counter (never in practice) is still readable: ignore it.
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    fn clear(&self) {
        let mut b = [0u8; 8];
        // Non-blocking: EAGAIN when nothing was signalled.
        let _ = rustix::io::read(&self.0, &mut b);
    }
}

impl Wake for EventFd {
    fn wake(self: Arc<Self>) {
        self.signal();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.signal();
    }
}

impl Events {
    /// Takes the old registrations back and registers anew.
    fn rearm(&mut self, conn: &Connection) {
        self.armed = None;
        let waker = Waker::from(self.fd.clone());
        self.armed = Some(conn.arm(&waker));
    }
}

/// Opens a connection from a URL (several separated by `;` are tried in
/// order). On success `*out` owns a connection the caller frees with
/// `dashi_connection_free`; on failure `*out` is not written.
///
/// # Safety
/// `url` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_connection_open(
    url: *const c_char,
    out: *mut *mut dashi_connection,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let url = unsafe { try_str(url) }?;
        let conn = dashi::connect(url).map_err(|e| dashi_result::from(&e))?;
        let handle = Box::into_raw(Box::new(dashi_connection {
            conn,
            events: Mutex::new(None),
        }));
        // SAFETY: checked above.
        unsafe { write_out(out, handle) };
        Ok(())
    })
}

/// Closes and frees a connection: its channels close (restoring their
/// unacked messages). NULL is a no-op. Channels opened on it must still be
/// freed with `dashi_channel_free`.
///
/// # Safety
/// `c` is NULL or a connection from `dashi_connection_open` not freed before.
#[no_mangle]
pub unsafe extern "C" fn dashi_connection_free(c: *mut dashi_connection) {
    ffi_guard(|| {
        if !c.is_null() {
            // SAFETY: owned by the caller, handed back once.
            drop(unsafe { Box::from_raw(c) });
        }
        Ok(())
    });
}

/// Waits up to `timeout_ms` for deliveries to this connection's consumers
/// and runs their callbacks on the calling thread. `DASHI_OK` when at least
/// one was dispatched, `DASHI_TIMEOUT` when none came. Calling it from
/// inside one of its own callbacks is `DASHI_INVALID_ARGUMENT`.
///
/// # Safety
/// `c` is a live connection.
#[no_mangle]
pub unsafe extern "C" fn dashi_drain_events(
    c: *const dashi_connection,
    timeout_ms: u32,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { try_ref(c) }?;
        // With an event descriptor: clear it and register anew before
        // draining, so anything after the drain's last look signals it.
        let fd = {
            let mut events = c.events.lock().map_err(|_| dashi_result::DASHI_PANIC)?;
            events.as_mut().map(|e| {
                e.fd.clear();
                e.rearm(&c.conn);
                e.fd.clone()
            })
        };
        let r = c
            .conn
            .drain_events(Some(Duration::from_millis(u64::from(timeout_ms))));
        if let (Ok(_), Some(fd)) = (&r, &fd) {
            // More may be ready than one drain dispatches.
            fd.signal();
        }
        match r {
            Ok(_) => Ok(()),
            Err(Error::Timeout) => Err(dashi_result::DASHI_TIMEOUT),
            Err(e) => Err(dashi_result::from(&e)),
        }
    })
}

/// Figures of one queue (see `dashi_queue_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct dashi_queue_figures {
    /// Ready messages, all priorities.
    pub messages: u64,
    /// Their body bytes.
    pub bytes: u64,
    /// Delivered and not yet acked, rejected or restored.
    pub unacked: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Envelopes set aside as undeliverable (redis://: the length of
    /// `_dashi.garbage.<queue>`, never lost, never retried); 0 on the other
    /// transports.
    pub garbage: u64,
}

/// Writes the figures of `queue` to `*out` (on local://, of every process
/// sharing the store). `DASHI_UNKNOWN_QUEUE` when there is no such queue;
/// `DASHI_STORE_TRANSIENT` or `DASHI_STORE_FAILED` when the figures cannot be
/// read (a Redis server that refuses or does not answer, a store whose
/// metadata cannot be read, a local:// queue whose own files cannot be
/// opened), never `DASHI_UNKNOWN_QUEUE` or zeros for that.
///
/// # Safety
/// `c` is a live connection; `queue` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_stats(
    c: *const dashi_connection,
    queue: *const c_char,
    out: *mut dashi_queue_figures,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let (c, queue) = unsafe { (try_ref(c)?, try_str(queue)?) };
        let s = c
            .conn
            .stats()
            .queue(queue)
            .map_err(|e| dashi_result::from(&e))?;
        let figures = dashi_queue_figures {
            messages: s.messages,
            bytes: s.bytes,
            unacked: s.unacked,
            consumers: s.consumers,
            garbage: s.garbage,
        };
        // SAFETY: checked above.
        unsafe { write_out(out, figures) };
        Ok(())
    })
}

/// A file descriptor (an eventfd) that becomes readable when
/// `dashi_drain_events` may have work: a message for a consumer, room in a
/// consumer's window, a consumer added or cancelled, the connection closed.
/// For event loops (epoll, poll, libuv, asyncio): wait for it to be
/// readable, then call `dashi_drain_events` with a zero timeout (which
/// clears it); it is readable at first, so the first wait drains. A wake may
/// be spurious (`DASHI_TIMEOUT`); none is lost. The descriptor belongs to
/// the connection (closed by `dashi_connection_free`): do not close or read
/// it. The same descriptor is returned on every call.
///
/// # Safety
/// `c` is a live connection; `fd_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_connection_event_fd(
    c: *const dashi_connection,
    fd_out: *mut c_int,
) -> dashi_result {
    ffi_guard(|| {
        check_out(fd_out)?;
        // SAFETY: the caller's contract.
        let c = unsafe { try_ref(c) }?;
        let mut events = c.events.lock().map_err(|_| dashi_result::DASHI_PANIC)?;
        if events.is_none() {
            let fd = rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
            )
            .map_err(|_| dashi_result::DASHI_STORE_FAILED)?;
            let mut e = Events {
                fd: Arc::new(EventFd(fd)),
                armed: None,
            };
            e.rearm(&c.conn);
            e.fd.signal();
            *events = Some(e);
        }
        let fd = events.as_ref().map_or(-1, |e| e.fd.0.as_raw_fd());
        // SAFETY: checked above.
        unsafe { write_out(fd_out, fd) };
        Ok(())
    })
}
