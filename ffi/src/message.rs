//! Deliveries.

use dashi::Delivery;

use crate::boundary::{ffi_guard, ffi_guard_value, try_ref};
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
