"""Every bench module at least compiles on the Python CI runs (ruff checks listener and tests only;
bench/soak.py once broke on 3.11 with a quote inside an f-string unnoticed)."""

from __future__ import annotations

import py_compile
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).parent.parent / "bench").glob("*.py"))


@pytest.mark.parametrize("module", BENCH, ids=lambda p: p.name)
def test_the_bench_module_compiles(module: Path, tmp_path: Path) -> None:
    py_compile.compile(str(module), cfile=str(tmp_path / "out.pyc"), doraise=True)
