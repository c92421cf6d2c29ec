"""Every input kept in tests/data/fuzz/ (each once crashed the ESL input path) replays cleanly.

The inputs are in the coverage-guided harness' format (tests/fuzz/esl_target.py: a byte choosing
how the stream is split into reads, then the stream); a new crash found by ``fuzz_esl.py`` is kept
here, by name, beside the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz.esl_target import one_input

KEPT = sorted((Path(__file__).parent / "data" / "fuzz").iterdir())


@pytest.mark.parametrize("path", KEPT, ids=[p.name for p in KEPT])
def test_a_kept_fuzz_input_no_longer_crashes(path: Path) -> None:
    data = path.read_bytes()
    for mode in (data[0], 100, 250):  # as found, in small reads, in data-driven reads
        one_input(bytes([mode]) + data[1:])


def test_inputs_are_kept() -> None:
    assert len(KEPT) >= 7
