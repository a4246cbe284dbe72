"""Kombu and Celery as the other side of dashi's redis:// interop tests.

Run by transport-redis/tests/kombu.rs with real kombu, celery and redis-py
from PyPI. Every command prints one JSON object per line on stdout.

  peer.py consume URL QUEUE N [EXCHANGE TYPE KEY]   consume and ack N messages
  peer.py publish URL EXCHANGE TYPE KEY BODY PRIORITY [QUEUE]
  peer.py hold URL QUEUE                             take one, never ack, os._exit
  peer.py restore URL                                kombu's restore_visible, vt=1
  peer.py bind URL EXCHANGE TYPE KEY QUEUE           declare and bind (kombu's layout)
  peer.py brpop-consume URL QUEUE SECONDS            consume (BRPOP) for SECONDS, ack all
  peer.py fanout-consume URL EXCHANGE KEY QUEUE SECONDS   subscribe, say ready, collect
"""
import json
import os
import sys
import time

from kombu import Connection, Consumer, Exchange, Producer, Queue


def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def conn(url):
    return Connection(url, transport_options={"visibility_timeout": 1})


def describe(body, message):
    raw = None
    if isinstance(body, bytes):
        raw = body.hex()
        body = body.decode("utf-8", "replace")
    elif not isinstance(body, str):
        body = json.dumps(body, sort_keys=True)
    return dict(
        body=body,
        headers={k: v for k, v in (message.headers or {}).items()},
        priority=message.properties.get("priority"),
        redelivered=bool(message.delivery_info.get("redelivered")),
        content_type=message.content_type,
        routing_key=message.delivery_info.get("routing_key"),
        exchange=message.delivery_info.get("exchange"),
        correlation_id=message.properties.get("correlation_id"),
        raw=raw,
        content_encoding=message.content_encoding,
    )


def queue_of(name, exchange=None, kind=None, key=None):
    if exchange:
        return Queue(name, Exchange(exchange, kind), key or "")
    return Queue(name, Exchange(name, "direct"), name)


def consume(url, queue, n, exchange=None, kind=None, key=None):
    n = int(n)
    got = []
    with conn(url) as c:
        q = queue_of(queue, exchange, kind, key)

        def on(body, message):
            got.append(describe(body, message))
            message.ack()

        with Consumer(c, [q], callbacks=[on], accept=["json", "text/plain", "application/data"]):
            deadline = time.time() + 20
            while len(got) < n and time.time() < deadline:
                try:
                    c.drain_events(timeout=1)
                except Exception:  # socket.timeout and friends
                    pass
    for g in got:
        out(**g)
    out(done=len(got))


def publish(url, exchange, kind, key, body, priority, queue=None):
    with conn(url) as c:
        ex = Exchange(exchange, kind) if exchange else Exchange("", "direct")
        if exchange:
            ex(c.default_channel).declare()
        declare = [Queue(queue, ex, key)] if queue else []
        Producer(c).publish(
            {"body": body},
            exchange=ex,
            routing_key=key,
            priority=int(priority),
            headers={"x-from": "kombu"},
            declare=declare,
            serializer="json",
        )
    out(published=body)


def hold(url, queue):
    with conn(url) as c:
        q = c.SimpleQueue(queue)
        m = q.get(timeout=20)
        out(held=describe(m.payload, m)["body"])
        os._exit(0)


def restore(url):
    with conn(url) as c:
        ch = c.default_channel
        ch.qos.restore_visible(num=0)
        # restore_visible is throttled: the first call always scans.
    out(restored=True)


def bind(url, exchange, kind, key, queue):
    with conn(url) as c:
        Queue(queue, Exchange(exchange, kind), key)(c.default_channel).declare()
    out(bound=queue)


def collect(url, queue, seconds, subscribe_first=False):
    """Consumes `queue` for `seconds`, acking; says ready once waiting."""
    got = []
    with conn(url) as c:

        def on(body, message):
            got.append(describe(body, message)["body"])
            message.ack()

        with Consumer(c, [queue], callbacks=[on], accept=["json", "text/plain", "application/data"]):
            if subscribe_first:
                try:
                    c.drain_events(timeout=0.5)  # subscribes
                except Exception:
                    pass
            out(ready=True)
            deadline = time.time() + float(seconds)
            while time.time() < deadline:
                try:
                    c.drain_events(timeout=0.5)
                except Exception:
                    pass
    out(bodies=got)


def brpop_consume(url, queue, seconds):
    collect(url, queue_of(queue), seconds)


def fanout_consume(url, exchange, key, queue, seconds):
    q = Queue(queue, Exchange(exchange, "fanout"), key, auto_delete=True)
    collect(url, q, seconds, subscribe_first=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "consume": consume,
        "publish": publish,
        "hold": hold,
        "restore": restore,
        "bind": bind,
        "brpop-consume": brpop_consume,
        "fanout-consume": fanout_consume,
    }[cmd](*args)
