//! Channels: topology, publish, get, consume.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dashi::{Channel, Consumer, ConsumerOptions, Exchange, ExchangeKind, Headers, Message, Queue};

use crate::boundary::{check_out, ffi_guard, try_ref, try_str, write_out};
use crate::connection::dashi_connection;
use crate::message::dashi_message;
use crate::result::dashi_result;

/// A channel on a connection, with its own consumers and unacked
/// deliveries.
///
/// Thread rules: use a channel from one thread at a time (it may move
/// between threads); its messages may be acked, rejected and freed from any
/// thread.
#[derive(Debug)]
pub struct dashi_channel {
    ch: Channel,
    consumers: Mutex<Vec<(u64, Consumer)>>,
    next_tag: AtomicU64,
}

/// Called for each delivery to a consumer, on the thread that runs
/// `dashi_drain_events`, with the `userdata` given to `dashi_consume`. The
/// callee owns `msg` (free it with `dashi_message_free`, after `dashi_ack`
/// or `dashi_reject` or not). It must not unwind (no C++ exception or
/// longjmp out of it).
pub type dashi_message_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, msg: *mut dashi_message)>;

/// Opens a channel. On success `*out` owns a channel the caller frees with
/// `dashi_channel_free`.
///
/// # Safety
/// `c` is a live connection; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_channel_open(
    c: *const dashi_connection,
    out: *mut *mut dashi_channel,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let c = unsafe { try_ref(c) }?;
        let ch = c.conn.channel().map_err(|e| dashi_result::from(&e))?;
        let handle = Box::into_raw(Box::new(dashi_channel {
            ch,
            consumers: Mutex::new(Vec::new()),
            next_tag: AtomicU64::new(1),
        }));
        // SAFETY: checked above.
        unsafe { write_out(out, handle) };
        Ok(())
    })
}

/// Closes and frees a channel: its consumers stop and its unacked messages
/// go back to their queues (redelivered). NULL is a no-op.
///
/// # Safety
/// `ch` is NULL or a channel from `dashi_channel_open` not freed before.
#[no_mangle]
pub unsafe extern "C" fn dashi_channel_free(ch: *mut dashi_channel) {
    ffi_guard(|| {
        if !ch.is_null() {
            // SAFETY: owned by the caller, handed back once.
            drop(unsafe { Box::from_raw(ch) });
        }
        Ok(())
    });
}

/// Declares an exchange of `type` "direct", "topic", "fanout" or "headers".
///
/// # Safety
/// `ch` is a live channel; `name` and `type` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn dashi_exchange_declare(
    ch: *const dashi_channel,
    name: *const c_char,
    r#type: *const c_char,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name, kind) = unsafe { (try_ref(ch)?, try_str(name)?, try_str(r#type)?) };
        let kind = match kind {
            "direct" => ExchangeKind::Direct,
            "topic" => ExchangeKind::Topic,
            "fanout" => ExchangeKind::Fanout,
            "headers" => ExchangeKind::Headers,
            _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        ch.ch
            .exchange_declare(&Exchange::new(name, kind))
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Declares a queue with priorities 0..=`max_priority` (0: one lane).
///
/// # Safety
/// `ch` is a live channel; `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_declare(
    ch: *const dashi_channel,
    name: *const c_char,
    max_priority: u8,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name) = unsafe { (try_ref(ch)?, try_str(name)?) };
        ch.ch
            .queue_declare(&Queue::new(name).with_max_priority(max_priority))
            .map(|_| ())
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Binds `queue` to `exchange` with `binding_key`.
///
/// # Safety
/// `ch` is a live channel; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_bind(
    ch: *const dashi_channel,
    queue: *const c_char,
    exchange: *const c_char,
    binding_key: *const c_char,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, queue, exchange, key) = unsafe {
            (
                try_ref(ch)?,
                try_str(queue)?,
                try_str(exchange)?,
                try_str(binding_key)?,
            )
        };
        ch.ch
            .queue_bind(queue, exchange, key, Headers::new())
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Publishes `len` bytes at `body` (copied; NULL is allowed when `len` is 0)
/// to `exchange` ("" = the default exchange, routing by queue name) with
/// `routing_key` and `priority`. Returns once the transport stored it at its
/// durability level.
///
/// # Safety
/// `ch` is a live channel; the strings are NUL-terminated; `body` is
/// readable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn dashi_publish(
    ch: *const dashi_channel,
    exchange: *const c_char,
    routing_key: *const c_char,
    body: *const u8,
    len: usize,
    priority: u8,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, exchange, routing_key) =
            unsafe { (try_ref(ch)?, try_str(exchange)?, try_str(routing_key)?) };
        let bytes = if len == 0 {
            Vec::new()
        } else if body.is_null() {
            return Err(dashi_result::DASHI_NULL_PARAMETER);
        } else {
            // SAFETY: readable for `len` bytes by the caller's contract.
            unsafe { std::slice::from_raw_parts(body, len) }.to_vec()
        };
        let message = Message::new(bytes).with_priority(priority);
        ch.ch
            .basic_publish(message, exchange, routing_key, false)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Takes one message from `queue`, waiting up to `timeout_ms` (0: do not
/// wait). On success `*out` owns the message (free it with
/// `dashi_message_free`); `DASHI_TIMEOUT` when none came.
///
/// # Safety
/// `ch` is a live channel; `queue` is NUL-terminated; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_get(
    ch: *const dashi_channel,
    queue: *const c_char,
    timeout_ms: u32,
    out: *mut *mut dashi_message,
) -> dashi_result {
    ffi_guard(|| {
        check_out(out)?;
        // SAFETY: the caller's contract.
        let (ch, queue) = unsafe { (try_ref(ch)?, try_str(queue)?) };
        let d = ch
            .ch
            .get(queue, Duration::from_millis(u64::from(timeout_ms)))
            .map_err(|e| dashi_result::from(&e))?
            .ok_or(dashi_result::DASHI_TIMEOUT)?;
        // SAFETY: checked above.
        unsafe { write_out(out, dashi_message::boxed(d)) };
        Ok(())
    })
}

/// `userdata` of a consumer, carried to the thread that drains.
struct UserData(*mut c_void);

// SAFETY: the header makes the caller promise that `userdata` may be used
// on the thread that calls `dashi_drain_events`; dashi only passes it back.
unsafe impl Send for UserData {}

/// Starts a consumer of `queue` with a window of `prefetch` unacked messages
/// (0: the connection's default); `cb` runs for each delivery inside
/// `dashi_drain_events`. On success `*consumer_tag_out` is the consumer's
/// tag for `dashi_cancel`.
///
/// # Safety
/// `ch` is a live channel; `queue` is NUL-terminated; `cb` is a function
/// that may be called with `userdata` on the draining thread until the
/// consumer is cancelled or its channel freed; `consumer_tag_out` is
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_consume(
    ch: *const dashi_channel,
    queue: *const c_char,
    prefetch: u16,
    cb: dashi_message_callback,
    userdata: *mut c_void,
    consumer_tag_out: *mut u64,
) -> dashi_result {
    ffi_guard(|| {
        check_out(consumer_tag_out)?;
        // SAFETY: the caller's contract.
        let (ch, queue) = unsafe { (try_ref(ch)?, try_str(queue)?) };
        let cb = cb.ok_or(dashi_result::DASHI_NULL_PARAMETER)?;
        let mut opts = ConsumerOptions::new(queue);
        if prefetch > 0 {
            opts = opts.prefetch_count(u32::from(prefetch));
        }
        let userdata = UserData(userdata);
        let consumer = ch
            .ch
            .consume(opts, move |d| {
                let u = &userdata;
                // SAFETY: `cb` and `userdata` are valid on this (the
                // draining) thread by the caller's contract; the callee
                // owns the boxed message.
                unsafe { cb(u.0, dashi_message::boxed(d)) };
            })
            .map_err(|e| dashi_result::from(&e))?;
        let tag = ch.next_tag.fetch_add(1, Ordering::Relaxed);
        ch.consumers
            .lock()
            .map_err(|_| dashi_result::DASHI_PANIC)?
            .push((tag, consumer));
        // SAFETY: checked above.
        unsafe { write_out(consumer_tag_out, tag) };
        Ok(())
    })
}

/// Cancels a consumer: no more callbacks for it; its unacked messages stay
/// unacked (ack or reject them, or free the channel to restore them).
///
/// # Safety
/// `ch` is a live channel.
#[no_mangle]
pub unsafe extern "C" fn dashi_cancel(ch: *const dashi_channel, consumer_tag: u64) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let ch = unsafe { try_ref(ch) }?;
        let consumer = {
            let mut list = ch.consumers.lock().map_err(|_| dashi_result::DASHI_PANIC)?;
            let i = list
                .iter()
                .position(|(t, _)| *t == consumer_tag)
                .ok_or(dashi_result::DASHI_UNKNOWN_CONSUMER)?;
            list.remove(i).1
        };
        consumer.cancel().map_err(|e| dashi_result::from(&e))
    })
}
