//! Connections.

use std::ffi::c_char;
use std::time::Duration;

use dashi::{Connection, Error};

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
        let handle = Box::into_raw(Box::new(dashi_connection { conn }));
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
        match c
            .conn
            .drain_events(Some(Duration::from_millis(u64::from(timeout_ms))))
        {
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
}

/// Writes the figures of `queue` to `*out` (on local://, of every process
/// sharing the store). `DASHI_UNKNOWN_QUEUE` when there is no such queue.
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
            .ok_or(dashi_result::DASHI_UNKNOWN_QUEUE)?;
        let figures = dashi_queue_figures {
            messages: s.messages,
            bytes: s.bytes,
            unacked: s.unacked,
            consumers: s.consumers,
        };
        // SAFETY: checked above.
        unsafe { write_out(out, figures) };
        Ok(())
    })
}
