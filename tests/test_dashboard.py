"""config/grafana/hangup-listener.json: every query selects metrics the daemon exports, through the
dashboard's data source variable, and (with promtool) is valid PromQL."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from exported import ROOT, every_metric, families, metric_names_in, sample_names

DASHBOARD = ROOT / "config" / "grafana" / "hangup-listener.json"
PROMTOOL = shutil.which("promtool")


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel's targets and every query variable."""
    found = [(panel["title"], target["expr"]) for panel in panels() for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.*), *\w+\)", variable["definition"])
            assert selector, variable["name"]
            found.append((f"${variable['name']}", selector.group(1)))
    return found


def test_every_query_selects_only_metrics_the_daemon_exports() -> None:
    exported = sample_names(every_metric())
    for title, expr in queries():
        names = metric_names_in(expr)
        assert names, title
        assert names <= exported, (title, names - exported)


def test_every_metric_of_the_daemon_is_on_the_dashboard() -> None:
    shown = {name for _, expr in queries() for name in metric_names_in(expr)}
    shown |= {name.removesuffix("_bucket") for name in shown}
    ours = {name for name in families(every_metric()) if name.startswith("hangup_listener_")}
    assert ours - shown == set()


def test_each_panel_asks_the_data_source_variable_and_has_a_unique_id() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert {t["datasource"]["uid"] for t in panel["targets"]} == {"${datasource}"}, panel["title"]


def test_panels_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in panels():
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        cells = {(x, y) for x in range(box["x"], box["x"] + box["w"])
                 for y in range(box["y"], box["y"] + box["h"])}
        assert not cells & taken, panel["title"]
        taken |= cells


@pytest.mark.skipif(PROMTOOL is None,
                    reason="promtool is not on PATH (.ci/run installs it from Debian's prometheus package)")
def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    concrete = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*"}  # what Grafana puts in
    variable = re.compile("|".join(map(re.escape, concrete)))
    rules = [{"record": f"dashboard:query_{n}", "expr": variable.sub(lambda m: concrete[m.group()], expr)}
             for n, (_, expr) in enumerate(queries())]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert PROMTOOL is not None
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
