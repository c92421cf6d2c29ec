"""config/prometheus/alerts.yml: promtool accepts it and its unit tests pass; every alert is labelled,
annotated, has a runbook in docs/operations.md, and selects only metrics the daemon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml
from exported import ROOT, every_metric, metric_names_in, sample_names

RULES = ROOT / "config" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "config" / "prometheus" / "alerts.test.yml"
GUIDE = ROOT / "docs" / "operations.md"
RUNBOOKS = "https://hangup-listener.invalid/docs/operations.md#"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (.ci/run installs it from Debian's prometheus package)")


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_headings() -> list[str]:
    guide = GUIDE.read_text()
    runbooks = guide[guide.index("### Runbooks"):]
    runbooks = runbooks[:runbooks.index("\n## ")]
    return re.findall(r"^#### (\S+)$", runbooks, re.MULTILINE)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=RULES.parent, capture_output=True, text=True, timeout=120,
                          check=False)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_rules_pass_their_unit_tests() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_a_description_and_a_runbook() -> None:
    for rule in alerts():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        assert annotations["runbook_url"] == RUNBOOKS + anchor(rule["alert"])


def test_each_alert_has_one_runbook_entry_in_the_operations_guide_and_each_entry_an_alert() -> None:
    headings = runbook_headings()
    assert sorted(headings) == sorted(rule["alert"] for rule in alerts())
    anchors = [anchor(h) for h in re.findall(r"^#+ (.+)$", GUIDE.read_text(), re.MULTILINE)]
    for heading in headings:
        assert anchors.count(anchor(heading)) == 1, heading  # the link lands on this entry only


def test_the_alerts_select_only_metrics_the_daemon_exports() -> None:
    exported = sample_names(every_metric()) | {"up"}  # up: Prometheus's own, per scrape target
    for rule in alerts():
        names = metric_names_in(rule["expr"])
        assert names, rule["alert"]
        assert names <= exported, (rule["alert"], names - exported)


def test_metric_names_are_told_from_functions_labels_and_keywords() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="y(z)"}[5m]))) / on(i) b offset 5m '
            'and 1e3 > bool c:d and $x and sum(rate(e[$__rate_interval])) by (node)')
    assert metric_names_in(expr) == {"a_bucket", "b", "c:d", "e"}
