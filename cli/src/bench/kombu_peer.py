# Kombu peer for `dashi bench --compare`: the same workload (P producer
# threads, C consumer threads, N messages of SIZE bytes with the send time in
# the first 8 bytes, acks) through Kombu on URL. Prints one JSON object.
import json
import os
import socket
import sys
import threading
import time

from kombu import Connection, Consumer, Exchange, Producer, Queue


def main():
    url = sys.argv[1]
    n, size, producers, consumers, priorities, phased = (int(x) for x in sys.argv[2:8])
    t0 = time.perf_counter_ns()

    def now():
        return time.perf_counter_ns() - t0

    name = "kombu-bench-%d-%d" % (os.getpid(), time.time_ns())
    exchange = Exchange(name, type="direct")
    queue = Queue(
        name,
        exchange,
        routing_key=name,
        max_priority=(priorities - 1) if priorities > 1 else None,
    )
    with Connection(url) as conn:
        queue(conn.channel()).declare()

    lock = threading.Lock()
    state = {"consumed": 0, "done_at": 0}
    latencies = []
    errors = []
    pad = b"\xa5" * (size - 8)

    def producer(count):
        try:
            with Connection(url) as conn:
                p = Producer(conn.channel(), exchange=exchange, routing_key=name)
                for k in range(count):
                    p.publish(
                        now().to_bytes(8, "little") + pad,
                        content_type="application/octet-stream",
                        content_encoding="binary",
                        priority=(k % priorities) if priorities > 1 else 0,
                    )
        except Exception as e:  # reported, not swallowed
            errors.append("producer: %r" % (e,))

    def consumer():
        local = []

        def on_message(message):
            sent = int.from_bytes(message.body[:8], "little")
            local.append(max(1, (now() - sent) // 1000))
            message.ack()
            with lock:
                state["consumed"] += 1
                if state["consumed"] == n:
                    state["done_at"] = now()

        try:
            with Connection(url) as conn:
                with Consumer(conn.channel(), queues=[queue], on_message=on_message,
                              prefetch_count=1000):
                    while True:
                        with lock:
                            if state["consumed"] >= n or errors:
                                break
                        try:
                            conn.drain_events(timeout=0.1)
                        except socket.timeout:
                            pass
        except Exception as e:
            errors.append("consumer: %r" % (e,))
        with lock:
            latencies.extend(local)

    readers = [threading.Thread(target=consumer) for _ in range(consumers)]
    writers = [
        threading.Thread(target=producer, args=(n // producers + (1 if i < n % producers else 0),))
        for i in range(producers)
    ]
    published = None
    if phased:
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        published = now() / 1e9
        writers = []
    threads = readers + writers
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        print(json.dumps({"error": errors[0]}))
        sys.exit(1)
    latencies.sort()

    def q(p):
        return float(latencies[min(len(latencies) - 1, int(p * len(latencies)))])

    elapsed = state["done_at"] / 1e9
    print(json.dumps({
        "transport": "kombu %s" % url,
        "messages": n,
        "size": size,
        "producers": producers,
        "consumers": consumers,
        "elapsed_s": elapsed,
        "publish_s": published,
        "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                       "max": float(latencies[-1])},
        "kombu_version": __import__("kombu").__version__,
    }))


main()
