//! The C ABI of dashi (`include/dashi.h`, generated from this crate by a
//! pinned cbindgen). Conventions, after rustls-ffi:
//!
//! - Every function returns a [`dashi_result`] (or a plain value for
//!   accessors that cannot fail); [`dashi_result_message`] writes its text.
//! - Every exported body runs inside a panic boundary: a panic is
//!   `DASHI_PANIC`, never an abort across the C boundary.
//! - Every pointer argument is checked for NULL (`DASHI_NULL_PARAMETER`);
//!   strings must be NUL-terminated UTF-8 (`DASHI_INVALID_ARGUMENT`).
//! - Out-parameters are written only on success.
//! - Handles are boxed and owned by the caller until their `_free` (a NULL
//!   `_free` is a no-op); each type has its own `_free`, so a handle cannot
//!   be freed as another type.
//! - Thread rules are stated on each handle.
#![allow(non_camel_case_types)]

mod boundary;
mod channel;
mod connection;
mod log;
mod message;
mod result;
mod returned;

pub use channel::*;
pub use connection::*;
pub use log::*;
pub use message::*;
pub use result::*;
pub use returned::*;

use std::ffi::c_char;

/// The library's version, e.g. "0.1.0": a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn dashi_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
