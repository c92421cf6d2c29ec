"""``listener/core`` is pure: it imports none of the edges' libraries, so it is tested without patching.

Checked in a fresh interpreter in which gevent, greenswitch, structlog, the HTTP client,
prometheus_client, socket, ssl, select and sqlite3 cannot be imported at all: every core module must
still import, and classify a real capture.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import listener

CORE = Path(listener.__file__).parent / "core"
FORBIDDEN = ("gevent", "greenswitch", "structlog", "geventhttpclient", "prometheus_client",
             "socket", "_socket", "ssl", "_ssl", "select", "sqlite3", "_sqlite3")
PROBE = """
import importlib, importlib.abc, sys
FORBIDDEN = {forbidden!r}

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"{{name}} is forbidden in listener.core")
        return None

for name in list(sys.modules):
    if name.split(".")[0] in FORBIDDEN:
        del sys.modules[name]
sys.meta_path.insert(0, Refuse())
for module in {modules!r}:
    importlib.import_module(module)
from listener.core import capture, document
from listener.core.classifier import default_classifier
events = list(capture.read_events(open({capture!r}, "rb").read()))
docs = [document.build(e, default_classifier().classify(e), "lab") for e in events if e.is_hangup_complete]
assert [d["status"] for d in docs] == ["busy", "busy"], docs
leaked = sorted(n for n in sys.modules if n.split(".")[0] in FORBIDDEN)
assert not leaked, leaked
print("pure", len({modules!r}))
"""


def core_modules() -> list[str]:
    return sorted(f"listener.core.{path.stem}" for path in CORE.glob("*.py") if path.stem != "__init__")


def probe(modules: list[str], forbidden: tuple[str, ...] = FORBIDDEN) -> subprocess.CompletedProcess[str]:
    capture = Path(__file__).parent / "data" / "fixtures" / "uas_486" / "hangup_complete.plain.txt"
    code = PROBE.format(forbidden=forbidden, modules=modules, capture=str(capture))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False, cwd=Path(listener.__file__).parent.parent)


def test_every_core_module_imports_and_classifies_with_the_edge_libraries_unimportable() -> None:
    modules = core_modules()
    assert len(modules) >= 15  # the whole core, not an empty glob
    result = probe(modules)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"pure {len(modules)}"


def test_the_configuration_is_read_without_any_edge_library() -> None:
    """``config`` once imported the ESL edge (and gevent and greenswitch with it): values only now."""
    folder = Path(listener.__file__).parent / "config"
    modules = sorted(f"listener.config.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")
    result = probe(modules)
    assert result.returncode == 0, result.stderr


def test_the_probe_catches_a_module_that_reaches_an_edge() -> None:
    """The guard can fail: an edge module, probed the same way, is refused."""
    result = probe(["listener.outbox.store"])
    assert result.returncode != 0
    assert "sqlite3 is forbidden in listener.core" in result.stderr
