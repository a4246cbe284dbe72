//! Publishes handed back: the messages of pipelined publishes whose confirm
//! failed, each with where it was going, so a C program can look at it and
//! publish it again.

use std::ffi::{c_char, c_void};
use std::time::Duration;

use dashi::{ConfirmsError, Message, PublishError};

use crate::boundary::{check_out, ffi_guard, ffi_guard_value, try_ref, try_str, write_opt};
use crate::channel::{dashi_channel, mandatory};
use crate::message::{named_property, view};
use crate::result::dashi_result;

/// A pipelined publish whose confirm failed, handed back with its message
/// (body, properties, headers), its exchange and routing key, and why.
///
/// Thread rules: it belongs to no channel; read, republish and free it from
/// any thread, one at a time.
#[derive(Debug)]
pub struct dashi_returned {
    message: Message,
    exchange: String,
    routing_key: String,
    result: dashi_result,
}

impl dashi_returned {
    fn from_error(e: PublishError) -> Self {
        let result = dashi_result::from(&e);
        let (exchange, routing_key) = match &e {
            PublishError::Unconfirmed {
                exchange,
                routing_key,
                ..
            }
            | PublishError::Refused {
                exchange,
                routing_key,
                ..
            } => (exchange.to_string(), routing_key.to_string()),
            _ => (String::new(), String::new()),
        };
        dashi_returned {
            message: e.into_message(),
            exchange,
            routing_key,
            result,
        }
    }
}

/// What `dashi_wait_for_confirms` and `dashi_wait_for_confirms_returned`
/// share: waits, writes how many failed to `failed_out` (if not NULL) and
/// hands each failure (with its message) to `hand_back`.
///
/// # Safety
/// `failed_out` is NULL or writable.
pub(crate) unsafe fn wait_for_confirms(
    ch: &dashi_channel,
    timeout_ms: u32,
    failed_out: *mut usize,
    mut hand_back: impl FnMut(PublishError),
) -> Result<(), dashi_result> {
    match ch
        .channel()
        .wait_for_confirms(Duration::from_millis(u64::from(timeout_ms)))
    {
        Ok(()) => Ok(()),
        Err(ConfirmsError::Timeout { .. }) => Err(dashi_result::DASHI_TIMEOUT),
        Err(ConfirmsError::Failed {
            failed,
            reported_to_confirms,
        }) => {
            // SAFETY: the caller's contract.
            unsafe { write_opt(failed_out, failed.len() + reported_to_confirms) };
            failed.into_iter().for_each(&mut hand_back);
            Err(dashi_result::DASHI_UNCONFIRMED)
        }
        Err(_) => Err(dashi_result::DASHI_CHANNEL_CLOSED),
    }
}

/// Called by `dashi_wait_for_confirms_returned` for each publish handed
/// back, on the calling thread, with the `userdata` given to it. The callee
/// owns `r` (free it with `dashi_returned_free`). It must not unwind.
pub type dashi_returned_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, r: *mut dashi_returned)>;

/// As `dashi_wait_for_confirms`, and hands each publish that was not
/// confirmed to `cb` (before returning `DASHI_UNCONFIRMED`), so that
/// nothing published is lost to the caller: read it with the
/// `dashi_returned_*` calls, publish it again with `dashi_republish` (which
/// may deliver it twice when `dashi_returned_result` says
/// `DASHI_UNCONFIRMED`: it may have been stored), or free it.
///
/// # Safety
/// `ch` is a live channel; `cb` may be called with `userdata` on this
/// thread during the call; `failed_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_wait_for_confirms_returned(
    ch: *const dashi_channel,
    timeout_ms: u32,
    cb: dashi_returned_callback,
    userdata: *mut c_void,
    failed_out: *mut usize,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let ch = unsafe { try_ref(ch) }?;
        let cb = cb.ok_or(dashi_result::DASHI_NULL_PARAMETER)?;
        // SAFETY: `cb` may be called with `userdata` here by the caller's
        // contract; `failed_out` is NULL or writable.
        unsafe {
            wait_for_confirms(ch, timeout_ms, failed_out, |e| {
                let r = Box::into_raw(Box::new(dashi_returned::from_error(e)));
                // The callee owns `r`.
                cb(userdata, r);
            })
        }
    })
}

/// Why the publish was handed back: `DASHI_UNCONFIRMED` when it may or may
/// not be stored (publishing it again may store it twice), or the store's
/// code (`DASHI_NO_SPACE` for a full Redis, `DASHI_STORE_FAILED` for a
/// write it may not do) when the store refused it: certainly not stored.
/// `DASHI_NULL_PARAMETER` when `r` is NULL.
///
/// # Safety
/// `r` is NULL or a live returned publish.
#[no_mangle]
pub unsafe extern "C" fn dashi_returned_result(r: *const dashi_returned) -> dashi_result {
    ffi_guard_value(dashi_result::DASHI_PANIC, || {
        // SAFETY: the caller's contract.
        unsafe { try_ref(r) }.map_or(dashi_result::DASHI_NULL_PARAMETER, |r| r.result)
    })
}

/// Points `*ptr` and `*len` at the body (no copy), valid until `r` is
/// freed. Does nothing when any argument is NULL.
///
/// # Safety
/// `r` is NULL or a live returned publish; `ptr` and `len` are NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_returned_body(
    r: *const dashi_returned,
    ptr: *mut *const u8,
    len: *mut usize,
) {
    ffi_guard_value((), || {
        if ptr.is_null() || len.is_null() {
            return;
        }
        // SAFETY: the caller's contract.
        if let Ok(r) = unsafe { try_ref(r) } {
            // SAFETY: both checked non-NULL and writable by contract.
            unsafe { view(&r.message.body, ptr, len) };
        }
    })
}

/// Points `*ptr` and `*len` (not NUL-terminated, valid until `r` is freed)
/// at a property: `name` is "content_type", "content_encoding",
/// "correlation_id", "reply_to", "message_id", "exchange" or "routing_key".
/// `DASHI_NOT_SET` when the message has none; `DASHI_INVALID_ARGUMENT` for
/// another name.
///
/// # Safety
/// `r` is a live returned publish; `name` is NUL-terminated; `ptr` and
/// `len` are writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_returned_property(
    r: *const dashi_returned,
    name: *const c_char,
    ptr: *mut *const u8,
    len: *mut usize,
) -> dashi_result {
    ffi_guard(|| {
        check_out(ptr)?;
        check_out(len)?;
        // SAFETY: the caller's contract.
        let (r, name) = unsafe { (try_ref(r)?, try_str(name)?) };
        let value = named_property(
            &r.message.properties,
            name,
            &r.exchange,
            &r.routing_key,
            None,
        )?
        .ok_or(dashi_result::DASHI_NOT_SET)?;
        // SAFETY: checked writable above.
        unsafe { view(value.as_bytes(), ptr, len) };
        Ok(())
    })
}

/// Publishes the handed-back message again on `ch`, with its properties and
/// headers, to its exchange and routing key, and returns once it is stored
/// (as `dashi_publish_with`, `flags` likewise). It may be delivered twice:
/// the first publish may have been stored. Does not free `r`.
///
/// # Safety
/// `ch` is a live channel; `r` is a live returned publish.
#[no_mangle]
pub unsafe extern "C" fn dashi_republish(
    ch: *const dashi_channel,
    r: *const dashi_returned,
    flags: u32,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, r) = unsafe { (try_ref(ch)?, try_ref(r)?) };
        let mandatory = mandatory(flags)?;
        ch.channel()
            .basic_publish(r.message.clone(), &r.exchange, &r.routing_key, mandatory)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Frees a returned publish. NULL is a no-op.
///
/// # Safety
/// `r` is NULL or a returned publish not freed before.
#[no_mangle]
pub unsafe extern "C" fn dashi_returned_free(r: *mut dashi_returned) {
    ffi_guard(|| {
        if !r.is_null() {
            // SAFETY: owned by the caller, handed back once.
            drop(unsafe { Box::from_raw(r) });
        }
        Ok(())
    });
}
