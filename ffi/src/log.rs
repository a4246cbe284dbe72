//! The log callback: dashi's `tracing` events handed to a C function.
//!
//! One subscriber is installed process-wide on the first
//! `dashi_set_log_callback` (unless the process already has one, e.g. a Rust
//! host application's); the callback itself can be replaced or removed at
//! any time.

use std::ffi::{c_char, c_void};
use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Once, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

use crate::boundary::ffi_guard;
use crate::result::dashi_result;

/// Severity of a log line (lower = more severe).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum dashi_log_level {
    /// Something failed.
    DASHI_LOG_ERROR = 1,
    /// Something went wrong and was handled (a message may come again).
    DASHI_LOG_WARN = 2,
    /// What happened, rarely.
    DASHI_LOG_INFO = 3,
    /// Connections, channels and restores as they happen.
    DASHI_LOG_DEBUG = 4,
    /// Everything.
    DASHI_LOG_TRACE = 5,
}

impl dashi_log_level {
    /// The level with number `code` (in C any `uint32_t` can be passed).
    fn from_code(code: u32) -> Option<Self> {
        use dashi_log_level::*;
        [
            DASHI_LOG_ERROR,
            DASHI_LOG_WARN,
            DASHI_LOG_INFO,
            DASHI_LOG_DEBUG,
            DASHI_LOG_TRACE,
        ]
        .into_iter()
        .find(|l| *l as u32 == code)
    }
}

/// Receives one log line: `message` is `len` bytes (not NUL-terminated),
/// valid only during the call. Called on whichever dashi thread logs,
/// possibly several at once: it must be thread-safe and must not unwind.
pub type dashi_log_callback = Option<
    unsafe extern "C" fn(
        userdata: *mut c_void,
        level: dashi_log_level,
        message: *const c_char,
        len: usize,
    ),
>;

struct Sink {
    cb: unsafe extern "C" fn(*mut c_void, dashi_log_level, *const c_char, usize),
    userdata: *mut c_void,
    max: dashi_log_level,
}

// SAFETY: `dashi_set_log_callback` makes the caller promise that the
// callback and its userdata may be used from any thread.
unsafe impl Send for Sink {}
// SAFETY: as above; dashi only passes `userdata` back.
unsafe impl Sync for Sink {}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static INSTALL: Once = Once::new();
/// Our subscriber is the process's (not a host's).
static OURS: AtomicBool = AtomicBool::new(false);

fn level_of(l: &Level) -> dashi_log_level {
    match *l {
        Level::ERROR => dashi_log_level::DASHI_LOG_ERROR,
        Level::WARN => dashi_log_level::DASHI_LOG_WARN,
        Level::INFO => dashi_log_level::DASHI_LOG_INFO,
        Level::DEBUG => dashi_log_level::DASHI_LOG_DEBUG,
        Level::TRACE => dashi_log_level::DASHI_LOG_TRACE,
    }
}

/// Formats an event as `message key=value ...`.
#[derive(Default)]
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, "{}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, "{}={value}", field.name());
        }
    }
}

struct ToCallback;

impl<S: Subscriber> Layer<S> for ToCallback {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let Ok(sink) = SINK.read() else { return };
        let Some(sink) = sink.as_ref() else { return };
        let level = level_of(event.metadata().level());
        if level > sink.max {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        // SAFETY: the callback and userdata were registered together and
        // may be called from any thread (the caller's promise); the line
        // outlives the call.
        unsafe { (sink.cb)(sink.userdata, level, line.0.as_ptr().cast(), line.0.len()) };
    }
}

/// Sends dashi's log lines up to `max_level` to `cb` (NULL: stop logging;
/// a `max_level` that is not a `dashi_log_level` is
/// `DASHI_INVALID_ARGUMENT`).
/// Process-wide; replaces an earlier callback. If the process already set
/// another `tracing` subscriber (a Rust host), lines go there instead and
/// this returns `DASHI_INVALID_ARGUMENT`.
///
/// # Safety
/// `cb` (if not NULL) may be called with `userdata` from any thread, at
/// once from several, until it is replaced.
#[no_mangle]
pub unsafe extern "C" fn dashi_set_log_callback(
    cb: dashi_log_callback,
    userdata: *mut c_void,
    max_level: MaybeUninit<dashi_log_level>,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: `dashi_log_level` is `repr(u32)`, so the argument is four
        // initialized bytes of a `u32` whatever C passed.
        let code = unsafe { max_level.as_ptr().cast::<u32>().read() };
        let max_level =
            dashi_log_level::from_code(code).ok_or(dashi_result::DASHI_INVALID_ARGUMENT)?;
        INSTALL.call_once(|| {
            let subscriber = tracing_subscriber::registry().with(ToCallback);
            let ours = tracing::subscriber::set_global_default(subscriber).is_ok();
            OURS.store(ours, Ordering::SeqCst);
        });
        let mut sink = SINK.write().map_err(|_| dashi_result::DASHI_PANIC)?;
        *sink = cb.map(|cb| Sink {
            cb,
            userdata,
            max: max_level,
        });
        if OURS.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(dashi_result::DASHI_INVALID_ARGUMENT)
        }
    })
}
