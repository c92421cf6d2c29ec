"""Measure outbox put throughput (sequential, concurrent callers) and deliveries/s to a local receiver.

usage: PYTHONPATH=.:tests python bench/webhook_bench.py [N]
"""

import logging
import sys
import tempfile
import time
from pathlib import Path

import gevent
import gevent.queue
import structlog
from webhook_receiver import Receiver

from listener.config.settings import OutboxConfig, WebhookConfig
from listener.config.webhooks import decode_secret
from listener.core.retry import RetrySchedule
from listener.outbox.writer import OutboxWriter
from listener.webhooks.endpoint import Attempted
from listener.webhooks.sink import WebhookSink

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def doc(n: int) -> dict[str, object]:
    return {"id": f"call-{n}", "status": "answered", "leg": "a", "direction": "inbound",
            "bye_reason": "callee", "sip_code": 200, "duration_s": 42,
            "caller": "+33100000000", "callee": "+33100000001"}


def bench_put(tmp: Path, synchronous: str, hook: WebhookConfig) -> None:
    writer = OutboxWriter.open(OutboxConfig(tmp / f"put-{synchronous}.sqlite3", synchronous), [hook])
    started = time.perf_counter()
    for n in range(N // 4):
        writer.put([doc(n)])
    sequential = (N // 4) / (time.perf_counter() - started)
    started = time.perf_counter()
    greenlets = [gevent.spawn(writer.put, [doc(n)]) for n in range(N, 2 * N)]
    gevent.joinall(greenlets, raise_error=True)
    concurrent = N / (time.perf_counter() - started)
    lag = []
    def ticker() -> None:
        while True:
            t = time.perf_counter()
            gevent.sleep(0.001)
            lag.append(time.perf_counter() - t - 0.001)
    tick = gevent.spawn(ticker)
    gevent.joinall([gevent.spawn(writer.put, [doc(n)]) for n in range(2 * N, 3 * N)], raise_error=True)
    tick.kill()
    writer.close()
    print(f"put synchronous={synchronous}: sequential {sequential:,.0f} docs/s (one commit each), "
          f"{N} concurrent callers {concurrent:,.0f} docs/s (group commit); "
          f"loop lag max {max(lag) * 1000:.1f} ms")


class Delivered:
    """The sink's metrics: every delivered attempt put on a queue, to wait for the last one."""

    def __init__(self) -> None:
        self.queue: gevent.queue.Queue[Attempted] = gevent.queue.Queue()

    def delivery_attempted(self, attempt: Attempted) -> None:
        if attempt.kind == "delivered":
            self.queue.put(attempt)


def bench_delivery(tmp: Path, receiver: Receiver, hook: WebhookConfig) -> None:
    writer = OutboxWriter.open(OutboxConfig(tmp / "deliver.sqlite3", "normal"), [hook])
    writer.put([doc(n) for n in range(N)])
    done = Delivered()
    sink = WebhookSink(writer, [hook], metrics=done)
    started = time.perf_counter()
    sink.start()
    for _ in range(N):
        done.queue.get(timeout=60)
    elapsed = time.perf_counter() - started
    sink.stop(5)
    writer.close()
    print(f"delivery: {N} signed POSTs to the local receiver "
          f"(concurrency {hook.max_concurrency}, keep-alive): {N / elapsed:,.0f} deliveries/s")


def main() -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    receiver = Receiver()
    hook = WebhookConfig(name="bench", url=receiver.url(), keys=(decode_secret(SECRET) or b"",),
                         max_concurrency=8, retry=RetrySchedule())
    with tempfile.TemporaryDirectory() as tmp:
        for synchronous in ("full", "normal"):
            bench_put(Path(tmp), synchronous, hook)
        bench_delivery(Path(tmp), receiver, hook)
    receiver.close()


if __name__ == "__main__":
    main()
