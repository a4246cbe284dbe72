//! Channels: topology, publish, get, consume.

use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dashi::{
    Channel, Consumer, ConsumerOptions, Exchange, ExchangeKind, Headers, Message, Queue, Value,
};

use crate::boundary::{check_out, ffi_guard, try_ref, try_str, write_opt, write_out};
use crate::connection::dashi_connection;
use crate::message::{dashi_message, dashi_value_type};
use crate::result::dashi_result;
use crate::returned::wait_for_confirms;

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

impl dashi_channel {
    pub(crate) fn channel(&self) -> &Channel {
        &self.ch
    }
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

/// The checked arguments of a bind or unbind.
///
/// # Safety
/// As `dashi_queue_bind`.
unsafe fn binding_args<'a>(
    ch: *const dashi_channel,
    queue: *const c_char,
    exchange: *const c_char,
    binding_key: *const c_char,
) -> Result<(&'a dashi_channel, &'a str, &'a str, &'a str), dashi_result> {
    // SAFETY: the caller's contract.
    unsafe {
        Ok((
            try_ref(ch)?,
            try_str(queue)?,
            try_str(exchange)?,
            try_str(binding_key)?,
        ))
    }
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
        let (ch, queue, exchange, key) = unsafe { binding_args(ch, queue, exchange, binding_key) }?;
        ch.ch
            .queue_bind(queue, exchange, key, Headers::new())
            .map_err(|e| dashi_result::from(&e))
    })
}

/// `dashi_queue_options` flag: the queue belongs to the declaring
/// connection and goes when it closes.
pub const DASHI_QUEUE_EXCLUSIVE: u32 = 1;
/// `dashi_queue_options` flag: the queue goes when its last consumer is
/// cancelled.
pub const DASHI_QUEUE_AUTO_DELETE: u32 = 2;
/// `dashi_queue_options` flag: not durable (memory only where the transport
/// distinguishes).
pub const DASHI_QUEUE_TRANSIENT: u32 = 4;
/// `dashi_queue_options` flag: a full queue drops (or dead-letters) its
/// oldest message instead of refusing the publish.
pub const DASHI_QUEUE_DROP_HEAD: u32 = 8;

/// The arguments of `dashi_queue_declare_with`. All zero (`memset`, or
/// `= {0}`) is a durable queue with the default limits; a NULL string or a
/// zero number leaves that argument at its default.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dashi_queue_options {
    /// `DASHI_QUEUE_*` flags, or 0.
    pub flags: u32,
    /// Priorities 0..=max_priority (0: one lane).
    pub max_priority: u8,
    /// Most ready messages (0: the default, 16 Mi).
    pub max_length: u64,
    /// Most ready body bytes (0: the default, 1 GiB).
    pub max_length_bytes: u64,
    /// Every message expires this many milliseconds after it is queued (0:
    /// never).
    pub message_ttl_ms: u64,
    /// Where rejected, expired and dropped messages go (NULL: dropped).
    pub dead_letter_exchange: *const c_char,
    /// Their routing key there (NULL: their own).
    pub dead_letter_routing_key: *const c_char,
    /// Default lease of a delivery, in milliseconds, before it goes back to
    /// the queue unacked (0: held until ack or channel close).
    pub lease_ms: u64,
}

const QUEUE_FLAGS: u32 =
    DASHI_QUEUE_EXCLUSIVE | DASHI_QUEUE_AUTO_DELETE | DASHI_QUEUE_TRANSIENT | DASHI_QUEUE_DROP_HEAD;

/// Declares a queue with its arguments (`opts` may be NULL: the defaults).
/// `*ready_out`, when not NULL, is written with its ready messages. Declaring
/// an existing queue with other arguments is `DASHI_PRECONDITION_FAILED`.
///
/// # Safety
/// `ch` is a live channel; `name` is NUL-terminated; `opts` is NULL or a
/// valid `dashi_queue_options` whose strings are NULL or NUL-terminated;
/// `ready_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_declare_with(
    ch: *const dashi_channel,
    name: *const c_char,
    opts: *const dashi_queue_options,
    ready_out: *mut u64,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name) = unsafe { (try_ref(ch)?, try_str(name)?) };
        let mut q = Queue::new(name);
        // SAFETY: NULL or valid by the caller's contract.
        if let Some(o) = unsafe { opts.as_ref() } {
            if o.flags & !QUEUE_FLAGS != 0 {
                return Err(dashi_result::DASHI_INVALID_ARGUMENT);
            }
            q.exclusive = o.flags & DASHI_QUEUE_EXCLUSIVE != 0;
            q.auto_delete = o.flags & DASHI_QUEUE_AUTO_DELETE != 0;
            q.durable = o.flags & DASHI_QUEUE_TRANSIENT == 0;
            if o.flags & DASHI_QUEUE_DROP_HEAD != 0 {
                q.overflow = dashi::Overflow::DropHead;
            }
            q.max_priority = o.max_priority;
            if o.max_length > 0 {
                q.max_length = o.max_length;
            }
            if o.max_length_bytes > 0 {
                q.max_length_bytes = o.max_length_bytes;
            }
            q.message_ttl = (o.message_ttl_ms > 0).then(|| Duration::from_millis(o.message_ttl_ms));
            q.lease = (o.lease_ms > 0).then(|| Duration::from_millis(o.lease_ms));
            // SAFETY: NULL or NUL-terminated by the caller's contract.
            unsafe {
                q.dead_letter_exchange = opt_str(o.dead_letter_exchange)?;
                q.dead_letter_routing_key = opt_str(o.dead_letter_routing_key)?;
            }
        }
        let info = ch
            .ch
            .queue_declare(&q)
            .map_err(|e| dashi_result::from(&e))?;
        // SAFETY: NULL or writable by the caller's contract.
        unsafe { write_opt(ready_out, info.message_count) };
        Ok(())
    })
}

/// Removes a binding made by `dashi_queue_bind`.
///
/// # Safety
/// `ch` is a live channel; the strings are NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_unbind(
    ch: *const dashi_channel,
    queue: *const c_char,
    exchange: *const c_char,
    binding_key: *const c_char,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, queue, exchange, key) = unsafe { binding_args(ch, queue, exchange, binding_key) }?;
        ch.ch
            .queue_unbind(queue, exchange, key, Headers::new())
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Deletes a queue and its messages: only when it has no consumers with
/// `if_unused` (else `DASHI_IN_USE`), only when empty with `if_empty` (else
/// `DASHI_NOT_EMPTY`). `*count_out`, when not NULL, is written with how many
/// messages went with it.
///
/// # Safety
/// `ch` is a live channel; `name` is NUL-terminated; `count_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_delete(
    ch: *const dashi_channel,
    name: *const c_char,
    if_unused: bool,
    if_empty: bool,
    count_out: *mut u64,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name) = unsafe { (try_ref(ch)?, try_str(name)?) };
        let n = ch
            .ch
            .queue_delete(name, if_unused, if_empty)
            .map_err(|e| dashi_result::from(&e))?;
        // SAFETY: NULL or writable by the caller's contract.
        unsafe { write_opt(count_out, n) };
        Ok(())
    })
}

/// Drops every ready message of a queue (unacked ones stay).
/// `*count_out`, when not NULL, is written with how many went.
///
/// # Safety
/// `ch` is a live channel; `name` is NUL-terminated; `count_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_queue_purge(
    ch: *const dashi_channel,
    name: *const c_char,
    count_out: *mut u64,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name) = unsafe { (try_ref(ch)?, try_str(name)?) };
        let n = ch
            .ch
            .queue_purge(name)
            .map_err(|e| dashi_result::from(&e))?;
        // SAFETY: NULL or writable by the caller's contract.
        unsafe { write_opt(count_out, n) };
        Ok(())
    })
}

/// Deletes an exchange (only when no queue is bound to it, with
/// `if_unused`: else `DASHI_IN_USE`).
///
/// # Safety
/// `ch` is a live channel; `name` is NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn dashi_exchange_delete(
    ch: *const dashi_channel,
    name: *const c_char,
    if_unused: bool,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, name) = unsafe { (try_ref(ch)?, try_str(name)?) };
        ch.ch
            .exchange_delete(name, if_unused)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Priority 0 is no priority property at all (the same lane): a message
/// with default properties costs no allocation for them.
fn with_priority(m: Message, priority: u8) -> Message {
    if priority == 0 {
        m
    } else {
        m.with_priority(priority)
    }
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
        let (ch, exchange, routing_key, message) =
            unsafe { publish_args(ch, exchange, routing_key, body, len, std::ptr::null()) }?;
        ch.ch
            .basic_publish(
                with_priority(message, priority),
                exchange,
                routing_key,
                false,
            )
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

/// A message header for `dashi_properties`: a name and a value of
/// `value_type` (0, the default, is a string in `value`), e.g.
/// `{ .key = "tenant", .value = "acme" }` or
/// `{ .key = "retries", .value_type = DASHI_VALUE_INT, .int_value = 3 }`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dashi_header {
    /// The header's name (NUL-terminated UTF-8).
    pub key: *const c_char,
    /// The value of a `DASHI_VALUE_STRING` header (NUL-terminated UTF-8).
    pub value: *const c_char,
    /// A `dashi_value_type` saying which of the value fields holds the
    /// value: `DASHI_VALUE_STRING`, `_NULL`, `_BOOL`, `_INT` or `_FLOAT`
    /// (any other number is `DASHI_INVALID_ARGUMENT` on publish). An
    /// integer, not the enum type, so that no value C can store is
    /// undefined behaviour here.
    pub value_type: u32,
    /// The value of a `DASHI_VALUE_INT` header.
    pub int_value: i64,
    /// The value of a `DASHI_VALUE_FLOAT` header.
    pub float_value: f64,
    /// The value of a `DASHI_VALUE_BOOL` header.
    pub bool_value: bool,
}

impl dashi_header {
    /// The header's name and value.
    ///
    /// # Safety
    /// `key` (and `value` for a string) are NUL-terminated strings.
    unsafe fn read(&self) -> Result<(String, Value), dashi_result> {
        use dashi_value_type::*;
        // SAFETY: the caller's contract.
        let key = unsafe { try_str(self.key) }?.to_owned();
        let value = match self.value_type {
            t if t == DASHI_VALUE_STRING as u32 => {
                // SAFETY: the caller's contract.
                Value::Str(unsafe { try_str(self.value) }?.to_owned())
            }
            t if t == DASHI_VALUE_NULL as u32 => Value::Null,
            t if t == DASHI_VALUE_BOOL as u32 => Value::Bool(self.bool_value),
            t if t == DASHI_VALUE_INT as u32 => Value::Int(self.int_value),
            t if t == DASHI_VALUE_FLOAT as u32 => Value::Float(self.float_value),
            _ => return Err(dashi_result::DASHI_INVALID_ARGUMENT),
        };
        Ok((key, value))
    }
}

/// Message properties for `dashi_publish_with`. A NULL string or a zero
/// number leaves the property unset.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dashi_properties {
    /// MIME type of the body, e.g. "application/json".
    pub content_type: *const c_char,
    /// Encoding of the body, e.g. "utf-8".
    pub content_encoding: *const c_char,
    /// Correlates a reply with its request.
    pub correlation_id: *const c_char,
    /// Where replies go.
    pub reply_to: *const c_char,
    /// The application's id of the message.
    pub message_id: *const c_char,
    /// The message expires this many milliseconds after it reaches a queue
    /// (0: never).
    pub expiration_ms: u64,
    /// Seconds since the epoch (0: unset).
    pub timestamp: u64,
    /// Priority (higher = more urgent).
    pub priority: u8,
    /// `headers_len` headers at `headers` (NULL when 0).
    pub headers: *const dashi_header,
    /// How many headers.
    pub headers_len: usize,
}

/// `dashi_publish_with` flag: a message no queue takes is an error
/// (`DASHI_UNROUTABLE`) instead of being dropped.
pub const DASHI_PUBLISH_MANDATORY: u32 = 1;

/// Whether publish `flags` ask for a mandatory publish;
/// `DASHI_INVALID_ARGUMENT` for an unknown flag.
pub(crate) fn mandatory(flags: u32) -> Result<bool, dashi_result> {
    if flags & !DASHI_PUBLISH_MANDATORY != 0 {
        return Err(dashi_result::DASHI_INVALID_ARGUMENT);
    }
    Ok(flags & DASHI_PUBLISH_MANDATORY != 0)
}

/// A NUL-terminated UTF-8 string that may be NULL (unset).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn opt_str(p: *const c_char) -> Result<Option<String>, dashi_result> {
    if p.is_null() {
        Ok(None)
    } else {
        // SAFETY: the caller's contract.
        unsafe { try_str(p) }.map(|s| Some(s.to_owned()))
    }
}

/// The body and properties of a publish.
///
/// # Safety
/// As `dashi_publish_with`.
unsafe fn message_from(
    body: *const u8,
    len: usize,
    props: *const dashi_properties,
) -> Result<Message, dashi_result> {
    let bytes = if len == 0 {
        Vec::new()
    } else if body.is_null() {
        return Err(dashi_result::DASHI_NULL_PARAMETER);
    } else {
        // SAFETY: readable for `len` bytes by the caller's contract.
        unsafe { std::slice::from_raw_parts(body, len) }.to_vec()
    };
    let mut m = Message::new(bytes);
    // SAFETY: NULL or a valid `dashi_properties` by the caller's contract.
    let Some(p) = (unsafe { props.as_ref() }) else {
        return Ok(m);
    };
    let pr = &mut m.properties;
    // SAFETY: each is NULL or NUL-terminated, by the caller's contract.
    unsafe {
        pr.content_type = opt_str(p.content_type)?;
        pr.content_encoding = opt_str(p.content_encoding)?;
        pr.correlation_id = opt_str(p.correlation_id)?;
        pr.reply_to = opt_str(p.reply_to)?;
        pr.message_id = opt_str(p.message_id)?;
    }
    if p.expiration_ms > 0 {
        pr.expiration = Some(Duration::from_millis(p.expiration_ms));
    }
    if p.timestamp > 0 {
        pr.timestamp = Some(p.timestamp);
    }
    pr.priority = (p.priority > 0).then_some(p.priority);
    if p.headers_len > 0 {
        if p.headers.is_null() {
            return Err(dashi_result::DASHI_NULL_PARAMETER);
        }
        // SAFETY: `headers_len` readable entries by the caller's contract.
        let hs = unsafe { std::slice::from_raw_parts(p.headers, p.headers_len) };
        for h in hs {
            // SAFETY: NUL-terminated strings by the caller's contract.
            let (k, v) = unsafe { h.read() }?;
            pr.headers.insert(k, v);
        }
    }
    Ok(m)
}

/// The checked arguments every publish call takes.
///
/// # Safety
/// As `dashi_publish_with`.
unsafe fn publish_args<'a>(
    ch: *const dashi_channel,
    exchange: *const c_char,
    routing_key: *const c_char,
    body: *const u8,
    len: usize,
    props: *const dashi_properties,
) -> Result<(&'a dashi_channel, &'a str, &'a str, Message), dashi_result> {
    // SAFETY: the caller's contract.
    unsafe {
        Ok((
            try_ref(ch)?,
            try_str(exchange)?,
            try_str(routing_key)?,
            message_from(body, len, props)?,
        ))
    }
}

/// Publishes with properties and headers (`props` may be NULL: none) and
/// `flags` (`DASHI_PUBLISH_MANDATORY`, or 0). Returns once the transport
/// stored it at its durability level.
///
/// # Safety
/// `ch` is a live channel; the strings are NUL-terminated; `body` is
/// readable for `len` bytes; `props` is NULL or points to a valid
/// `dashi_properties` whose strings and headers are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn dashi_publish_with(
    ch: *const dashi_channel,
    exchange: *const c_char,
    routing_key: *const c_char,
    body: *const u8,
    len: usize,
    props: *const dashi_properties,
    flags: u32,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, exchange, routing_key, message) =
            unsafe { publish_args(ch, exchange, routing_key, body, len, props) }?;
        let mandatory = mandatory(flags)?;
        ch.ch
            .basic_publish(message, exchange, routing_key, mandatory)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Publishes pipelined: hands the message to the transport and returns
/// before its durability point (many publishes then share one sync); a full
/// window of unconfirmed publishes waits for room. `dashi_wait_for_confirms`
/// says whether they were all confirmed.
///
/// # Safety
/// As `dashi_publish`.
#[no_mangle]
pub unsafe extern "C" fn dashi_publish_async(
    ch: *const dashi_channel,
    exchange: *const c_char,
    routing_key: *const c_char,
    body: *const u8,
    len: usize,
    priority: u8,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, exchange, routing_key, message) =
            unsafe { publish_args(ch, exchange, routing_key, body, len, std::ptr::null()) }?;
        let message = with_priority(message, priority);
        // The channel tracks the confirm; `dashi_wait_for_confirms` reads it.
        ch.ch
            .publish_async(message, exchange, routing_key, false)
            .map(drop)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Publishes pipelined (as `dashi_publish_async`) with properties and
/// headers (`props` may be NULL) and `flags` (as `dashi_publish_with`).
///
/// # Safety
/// As `dashi_publish_with`.
#[no_mangle]
pub unsafe extern "C" fn dashi_publish_async_with(
    ch: *const dashi_channel,
    exchange: *const c_char,
    routing_key: *const c_char,
    body: *const u8,
    len: usize,
    props: *const dashi_properties,
    flags: u32,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let (ch, exchange, routing_key, message) =
            unsafe { publish_args(ch, exchange, routing_key, body, len, props) }?;
        let mandatory = mandatory(flags)?;
        ch.ch
            .publish_async(message, exchange, routing_key, mandatory)
            .map(drop)
            .map_err(|e| dashi_result::from(&e))
    })
}

/// Waits up to `timeout_ms` until every `dashi_publish_async` of this
/// channel so far has its confirm. `DASHI_OK` when all were confirmed;
/// `DASHI_TIMEOUT` when some are still pending (call again);
/// `DASHI_UNCONFIRMED` when some were not confirmed: `*failed_out` (if not
/// NULL) is how many; they may or may not be delivered, and their messages
/// are dropped (`dashi_wait_for_confirms_returned` hands them back).
///
/// # Safety
/// `ch` is a live channel; `failed_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn dashi_wait_for_confirms(
    ch: *const dashi_channel,
    timeout_ms: u32,
    failed_out: *mut usize,
) -> dashi_result {
    ffi_guard(|| {
        // SAFETY: the caller's contract.
        let ch = unsafe { try_ref(ch) }?;
        // SAFETY: as above.
        unsafe { wait_for_confirms(ch, timeout_ms, failed_out, drop) }
    })
}
