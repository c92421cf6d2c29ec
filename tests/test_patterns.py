"""Pattern.matches, written as one flat method for speed, means what its definition says."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from listener.core.patterns import Pattern, compile_pattern

LISTS = {"apps": ["read", "play_*", "re:ivr(_.*)?"]}
PLAIN = st.one_of(
    st.booleans(),
    st.integers(100, 699),
    st.sampled_from(["read", "@apps", "4??", "re:[a-c]+", "local_stream://*", "", "x"]),
)
PATTERNS = st.one_of(
    PLAIN,
    st.lists(PLAIN.filter(lambda p: not isinstance(p, bool)), min_size=1, max_size=3),
    PLAIN.map(lambda p: {"not": p}),
)
VALUES = st.one_of(
    st.none(), st.sampled_from(["", "read", "play_x", "ivr", "ivr_menu", "486", "abc", "x", "local_stream://m"]),
    st.text(max_size=8),
)


def _reference(pattern: Pattern, value: str | None) -> bool:
    """The definition: absent/empty -> if_absent; else present, exact or a full regex match; negated."""
    if not value:
        hit = pattern.if_absent
    else:
        hit = pattern.if_present or value in pattern.exact or any(r.fullmatch(value) for r in pattern.regexes)
    return hit != pattern.negate


@settings(max_examples=1000)
@given(PATTERNS, VALUES)
def test_matches_is_the_definition(raw: object, value: str | None) -> None:
    pattern = compile_pattern(raw, LISTS)
    assert pattern.matches(value) is _reference(pattern, value)
