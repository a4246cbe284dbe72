"""Checks of the Python binding, run by ffi/tests/python.rs:

    python3 test_dashi.py check URL        every check on one transport
    python3 test_dashi.py produce URL N    publishes m-0 .. m-(N-1) to "xq"
"""

import select
import sys

import dashi


def check(url):
    assert dashi.version() == "0.1.0", dashi.version()
    with dashi.Connection(url) as conn:
        ch = conn.channel()
        # Round trip, priorities, ack.
        ch.queue_declare("py", max_priority=9)
        ch.publish(b"low", "py", priority=1)
        ch.publish("high", "py", priority=9)
        with ch.get("py", timeout=1.0) as m:
            assert (m.body, m.priority, m.redelivered) == (b"high", 9, False), m.body
            m.ack()
        with ch.get("py", timeout=1.0) as m:
            assert m.body == b"low"
            m.reject(requeue=True)
        with ch.get("py", timeout=1.0) as m:
            assert m.body == b"low" and m.redelivered
            m.ack()
        assert ch.get("py") is None
        # Consume + drain_events, topic routing.
        ch.exchange_declare("logs", "topic")
        ch.queue_declare("errors")
        ch.queue_bind("errors", "logs", "*.error")
        seen = []

        def on_message(m):
            seen.append(m.body)
            m.ack()
            m.close()

        tag = ch.consume("errors", on_message, prefetch=10)
        ch.publish(b"a", "db.error", exchange="logs")
        ch.publish(b"x", "db.info", exchange="logs")
        ch.publish(b"b", "web.error", exchange="logs")
        while len(seen) < 2:
            assert conn.drain_events(timeout=1.0)
        assert seen == [b"a", b"b"], seen
        assert not conn.drain_events(timeout=0.02)
        ch.cancel(tag)
        # An exception in a callback comes out of drain_events.
        def boom(m):
            m.ack()
            m.close()
            raise ValueError("from the callback")

        ch.consume("errors", boom)
        ch.publish(b"c", "x.error", exchange="logs")
        try:
            conn.drain_events(timeout=1.0)
            raise AssertionError("the callback's exception was lost")
        except ValueError as e:
            assert "from the callback" in str(e)
        # Errors are exceptions with the dashi_result name.
        for call, name in [
            (lambda: ch.queue_declare("py", max_priority=3), "DASHI_PRECONDITION_FAILED"),
            (lambda: ch.get("missing"), "DASHI_UNKNOWN_QUEUE"),
            (lambda: ch.publish(b"x", "py", priority=10), "DASHI_PRIORITY_TOO_HIGH"),
            (lambda: ch.exchange_declare("e", "nonsense"), "DASHI_INVALID_ARGUMENT"),
            (lambda: ch.cancel(999), "DASHI_UNKNOWN_CONSUMER"),
            (lambda: dashi.Connection("nope://x"), "DASHI_INVALID_URL"),
        ]:
            try:
                call()
                raise AssertionError(f"no error, wanted {name}")
            except dashi.DashiError as e:
                assert e.name == name, (e, name)
                assert e.text, e
        # Properties, headers, stats, pipelining.
        ch.queue_declare("props")
        ch.publish(b"{}", "props", content_type="application/json",
                   correlation_id="req-7",
                   headers={"tenant": "acme", "retries": 3, "ratio": 0.5, "urgent": True,
                            "eta": None})
        assert conn.queue_stats("props") == {"messages": 1, "bytes": 2, "unacked": 0,
                                             "consumers": 0, "garbage": 0}
        with ch.get("props", timeout=1.0) as m:
            assert m.property("content_type") == "application/json"
            assert m.property("correlation_id") == "req-7"
            assert m.property("reply_to") is None
            assert m.property("message_id") is None
            assert m.property("queue") == "props"
            assert m.header("tenant") == "acme" and m.header("nope") is None
            assert m.header("nope", default=7) == 7
            assert m.header("retries") == 3 and m.header("ratio") == 0.5
            assert m.header("urgent") is True and m.header("eta", default=7) is None
            assert conn.queue_stats("props")["unacked"] == 1
            m.extend_lease(30)
            m.ack()
        # Empty text is text, not "unset", and not a TypeError either.
        ch.publish(b"e", "props", reply_to="", message_id="")
        with ch.get("props", timeout=1.0) as m:
            assert m.body == b"e" and m.property("reply_to") == "", m.property("reply_to")
            assert m.property("message_id") == ""
            m.ack()
        try:
            ch.publish(b"x", "props", expiration=-1)
            raise AssertionError("a negative expiration was taken")
        except ValueError as e:
            assert "expiration is -1 s" in str(e), e
        try:
            ch.publish(b"x", "props", headers={"list": [1]})
            raise AssertionError("a list header went out")
        except TypeError as e:
            assert "list" in str(e)
        try:
            ch.publish(b"x", "nobody", mandatory=True)
            raise AssertionError("an unroutable mandatory publish went through")
        except dashi.DashiError as e:
            assert e.name == "DASHI_UNROUTABLE"
        for i in range(200):
            ch.publish_async(f"a-{i}", "props")
        assert ch.wait_for_confirms(timeout=10)
        got = []
        while True:
            m = ch.get("props")
            if m is None:
                break
            got.append(m.body.decode())
            m.ack()
            m.close()
        assert got == [f"a-{i}" for i in range(200)], got[:3]
        # An event loop: the descriptor says when to drain.
        ch.queue_declare("ev")
        events = []

        def on_event(m):
            events.append(m.body)
            m.ack()
            m.close()

        ch.consume("ev", on_event)
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        while conn.drain_events(timeout=0):
            pass
        assert poller.poll(0) == []
        ch.publish(b"tick", "ev")
        assert poller.poll(2000), "the descriptor did not become readable"
        assert conn.drain_events(timeout=0)
        assert events == [b"tick"], events
        ch.close()
        try:
            ch.get("py")
            raise AssertionError("a closed channel was used")
        except dashi.DashiError as e:
            assert e.name == "DASHI_CHANNEL_CLOSED"
    print("ok")


def produce(url, n):
    with dashi.Connection(url) as conn:
        ch = conn.channel()
        ch.queue_declare("xq")
        for i in range(n):
            ch.publish(f"m-{i}", "xq")
    print("ok")


if __name__ == "__main__":
    if sys.argv[1] == "check":
        check(sys.argv[2])
    elif sys.argv[1] == "produce":
        produce(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: test_dashi.py check URL | produce URL N")
