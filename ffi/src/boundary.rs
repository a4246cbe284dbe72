//! The edge between C and Rust: the panic boundary every exported function
//! runs in, and checked conversions of what C hands over (pointers that may
//! be NULL, strings that may not be UTF-8).

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::result::dashi_result;

/// Runs `f` so that a panic becomes `DASHI_PANIC` (never an unwind into C).
pub(crate) fn ffi_guard(f: impl FnOnce() -> Result<(), dashi_result>) -> dashi_result {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => dashi_result::DASHI_OK,
        Ok(Err(r)) => r,
        Err(_) => dashi_result::DASHI_PANIC,
    }
}

/// Runs `f`; a panic yields `default`.
pub(crate) fn ffi_guard_value<T>(default: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(default)
}

/// The object behind `p`, or `DASHI_NULL_PARAMETER`.
///
/// # Safety
/// `p` is NULL or points to a live `T` that nobody frees or mutates while
/// the returned borrow is used.
pub(crate) unsafe fn try_ref<'a, T>(p: *const T) -> Result<&'a T, dashi_result> {
    // SAFETY: the caller's contract; NULL is checked here.
    unsafe { p.as_ref() }.ok_or(dashi_result::DASHI_NULL_PARAMETER)
}

/// The NUL-terminated UTF-8 string at `p`: `DASHI_NULL_PARAMETER` for NULL,
/// `DASHI_INVALID_ARGUMENT` for bytes that are not UTF-8.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid and
/// unchanged while the returned borrow is used.
pub(crate) unsafe fn try_str<'a>(p: *const c_char) -> Result<&'a str, dashi_result> {
    if p.is_null() {
        return Err(dashi_result::DASHI_NULL_PARAMETER);
    }
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map_err(|_| dashi_result::DASHI_INVALID_ARGUMENT)
}

/// Checks an out-parameter before any work is done.
pub(crate) fn check_out<T>(out: *mut T) -> Result<(), dashi_result> {
    if out.is_null() {
        Err(dashi_result::DASHI_NULL_PARAMETER)
    } else {
        Ok(())
    }
}

/// Writes `v` to a checked out-parameter.
///
/// # Safety
/// `out` is non-NULL (see [`check_out`]), aligned and writable.
pub(crate) unsafe fn write_out<T>(out: *mut T, v: T) {
    // SAFETY: the caller's contract.
    unsafe { out.write(v) };
}

/// Writes `v` to an optional out-parameter: nothing when it is NULL.
///
/// # Safety
/// `out` is NULL, or aligned and writable.
pub(crate) unsafe fn write_opt<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: non-NULL, and writable by the caller's contract.
        unsafe { out.write(v) };
    }
}

/// Writes `text` NUL-terminated into `buf` (at most `len` bytes, cut to fit).
///
/// # Safety
/// `buf` is writable for `len` bytes, or `len` is 0.
pub(crate) unsafe fn write_text(text: &str, buf: *mut c_char, len: usize) {
    if buf.is_null() || len == 0 {
        return;
    }
    let n = text.len().min(len - 1);
    // SAFETY: `buf` has room for `len >= n + 1` bytes; `text` does not
    // overlap a caller's buffer (it is static or owned here).
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
        buf.add(n).write(0);
    }
}
