//! Deliveries.

use std::ffi::c_char;
use std::time::Duration;

use dashi::{Delivery, Properties, Value};

use crate::boundary::{check_out, ffi_guard, ffi_guard_value, try_ref, try_str, write_out};
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
pub(crate) unsafe fn view(bytes: &[u8], ptr: *mut *const u8, len: *mut usize) {
    // SAFETY: the caller's contract.
    unsafe {
        ptr.write(bytes.as_ptr());
        len.write(bytes.len());
    }
}

/// A named property of a message or of a publish handed back: the
/// message's own ("content_type", "content_encoding", "correlation_id",
/// "reply_to", "message_id") or where it went ("exchange", "routing_key",
/// and for a delivery "queue"). `Ok(None)` when unset;
/// `DASHI_INVALID_ARGUMENT` for another name.
pub(crate) fn named_property<'a>(
    p: &'a Properties,
    name: &str,
    exchange: &'a str,
    routing_key: &'a str,
    queue: Option<&'a str>,
) -> Result<Option<&'a str>, dashi_result> {
    Ok(match name {
        "content_type" => p.content_type.as_deref(),
        "content_encoding" => p.content_encoding.as_deref(),
        "correlation_id" => p.correlation_id.as_deref(),
        "reply_to" => p.reply_to.as_deref(),
        "message_id" => p.message_id.as_deref(),
        "exchange" => Some(exchange),
        "routing_key" => Some(routing_key),
        "queue" => Some(queue.ok_or(dashi_result::DASHI_INVALID_ARGUMENT)?),
        _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
    })
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
        let d = &m.d;
        let value = named_property(
            d.properties(),
            name,
            d.exchange(),
            d.routing_key(),
            Some(d.queue()),
        )?
        .ok_or(dashi_result::DASHI_NOT_SET)?;
        // SAFETY: checked writable above.
        unsafe { view(value.as_bytes(), ptr, len) };
        Ok(())
    })
}

/// Points `*ptr` and `*len` (not NUL-terminated, valid until the message is
/// freed) at the value of header `key` when it is a string or bytes.
/// `DASHI_NOT_SET` when there is no such header; `DASHI_INVALID_ARGUMENT`
/// when its value is of another type (`dashi_message_header_type` says
/// which; numbers and booleans have their own getters).
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
        let bytes: &[u8] = match unsafe { header(m, key) }? {
            Value::Str(s) => s.as_bytes(),
            Value::Bytes(b) => b,
            _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        // SAFETY: checked writable above.
        unsafe { view(bytes, ptr, len) };
        Ok(())
    })
}

/// The type of a header's value: what `dashi_message_header_type` reads,
/// and what a `dashi_header` on publish carries (0, a string, is the
/// default, so `{ .key = "k", .value = "v" }` is a string header).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dashi_value_type {
    /// UTF-8 text: `dashi_message_header`.
    DASHI_VALUE_STRING = 0,
    /// No value (JSON null).
    DASHI_VALUE_NULL = 1,
    /// A boolean: `dashi_message_header_bool`.
    DASHI_VALUE_BOOL = 2,
    /// A signed 64-bit integer: `dashi_message_header_i64`.
    DASHI_VALUE_INT = 3,
    /// A double: `dashi_message_header_f64`.
    DASHI_VALUE_FLOAT = 4,
    /// Raw bytes: `dashi_message_header` (read only).
    DASHI_VALUE_BYTES = 5,
    /// A list (not readable or writable through C yet).
    DASHI_VALUE_LIST = 6,
    /// A nested table (not readable or writable through C yet).
    DASHI_VALUE_TABLE = 7,
    /// A type this version of the C ABI does not know.
    DASHI_VALUE_OTHER = 255,
}

/// Header `key` of a live message: `DASHI_NOT_SET` when absent.
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated.
unsafe fn header<'a>(
    m: *const dashi_message,
    key: *const c_char,
) -> Result<&'a Value, dashi_result> {
    // SAFETY: the caller's contract.
    let (m, key) = unsafe { (try_ref(m)?, try_str(key)?) };
    m.d.properties()
        .headers
        .get(key)
        .ok_or(dashi_result::DASHI_NOT_SET)
}

/// Writes the type of header `key`'s value to `*out`. `DASHI_NOT_SET` when
/// the message has no such header.
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_header_type(
    m: *const dashi_message,
    key: *const c_char,
    out: *mut dashi_value_type,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        use dashi_value_type::*;
        // SAFETY: the caller's contract.
        let t = match unsafe { header(m, key) }? {
            Value::Null => DASHI_VALUE_NULL,
            Value::Bool(_) => DASHI_VALUE_BOOL,
            Value::Int(_) => DASHI_VALUE_INT,
            Value::Float(_) => DASHI_VALUE_FLOAT,
            Value::Str(_) => DASHI_VALUE_STRING,
            Value::Bytes(_) => DASHI_VALUE_BYTES,
            Value::List(_) => DASHI_VALUE_LIST,
            Value::Table(_) => DASHI_VALUE_TABLE,
            _ => DASHI_VALUE_OTHER,
        };
        // SAFETY: checked above.
        unsafe { write_out(out, t) };
        Ok(())
    })
}

/// Writes the integer value of header `key` to `*out`. `DASHI_NOT_SET`
/// when there is no such header; `DASHI_INVALID_ARGUMENT` when its value is
/// not an integer.
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_header_i64(
    m: *const dashi_message,
    key: *const c_char,
    out: *mut i64,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let Value::Int(v) = unsafe { header(m, key) }? else {
            return Err(dashi_result::DASHI_INVALID_ARGUMENT);
        };
        // SAFETY: checked above.
        unsafe { write_out(out, *v) };
        Ok(())
    })
}

/// Writes the number in header `key` to `*out`: a float, or an integer
/// converted to the nearest double. `DASHI_NOT_SET` when there is no such
/// header; `DASHI_INVALID_ARGUMENT` when its value is not a number.
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_header_f64(
    m: *const dashi_message,
    key: *const c_char,
    out: *mut f64,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let v = match unsafe { header(m, key) }? {
            Value::Float(f) => *f,
            #[allow(clippy::cast_precision_loss)] // documented: the nearest double
            Value::Int(i) => *i as f64,
            _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        // SAFETY: checked above.
        unsafe { write_out(out, v) };
        Ok(())
    })
}

/// Writes the boolean value of header `key` to `*out`. `DASHI_NOT_SET`
/// when there is no such header; `DASHI_INVALID_ARGUMENT` when its value is
/// not a boolean.
///
/// # Safety
/// `m` is a live message; `key` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_message_header_bool(
    m: *const dashi_message,
    key: *const c_char,
    out: *mut bool,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let Value::Bool(v) = unsafe { header(m, key) }? else {
            return Err(dashi_result::DASHI_INVALID_ARGUMENT);
        };
        // SAFETY: checked above.
        unsafe { write_out(out, *v) };
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
