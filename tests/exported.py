"""Every metric the daemon exports: a ``Metrics`` with each one registered and holding a sample.

The dashboard, the alert rules and the docs' metrics table are checked against these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families

from listener.config.settings import ESLSettings, Node
from listener.core.signing import Delivered
from listener.esl.source import ESLSource, Tally
from listener.service.metrics import Metrics
from listener.webhooks.endpoint import Attempted

ROOT = Path(__file__).parent.parent


@dataclass(frozen=True)
class Stats:
    endpoint: str
    pending: int
    dead: int
    oldest_pending_age: float | None


class _NullLog:
    def bind(self, **_: object) -> _NullLog:
        return self


def source(name: str, state: str, connections: int) -> ESLSource:
    src = ESLSource(Node(name), ESLSettings(), lambda frames: Tally(), _NullLog())
    src.state, src.connections = state, connections
    return src


def every_metric() -> Metrics:
    """A ``Metrics`` as the daemon with webhooks has it, after a call, a delivery and a CDR recovery."""
    metrics = Metrics()
    node = source("pbx1", "connected", 1)
    node.stats.events_received.update({"CHANNEL_HANGUP_COMPLETE": 1})
    metrics.watch_sources([node])
    metrics.watch_ready(lambda: True)
    metrics.watch_outbox(lambda: [Stats("crm", 0, 0, None)])
    metrics.watch_calls(lambda: (0, 0))
    metrics.watch_circuits(lambda: {"crm": SimpleNamespace(circuit=SimpleNamespace(open=False))})
    metrics.call_classified("pbx1", {"status": "answered", "bye_reason": "NORMAL_CLEARING"})
    metrics.call_completed("pbx1", {"status": "answered", "complete": True})
    metrics.delivery_attempted(Attempted("crm", "m1", 1, Delivered(200), 0.1))
    metrics.cdr_recovered("pbx1", 1)
    return metrics


def families(metrics: Metrics) -> dict[str, str]:
    """Each metric family's name as exposed (``_total`` on counters) -> its type."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        if family.name.endswith("_created"):  # a counter's or histogram's creation time, not a family
            continue
        suffix = "_total" if family.type == "counter" else ""
        found[family.name + suffix] = family.type
    return found


def sample_names(metrics: Metrics) -> frozenset[str]:
    """Every name a query can use: each sample's (``_bucket``, ``_sum``, ``_count``, ``_total`` ...)."""
    return frozenset(sample.name for family in text_string_to_metric_families(metrics.render().decode())
                     for sample in family.samples)


_DROPPED = (
    (re.compile(r'"(?:[^"\\]|\\.)*"'), '""'),  # strings
    (re.compile(r"\{[^}]*\}"), ""),  # label matchers
    (re.compile(r"\[[^\]]*\]"), ""),  # ranges and subqueries
    (re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"), ""),  # label lists
    (re.compile(r"\$(?:\{[^}]*\}|\w+)"), ""),  # Grafana variables
)
_NAME = re.compile(r"(?<![\w.:])[A-Za-z_:][\w:]*")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                       "group_left", "group_right", "inf", "nan", "Inf", "NaN"})


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    for pattern, replacement in _DROPPED:
        expr = pattern.sub(replacement, expr)
    return {m.group() for m in _NAME.finditer(expr)
            if m.group() not in _KEYWORDS and not expr[m.end():].lstrip().startswith("(")}
