"""dashi from Python, through its C ABI (ctypes: no compiler needed).

Build the library first (``cargo build --release -p dashi-ffi``); it is
found in ``target/release`` or ``target/debug`` of this checkout, or at the
path in the ``DASHI_LIB`` environment variable::

    import dashi
    with dashi.Connection("memory://") as conn:
        ch = conn.channel()
        ch.queue_declare("tasks", max_priority=9)
        ch.publish(b"hello", "tasks", priority=5)
        with ch.get("tasks", timeout=1.0) as m:
            print(m.body, m.priority)
            m.ack()

Every failed call raises ``DashiError`` (``.code`` is the ``dashi_result``
number, ``.name`` its name). A connection is used from one thread at a time
here, as the callbacks of ``drain_events`` run on the calling thread.
"""

import ctypes
import os

_HERE = os.path.dirname(os.path.abspath(__file__))

# dashi_result codes (include/dashi.h).
_NAMES = {
    0: "DASHI_OK",
    7000: "DASHI_NULL_PARAMETER",
    7001: "DASHI_INVALID_ARGUMENT",
    7002: "DASHI_PANIC",
    7003: "DASHI_TIMEOUT",
    7004: "DASHI_NOT_SET",
    7100: "DASHI_INVALID_URL",
    7101: "DASHI_CONNECTION_CLOSED",
    7102: "DASHI_CHANNEL_CLOSED",
    7103: "DASHI_UNKNOWN_EXCHANGE",
    7104: "DASHI_UNKNOWN_QUEUE",
    7105: "DASHI_PRECONDITION_FAILED",
    7106: "DASHI_IN_USE",
    7107: "DASHI_NOT_EMPTY",
    7108: "DASHI_EXCLUSIVE",
    7109: "DASHI_UNKNOWN_CONSUMER",
    7110: "DASHI_INVALID_NAME",
    7200: "DASHI_STORE_TRANSIENT",
    7201: "DASHI_STORE_FAILED",
    7202: "DASHI_NO_SPACE",
    7300: "DASHI_UNROUTABLE",
    7301: "DASHI_PRIORITY_TOO_HIGH",
    7302: "DASHI_BODY_TOO_LARGE",
    7303: "DASHI_QUEUE_FULL",
    7304: "DASHI_UNCONFIRMED",
    7305: "DASHI_WINDOW_FULL",
    7400: "DASHI_UNKNOWN_TAG",
    7401: "DASHI_ALREADY_SETTLED",
    7402: "DASHI_RESTORED",
    7403: "DASHI_NO_ACK",
    7404: "DASHI_NOT_RECORDED",
}
OK = 0
TIMEOUT = 7003
NOT_SET = 7004
UNCONFIRMED = 7304
PUBLISH_MANDATORY = 1


# dashi_value_type
_STRING, _NULL, _BOOL, _INT, _FLOAT, _BYTES = 0, 1, 2, 3, 4, 5


class _Header(ctypes.Structure):
    _fields_ = [
        ("key", ctypes.c_char_p),
        ("value", ctypes.c_char_p),
        ("value_type", ctypes.c_uint32),
        ("int_value", ctypes.c_int64),
        ("float_value", ctypes.c_double),
        ("bool_value", ctypes.c_bool),
    ]


def _header(key, value):
    """A dashi_header for a str, int, float, bool or None value."""
    h = _Header(key=_text(key))
    if value is None:
        h.value_type = _NULL
    elif isinstance(value, bool):
        h.value_type, h.bool_value = _BOOL, value
    elif isinstance(value, int):
        h.value_type, h.int_value = _INT, value
    elif isinstance(value, float):
        h.value_type, h.float_value = _FLOAT, value
    elif isinstance(value, (str, bytes)):
        h.value_type, h.value = _STRING, _text(value)
    else:
        raise TypeError(f"header {key!r}: a {type(value).__name__} cannot be sent "
                        "(str, int, float, bool or None)")
    return h


class _Properties(ctypes.Structure):
    _fields_ = [
        ("content_type", ctypes.c_char_p),
        ("content_encoding", ctypes.c_char_p),
        ("correlation_id", ctypes.c_char_p),
        ("reply_to", ctypes.c_char_p),
        ("message_id", ctypes.c_char_p),
        ("expiration_ms", ctypes.c_uint64),
        ("timestamp", ctypes.c_uint64),
        ("priority", ctypes.c_uint8),
        ("headers", ctypes.POINTER(_Header)),
        ("headers_len", ctypes.c_size_t),
    ]


class _Figures(ctypes.Structure):
    _fields_ = [
        (n, ctypes.c_uint64) for n in ("messages", "bytes", "unacked", "consumers", "garbage")
    ]


class DashiError(Exception):
    """A call that returned a dashi_result other than DASHI_OK."""

    def __init__(self, code, call):
        self.code = code
        self.name = _NAMES.get(code, "unknown")
        buf = ctypes.create_string_buffer(256)
        _lib().dashi_result_message(code, buf, len(buf))
        self.text = buf.value.decode()
        super().__init__(f"{call}: {self.name} ({code}): {self.text}")


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
_loaded = None


def _find():
    if os.environ.get("DASHI_LIB"):
        return os.environ["DASHI_LIB"]
    root = os.path.normpath(os.path.join(_HERE, "..", ".."))
    for profile in ("release", "debug"):
        p = os.path.join(root, "target", profile, "libdashi_ffi.so")
        if os.path.exists(p):
            return p
    raise OSError("libdashi_ffi.so not found: build it (cargo build -p dashi-ffi) or set DASHI_LIB")


def _lib():
    global _loaded
    if _loaded is not None:
        return _loaded
    lib = ctypes.CDLL(_find())
    P, S, U8, U16, U32, U64 = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint8,
                               ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64)
    R = ctypes.c_uint32
    sigs = {
        "dashi_version": (S, []),
        "dashi_result_message": (ctypes.c_size_t, [R, ctypes.c_char_p, ctypes.c_size_t]),
        "dashi_connection_open": (R, [S, ctypes.POINTER(P)]),
        "dashi_connection_free": (None, [P]),
        "dashi_drain_events": (R, [P, U32]),
        "dashi_channel_open": (R, [P, ctypes.POINTER(P)]),
        "dashi_channel_free": (None, [P]),
        "dashi_exchange_declare": (R, [P, S, S]),
        "dashi_queue_declare": (R, [P, S, U8]),
        "dashi_queue_bind": (R, [P, S, S, S]),
        "dashi_publish": (R, [P, S, S, ctypes.c_char_p, ctypes.c_size_t, U8]),
        "dashi_get": (R, [P, S, U32, ctypes.POINTER(P)]),
        "dashi_consume": (R, [P, S, U16, _CALLBACK, P, ctypes.POINTER(U64)]),
        "dashi_cancel": (R, [P, U64]),
        "dashi_message_body": (None, [P, ctypes.POINTER(ctypes.POINTER(ctypes.c_uint8)),
                                      ctypes.POINTER(ctypes.c_size_t)]),
        "dashi_message_priority": (U8, [P]),
        "dashi_message_redelivered": (ctypes.c_bool, [P]),
        "dashi_message_delivery_tag": (U64, [P]),
        "dashi_ack": (R, [P]),
        "dashi_reject": (R, [P, ctypes.c_bool]),
        "dashi_message_free": (None, [P]),
        "dashi_publish_with": (R, [P, S, S, ctypes.c_char_p, ctypes.c_size_t,
                                   ctypes.POINTER(_Properties), U32]),
        "dashi_publish_async": (R, [P, S, S, ctypes.c_char_p, ctypes.c_size_t, U8]),
        "dashi_wait_for_confirms": (R, [P, U32, ctypes.POINTER(ctypes.c_size_t)]),
        "dashi_queue_stats": (R, [P, S, ctypes.POINTER(_Figures)]),
        "dashi_message_property": (R, [P, S, ctypes.POINTER(ctypes.POINTER(ctypes.c_uint8)),
                                       ctypes.POINTER(ctypes.c_size_t)]),
        "dashi_message_header": (R, [P, S, ctypes.POINTER(ctypes.POINTER(ctypes.c_uint8)),
                                     ctypes.POINTER(ctypes.c_size_t)]),
        "dashi_message_header_type": (R, [P, S, ctypes.POINTER(ctypes.c_uint32)]),
        "dashi_message_header_i64": (R, [P, S, ctypes.POINTER(ctypes.c_int64)]),
        "dashi_message_header_f64": (R, [P, S, ctypes.POINTER(ctypes.c_double)]),
        "dashi_message_header_bool": (R, [P, S, ctypes.POINTER(ctypes.c_bool)]),
        "dashi_message_extend_lease": (R, [P, U32]),
        "dashi_connection_event_fd": (R, [P, ctypes.POINTER(ctypes.c_int)]),
    }
    for name, (res, args) in sigs.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    _loaded = lib
    return lib


def _check(code, call):
    if code != OK:
        raise DashiError(code, call)


def _text(s):
    return s.encode() if isinstance(s, str) else s


def _opt_text(s):
    """`None` stays unset; any text, the empty one included, is sent."""
    return None if s is None else _text(s)


def version():
    """The library's version string."""
    return _lib().dashi_version().decode()


def _ms(timeout):
    return max(0, min(int(timeout * 1000), 2**32 - 1))


class _Closing:
    """`with` closes it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Message(_Closing):
    """One delivery: ack() or reject() it; it is freed when closed (or
    collected). Unacked messages go back to their queue when their channel
    closes."""

    def __init__(self, ptr):
        self._p = ctypes.c_void_p(ptr)

    def _ptr(self):
        if not self._p:
            raise DashiError(7000, "message used after close")
        return self._p

    @property
    def body(self):
        data = ctypes.POINTER(ctypes.c_uint8)()
        n = ctypes.c_size_t()
        _lib().dashi_message_body(self._ptr(), ctypes.byref(data), ctypes.byref(n))
        return ctypes.string_at(data, n.value) if n.value else b""

    @property
    def priority(self):
        return _lib().dashi_message_priority(self._ptr())

    @property
    def redelivered(self):
        return bool(_lib().dashi_message_redelivered(self._ptr()))

    @property
    def delivery_tag(self):
        return _lib().dashi_message_delivery_tag(self._ptr())

    def _view(self, fn, name, call):
        data = ctypes.POINTER(ctypes.c_uint8)()
        n = ctypes.c_size_t()
        code = fn(self._ptr(), _text(name), ctypes.byref(data), ctypes.byref(n))
        if code == NOT_SET:
            return None
        _check(code, call)
        return ctypes.string_at(data, n.value).decode() if n.value else ""

    def property(self, name):
        """A property ("content_type", "correlation_id", "reply_to",
        "message_id", "content_encoding", "exchange", "routing_key",
        "queue") as a str, or None when unset."""
        return self._view(_lib().dashi_message_property, name, "message_property")

    def header(self, key, default=None):
        """A header's value as str, bytes, int, float, bool or None (a null
        header); `default` when absent. Lists and tables raise DashiError
        (DASHI_INVALID_ARGUMENT): the C ABI does not read them yet."""
        lib, ptr, k = _lib(), self._ptr(), _text(key)
        t = ctypes.c_uint32()
        code = lib.dashi_message_header_type(ptr, k, ctypes.byref(t))
        if code == NOT_SET:
            return default
        _check(code, "message_header_type")
        if t.value == _NULL:
            return None
        if t.value in (_STRING, _BYTES):
            data = ctypes.POINTER(ctypes.c_uint8)()
            n = ctypes.c_size_t()
            _check(lib.dashi_message_header(ptr, k, ctypes.byref(data), ctypes.byref(n)),
                   "message_header")
            raw = ctypes.string_at(data, n.value) if n.value else b""
            return raw.decode() if t.value == _STRING else raw
        getter = {_BOOL: (lib.dashi_message_header_bool, ctypes.c_bool),
                  _INT: (lib.dashi_message_header_i64, ctypes.c_int64),
                  _FLOAT: (lib.dashi_message_header_f64, ctypes.c_double)}.get(t.value)
        if getter is None:
            raise DashiError(7001, f"header {key!r} is a list or table")
        fn, ctype = getter
        out = ctype()
        _check(fn(ptr, k, ctypes.byref(out)), "message_header")
        return out.value

    def extend_lease(self, seconds):
        _check(_lib().dashi_message_extend_lease(self._ptr(), _ms(seconds)), "extend_lease")

    def ack(self):
        _check(_lib().dashi_ack(self._ptr()), "ack")

    def reject(self, requeue=False):
        _check(_lib().dashi_reject(self._ptr(), requeue), "reject")

    def close(self):
        if self._p:
            _lib().dashi_message_free(self._p)
            self._p = ctypes.c_void_p()


    def __del__(self):
        self.close()


class Channel(_Closing):
    """A channel: topology, publish, get, consumers. Closing it stops its
    consumers and restores its unacked messages."""

    def __init__(self, conn):
        self._p = ctypes.c_void_p()
        self._conn = conn
        out = ctypes.c_void_p()
        _check(_lib().dashi_channel_open(conn._ptr(), ctypes.byref(out)), "channel_open")
        self._p = out
        self._callbacks = {}

    def _ptr(self):
        if not self._p:
            raise DashiError(7102, "channel used after close")
        return self._p

    def exchange_declare(self, name, type="direct"):
        _check(_lib().dashi_exchange_declare(self._ptr(), _text(name), _text(type)),
               "exchange_declare")

    def queue_declare(self, name, max_priority=0):
        _check(_lib().dashi_queue_declare(self._ptr(), _text(name), max_priority),
               "queue_declare")

    def queue_bind(self, queue, exchange, binding_key):
        _check(_lib().dashi_queue_bind(self._ptr(), _text(queue), _text(exchange),
                                       _text(binding_key)), "queue_bind")

    def publish(self, body, routing_key, exchange="", priority=0, mandatory=False,
                content_type=None, correlation_id=None, reply_to=None, message_id=None,
                headers=None, expiration=None):
        """Publishes and returns once the transport stored the message at its
        durability level. `headers` maps str to str, int, float, bool or
        None; `expiration` is in seconds (None or 0: never)."""
        body = _text(body)
        props = _Properties()
        props.content_type = _opt_text(content_type)
        props.correlation_id = _opt_text(correlation_id)
        props.reply_to = _opt_text(reply_to)
        props.message_id = _opt_text(message_id)
        props.priority = priority
        if expiration is not None and expiration < 0:
            raise ValueError(f"expiration is {expiration} s: it must be 0 (never) or more")
        if expiration:
            props.expiration_ms = max(1, int(expiration * 1000))
        if headers:
            arr = (_Header * len(headers))(*[_header(k, v) for k, v in headers.items()])
            props.headers = arr
            props.headers_len = len(headers)
        flags = PUBLISH_MANDATORY if mandatory else 0
        _check(_lib().dashi_publish_with(self._ptr(), _text(exchange), _text(routing_key),
                                         body, len(body), ctypes.byref(props), flags),
               "publish")

    def publish_async(self, body, routing_key, exchange="", priority=0):
        """Publishes pipelined: returns before the durability point; see
        wait_for_confirms."""
        body = _text(body)
        _check(_lib().dashi_publish_async(self._ptr(), _text(exchange), _text(routing_key),
                                          body, len(body), priority), "publish_async")

    def wait_for_confirms(self, timeout=5.0):
        """Waits for every publish_async so far: True when all were
        confirmed, False on timeout; raises DashiError (DASHI_UNCONFIRMED,
        with `.failed` set) when some were not."""
        failed = ctypes.c_size_t(0)
        code = _lib().dashi_wait_for_confirms(self._ptr(), _ms(timeout), ctypes.byref(failed))
        if code == TIMEOUT:
            return False
        if code == UNCONFIRMED:
            e = DashiError(code, "wait_for_confirms")
            e.failed = failed.value
            raise e
        _check(code, "wait_for_confirms")
        return True

    def get(self, queue, timeout=0.0):
        """The next message of `queue` (waiting up to `timeout` seconds), or None."""
        out = ctypes.c_void_p()
        code = _lib().dashi_get(self._ptr(), _text(queue), _ms(timeout), ctypes.byref(out))
        if code == TIMEOUT:
            return None
        _check(code, "get")
        return Message(out.value)

    def consume(self, queue, callback, prefetch=0):
        """Calls `callback(message)` for each delivery inside
        Connection.drain_events; returns the consumer tag."""
        conn = self._conn

        def trampoline(_userdata, msg):
            try:
                callback(Message(msg))
            except BaseException as e:  # re-raised by drain_events
                conn._raised.append(e)

        cb = _CALLBACK(trampoline)
        tag = ctypes.c_uint64()
        _check(_lib().dashi_consume(self._ptr(), _text(queue), prefetch, cb, None,
                                    ctypes.byref(tag)), "consume")
        self._callbacks[tag.value] = cb  # kept alive while the consumer is
        return tag.value

    def cancel(self, tag):
        _check(_lib().dashi_cancel(self._ptr(), tag), "cancel")
        self._callbacks.pop(tag, None)

    def close(self):
        if self._p:
            _lib().dashi_channel_free(self._p)
            self._p = ctypes.c_void_p()
            self._callbacks.clear()



class Connection(_Closing):
    """A connection to one transport URL (memory://, local:///dir, ...)."""

    def __init__(self, url):
        self._p = ctypes.c_void_p()
        self._channels = []
        out = ctypes.c_void_p()
        _check(_lib().dashi_connection_open(_text(url), ctypes.byref(out)), "connection_open")
        self._p = out
        self._channels = []
        self._raised = []

    def _ptr(self):
        if not self._p:
            raise DashiError(7101, "connection used after close")
        return self._p

    def fileno(self):
        """A descriptor that becomes readable when drain_events(0) may have
        work, for select/poll/asyncio (`loop.add_reader(conn.fileno(),
        lambda: conn.drain_events(0))`). Owned by the connection."""
        fd = ctypes.c_int(-1)
        _check(_lib().dashi_connection_event_fd(self._ptr(), ctypes.byref(fd)), "event_fd")
        return fd.value

    def queue_stats(self, queue):
        """{"messages", "bytes", "unacked", "consumers", "garbage"} of `queue`
        (garbage: envelopes set aside as undeliverable, redis:// only)."""
        f = _Figures()
        _check(_lib().dashi_queue_stats(self._ptr(), _text(queue), ctypes.byref(f)),
               "queue_stats")
        return {n: getattr(f, n) for n, _ in _Figures._fields_}

    def channel(self):
        ch = Channel(self)
        self._channels.append(ch)
        return ch

    def drain_events(self, timeout=1.0):
        """Runs consumer callbacks for what arrives within `timeout` seconds;
        True if any ran. An exception raised by a callback is raised here."""
        code = _lib().dashi_drain_events(self._ptr(), _ms(timeout))
        if self._raised:
            e = self._raised.pop(0)
            self._raised.clear()
            raise e
        if code == TIMEOUT:
            return False
        _check(code, "drain_events")
        return True

    def close(self):
        if self._p:
            for ch in self._channels:
                ch.close()
            self._channels.clear()
            _lib().dashi_connection_free(self._p)
            self._p = ctypes.c_void_p()


    def __del__(self):
        self.close()
