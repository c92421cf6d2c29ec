"""The daemon as ``hangup-listener run`` runs it, plus a sampler greenlet for bench/soak.py.

Every ``SOAK_EVERY`` seconds (default 5) one JSON line with the number of live greenlets and of
objects tracked by the garbage collector is appended to the file named by ``SOAK_SAMPLES``. With
``SOAK_TRACEMALLOC=1`` the line also names the ten source lines whose allocations grew most since
the previous sample (slow: for hunting a leak the figures show).

usage: SOAK_SAMPLES=path python bench/soak_daemon.py run --config listener.toml
"""

from gevent import monkey

monkey.patch_all()

import gc  # noqa: E402 - after monkey-patching, as the daemon does
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402

from listener.cli import main  # noqa: E402


def sample(path: str, every: float, trace: bool) -> None:
    previous = tracemalloc.take_snapshot() if trace else None
    while True:
        gevent.sleep(every)
        objects = gc.get_objects()
        greenlets = sum(1 for o in objects if isinstance(o, greenlet.greenlet))
        row: dict[str, object] = {"t": time.time(), "greenlets": greenlets, "gc_objects": len(objects)}
        del objects
        if previous is not None:
            snapshot = tracemalloc.take_snapshot()
            row["grew"] = [str(d) for d in snapshot.compare_to(previous, "lineno")[:10]]
            previous = snapshot
        with open(path, "a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    trace = os.environ.get("SOAK_TRACEMALLOC") == "1"
    if trace:
        tracemalloc.start()
    gevent.spawn(sample, os.environ["SOAK_SAMPLES"], float(os.environ.get("SOAK_EVERY", "5")), trace)
    sys.exit(main())
