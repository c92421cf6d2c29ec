"""The examples in the docs are real: every TOML block parses, and every status it names exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from listener.core.spec import load_spec

ROOT = Path(__file__).parent.parent
PAGES = sorted([*(ROOT / "docs").glob("*.md"), ROOT / "README.md"])
BLOCK = re.compile(r"```toml\n(.*?)```", re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(f"{page.name}#{n}", text)
            for page in PAGES for n, text in enumerate(BLOCK.findall(page.read_text()))]


def statuses_in(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = list(value.get("statuses", [])) if isinstance(value.get("statuses"), list) else []
        return found + [s for v in value.values() for s in statuses_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in statuses_in(v)]
    return []


@pytest.mark.parametrize(("where", "text"), blocks())
def test_every_toml_example_parses_and_names_real_statuses(where: str, text: str) -> None:
    parsed = tomllib.loads(text)
    assert set(statuses_in(parsed)) <= set(load_spec().statuses), where


def test_the_payload_example_status_is_a_real_one() -> None:
    shown = re.findall(r'"status":\s*"([a-z_]+)"', (ROOT / "docs" / "webhooks.md").read_text())
    assert shown
    assert set(shown) <= set(load_spec().statuses)
