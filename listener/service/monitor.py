"""Reports of a blocked event loop, as ``loop.blocked`` log lines.

gevent's monitor thread (``GEVENT_MONITOR_THREAD_ENABLE=true``; threshold
``GEVENT_MAX_BLOCKING_TIME`` seconds, 0.1 by default) notices when one greenlet ran without
yielding for longer than the threshold and publishes ``EventLoopBlocked``. Each report becomes one
error line naming the blocked greenlet and where it was. The report is handed to the hub to log:
the monitor runs on its own thread, and the log stream is the hub's.
"""

from __future__ import annotations

from typing import Any

import gevent
from gevent.events import EventLoopBlocked, subscribers


def _blocked_stack(info: list[str]) -> str:
    """The innermost frames of the blocked thread's stack, from gevent's report."""
    for index, line in enumerate(info):
        if line.startswith("Blocked Stack") and index + 1 < len(info):
            return info[index + 1][-2000:]
    return ""


def watch(log: Any) -> bool:
    """Log every blocked-loop report from now on; False when gevent's monitor thread is off."""
    if not gevent.config.monitor_thread:
        return False
    loop = gevent.get_hub().loop

    def report(greenlet: str, threshold: float, stack: str) -> None:
        log.error("loop.blocked", greenlet=greenlet, threshold_s=threshold, stack=stack)

    def on_event(event: object) -> None:  # runs on the monitor thread
        if isinstance(event, EventLoopBlocked):
            loop.run_callback_threadsafe(
                report, repr(event.greenlet), float(event.blocking_time), _blocked_stack(list(event.info)))

    subscribers.append(on_event)
    log.info("loop.monitored", threshold_s=float(gevent.config.max_blocking_time))
    return True
