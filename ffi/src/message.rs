//! Deliveries.

use std::ffi::c_char;
use std::time::Duration;

use dashi::{Delivery, Value};

use crate::boundary::{check_out, ffi_guard, ffi_guard_value, try_ref, try_str};
use crate::result::dashi_result;

/// One delivery. Unacked until `dashi_ack` or `dashi_reject`; a message
/// freed without either stays unacked until its channel is freed (then it
/// goes back to its queue, redelivered).
///
/// Thread rules: a message may be read, settled and freed from any thread,
/// but not from two at once while one frees it.
#[derive(Debug)]
pub struct dashi_message {
    d: Delivery,
}

impl dashi_message {
    pub(crate) fn boxed(d: Delivery) -> *mut dashi_message {
        Box::into_raw(Box::new(dashi_message { d }))
    }
}

/// Points `*ptr` and `*len` at the body (no copy), valid until the message
/// is freed. Does nothing when any argument is NULL.
///
/// # Safety
/// `m` is NULL or a live message; `ptr` and `len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_body(
    m: *const dashi_message,
    ptr: *mut *const u8,
    len: *mut usize,
) {
    ffi_guard_value((), || {
        if ptr.is_null() || len.is_null() {
            return;
        }
        // SAFETY: the caller's contract.
        if let Ok(m) = unsafe { try_ref(m) } {
            let body = m.d.body();
            // SAFETY: both checked non-NULL and writable by contract.
            unsafe {
                ptr.write(body.as_ptr());
                len.write(body.len());
            }
        }
    })
}

/// The message's priority (0 when it has none, or `m` is NULL).
///
/// # Safety
/// `m` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_priority(m: *const dashi_message) -> u8 {
    ffi_guard_value(0, || {
        // SAFETY: the caller's contract.
        unsafe { try_ref(m) }.map_or(0, |m| m.d.priority())
    })
}

/// True when the message was delivered before and came back to its queue.
///
/// # Safety
/// `m` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_redelivered(m: *const dashi_message) -> bool {
    ffi_guard_value(false, || {
        // SAFETY: the caller's contract.
        unsafe { try_ref(m) }.is_ok_and(|m| m.d.redelivered())
    })
}

/// The delivery tag (per channel, from 1; 0 when `m` is NULL).
///
/// # Safety
/// `m` is NULL or a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_delivery_tag(m: *const dashi_message) -> u64 {
    ffi_guard_value(0, || {
        // SAFETY: the caller's contract.
        unsafe { try_ref(m) }.map_or(0, |m| m.d.delivery_tag())
    })
}

/// Acks the message (it is done). Does not free it.
///
/// # Safety
/// `m` is a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_ack(m: *const dashi_message) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { try_ref(m) }?;
        m.d.ack().map_err(|e| dashi_result::from(&e))
    })
}

/// Rejects the message: back to its queue (`requeue`, redelivered, at its
/// original position) or dead-lettered / dropped. Does not free it.
///
/// # Safety
/// `m` is a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_reject(m: *const dashi_message, requeue: bool) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { try_ref(m) }?;
        m.d.reject(requeue).map_err(|e| dashi_result::from(&e))
    })
}

/// Frees a message. NULL is a no-op.
///
/// # Safety
/// `m` is NULL or a message from dashi not freed before.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_free(m: *mut dashi_message) {
    ffi_guard(|| {
        if !m.is_null() {
            // SAFETY: owned by the caller, handed back once.
            drop(unsafe { Box::from_raw(m) });
        }
        Ok(())
    });
}

/// Points `*ptr` and `*len` at bytes that live as long as the message.
///
/// # Safety
/// `ptr` and `len` are writable.
unsafe fn view(bytes: &[u8], ptr: *mut *const u8, len: *mut usize) {
    // SAFETY: the caller's contract.
    unsafe {
        ptr.write(bytes.as_ptr());
        len.write(bytes.len());
    }
}

/// Points `*ptr` and `*len` (not NUL-terminated, valid until the message is
/// freed) at a property: `name` is "content_type", "content_encoding",
/// "correlation_id", "reply_to", "message_id", "exchange", "routing_key" or
/// "queue". `DASHI_NOT_SET` when the message has none;
/// `DASHI_INVALID_ARGUMENT` for another name.
///
/// # Safety
/// `m` is a live message; `name` is NUL-terminated; `ptr` and `len` are
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_property(
    m: *const dashi_message,
    name: *const c_char,
    ptr: *mut *const u8,
    len: *mut usize,
) -> dashi_result {
    ffi_guard(|| {
        check_out(ptr)?;
        check_out(len)?;
        // SAFETY: the caller's contract.
        let (m, name) = unsafe { (try_ref(m)?, try_str(name)?) };
        let p = m.d.properties();
        let value: Option<&str> = match name {
            "content_type" => p.content_type.as_deref(),
            "content_encoding" => p.content_encoding.as_deref(),
            "correlation_id" => p.correlation_id.as_deref(),
            "reply_to" => p.reply_to.as_deref(),
            "message_id" => p.message_id.as_deref(),
            "exchange" => Some(m.d.exchange()),
            "routing_key" => Some(m.d.routing_key()),
            "queue" => Some(m.d.queue()),
            _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        let value = value.ok_or(dashi_result::DASHI_NOT_SET)?;
        // SAFETY: checked writable above.
        unsafe { view(value.as_bytes(), ptr, len) };
        Ok(())
    })
}

/// Points `*ptr` and `*len` (not NUL-terminated, valid until the message is
/// freed) at the value of header `key` when it is a string or bytes.
/// `DASHI_NOT_SET` when there is no such header; `DASHI_INVALID_ARGUMENT`
/// when its value is of another type (a number, a list, ...).
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated; `ptr` and `len` are
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_header(
    m: *const dashi_message,
    key: *const c_char,
    ptr: *mut *const u8,
    len: *mut usize,
) -> dashi_result {
    ffi_guard(|| {
        check_out(ptr)?;
        check_out(len)?;
        // SAFETY: the caller's contract.
        let (m, key) = unsafe { (try_ref(m)?, try_str(key)?) };
        let bytes: &[u8] = match m.d.properties().headers.get(key) {
            None => return Err(dashi_result::DASHI_NOT_SET),
            Some(Value::Str(s)) => s.as_bytes(),
            Some(Value::Bytes(b)) => b,
            Some(_) => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        // SAFETY: checked writable above.
        unsafe { view(bytes, ptr, len) };
        Ok(())
    })
}

/// Extends the delivery's lease: it stays with this consumer `ms`
/// milliseconds from now before going back to its queue.
///
/// # Safety
/// `m` is a live message.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_extend_lease(
    m: *const dashi_message,
    ms: u32,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { try_ref(m) }?;
        m.d.extend_lease(Duration::from_millis(u64::from(ms)))
            .map_err(|e| dashi_result::from(&e))
    })
}
