"""Coverage-guided fuzzing of the ESL input path with atheris (not part of the test suite).

usage (see README.md here):
    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_esl.py CORPUS_DIR -runs=100000 -max_len=20000 -timeout=5
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

with atheris.instrument_imports(include=["listener"]):
    from tests.fuzz.esl_target import one_input


def seed(corpus: Path) -> None:
    """An empty corpus starts from every real capture (each with a read-splitting byte before it)."""
    if corpus.is_dir() and not any(corpus.iterdir()):
        for n, capture in enumerate(sorted((ROOT / "tests/data/fixtures").glob("*/*.txt"))):
            (corpus / f"seed-{n:03d}").write_bytes(bytes([n * 37 % 256]) + capture.read_bytes()[:20000])


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        if not arg.startswith("-"):
            seed(Path(arg))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
