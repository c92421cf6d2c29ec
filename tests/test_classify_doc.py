"""docs/classification.md is generated from the rule data and must match it."""

from __future__ import annotations

from listener.core.classifier import default_classifier
from listener.core.ruledoc import DOC_PATH, main, render


def test_committed_doc_is_the_rendered_one() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render(), "run: python -m listener.core.ruledoc"


def test_check_mode_reports_the_doc_current() -> None:
    assert main(["--check"]) == 0


def test_doc_shows_every_rule_and_its_reasoning() -> None:
    text = render()
    for rule in default_classifier().rules:
        assert f"`{rule.id}`" in text
        assert rule.why.split(":")[0] in text
