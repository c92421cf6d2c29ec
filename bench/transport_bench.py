"""CPU per webhook POST: geventhttpclient's HTTPClient (the transport before) against ours.

    .venv/bin/python -m bench.transport_bench old|new [N]

Sends N (default 20,000) signed POSTs of a 9 KB body from 16 greenlets (``max_concurrency`` 16)
to ``bench/receiver.py`` in its own process, and prints requests/s and the CPU time (user + sys) of
this process per request. ``new`` is ``listener.webhooks.transport.Transport``; ``old`` is the
former ``Transport.send``: ``HTTPClient.request`` (its pool, a select() per checkout, Headers
objects), ``read``, ``release``, under the same whole-request ``gevent.Timeout``. Requests are
signed before the clock starts, so only the transport is measured. Run each mode a few times, on
an otherwise idle machine; compare the CPU figures, not requests/s.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402 - after monkey-patching, as the daemon does
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
from geventhttpclient import HTTPClient  # noqa: E402

from listener.config.settings import WebhookConfig  # noqa: E402
from listener.core.retry import RetrySchedule  # noqa: E402
from listener.core.signing import (  # noqa: E402
    Delivered,
    DeliveryOutcome,
    Request,
    build_request,
    outcome_of_response,
)
from listener.webhooks.transport import Transport  # noqa: E402

CONCURRENCY = 16
BODY = '{"id":"x","pad":"' + "x" * 8980 + '"}'  # 9,000 bytes


class OldTransport:
    """The former Transport.send's success path, on geventhttpclient's HTTPClient."""

    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.client = HTTPClient.from_url(
            config.url, concurrency=config.max_concurrency, connection_timeout=config.connect_timeout,
            network_timeout=config.timeout, headers={"connection": "keep-alive"})

    def send(self, request: Request, clock: Callable[[], float]) -> DeliveryOutcome:
        with gevent.Timeout(self.config.timeout + self.config.connect_timeout):
            response = self.client.request("POST", request.target, body=request.body,
                                           headers=dict(request.headers))
            try:
                response.read()
            finally:
                response.release()
        retry_after = response.get("retry-after")
        if isinstance(retry_after, list):
            retry_after = retry_after[0] if retry_after else None
        return outcome_of_response(response.status_code, retry_after, clock())

    def close(self) -> None:
        self.client.close()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(mode: str, n: int, url: str) -> str:
    config = WebhookConfig(name="bench", url=url, keys=(b"k" * 24,), max_concurrency=CONCURRENCY,
                           retry=RetrySchedule(delays=(5.0,)))
    transport = OldTransport(config) if mode == "old" else Transport(config)
    requests = [build_request(url, config.keys, f"evt-{i}", BODY, int(time.time())) for i in range(64)]
    failed: list[DeliveryOutcome] = []

    def one(i: int) -> None:
        outcome = transport.send(requests[i % len(requests)], time.time)
        if not isinstance(outcome, Delivered):
            failed.append(outcome)

    pool = gevent.pool.Pool(CONCURRENCY)
    started, cpu = time.monotonic(), cpu_s()
    for i in range(n):
        pool.spawn(one, i)
    pool.join()
    elapsed, cpu = time.monotonic() - started, cpu_s() - cpu
    transport.close()
    if failed:
        raise SystemExit(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return f"{mode}: {n / elapsed:,.0f} req/s, cpu {cpu / n * 1e6:.1f} us/req (user+sys)"


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "new"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
    if mode not in ("old", "new"):
        raise SystemExit("usage: python -m bench.transport_bench old|new [N]")
    with tempfile.TemporaryDirectory() as tmp:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", str(Path(tmp) / "received")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
        assert receiver.stdin is not None
        assert receiver.stdout is not None
        port = json.loads(receiver.stdout.readline())["port"]
        receiver.stdin.write("listen\n")
        receiver.stdin.flush()
        receiver.stdout.readline()
        try:
            print(run(mode, n, f"http://127.0.0.1:{port}/hook"))
        finally:
            receiver.stdin.write("quit\n")
            receiver.stdin.flush()
            receiver.wait()


if __name__ == "__main__":
    main()
