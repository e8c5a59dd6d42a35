"""The numeric-bound grammars accept exactly the numbers within the bounds. The GBNF these
rules use (literals, classes, groups, |, ?, {m,n}) reads as a regular expression once literals
are escaped and spaces dropped, so each rule is checked value by value against the bounds."""

from __future__ import annotations

import itertools
import re
from decimal import Decimal

import pytest

from services.common.errors import InvalidArgument
from services.inference.backends.numeric_ranges import integer_rule, number_rule


def _regex(gbnf: str) -> re.Pattern[str]:
    pieces = re.split(r'("(?:[^"\\]|\\.)*")', gbnf)
    text = "".join(re.escape(piece[1:-1]) if piece.startswith('"') else piece.replace(" ", "") for piece in pieces)
    return re.compile(text)


BOUNDS = [None, -1000, -101, -100, -99, -10, -1, 0, 1, 7, 9, 10, 99, 100, 101, 250, 1000]


def _cases(bounds: list[int | None]) -> list[tuple[int | None, int | None, bool, bool]]:
    """Every pair of bounds, each side inclusive or exclusive."""
    return list(itertools.product(bounds, bounds, (False, True), (False, True)))


@pytest.mark.parametrize("low, high, low_exclusive, high_exclusive", _cases(BOUNDS))
def test_integers_within_bounds_match_and_no_others(low, high, low_exclusive, high_exclusive) -> None:
    kwargs = {
        "minimum": None if low_exclusive else low,
        "exclusive_minimum": low if low_exclusive else None,
        "maximum": None if high_exclusive else high,
        "exclusive_maximum": high if high_exclusive else None,
    }

    def inside(value: int) -> bool:
        return (low is None or (value > low if low_exclusive else value >= low)) and (
            high is None or (value < high if high_exclusive else value <= high)
        )

    values = range(-1200, 1200)
    if not any(inside(value) for value in values):
        with pytest.raises(InvalidArgument):
            integer_rule(**kwargs)
        return
    pattern = _regex(integer_rule(**kwargs))
    for value in values:
        assert bool(pattern.fullmatch(str(value))) == inside(value), (kwargs, value)
    assert not pattern.fullmatch("007")


NUMBER_BOUNDS = [None, -10, -1, 0, 1, 2, 10]
SAMPLES = ["0", "0.0", "0.5", "1", "1.0", "1.25", "2", "2.000", "9.99", "10", "10.5", "11", "123.4"]


@pytest.mark.parametrize(
    "low, high, low_exclusive, high_exclusive",
    _cases(NUMBER_BOUNDS),
)
def test_decimals_within_bounds_match_and_no_others(low, high, low_exclusive, high_exclusive) -> None:
    kwargs = {
        "minimum": None if low_exclusive else low,
        "exclusive_minimum": low if low_exclusive else None,
        "maximum": None if high_exclusive else high,
        "exclusive_maximum": high if high_exclusive else None,
    }

    def inside(value: Decimal) -> bool:
        return (low is None or (value > low if low_exclusive else value >= low)) and (
            high is None or (value < high if high_exclusive else value <= high)
        )

    texts = SAMPLES + ["-" + sample for sample in SAMPLES if Decimal(sample) != 0]  # no "-0": a narrower notation
    try:
        pattern = _regex(number_rule(**kwargs))
    except InvalidArgument:
        assert not any(inside(Decimal(text)) for text in texts)
        return
    for text in texts:
        assert bool(pattern.fullmatch(text)) == inside(Decimal(text)), (kwargs, text)


def test_a_fractional_bound_on_a_number_is_refused_not_rounded() -> None:
    with pytest.raises(InvalidArgument, match="whole-number"):
        number_rule(minimum=0.5, maximum=None, exclusive_minimum=None, exclusive_maximum=None)


def test_a_fractional_bound_on_an_integer_rounds_inwards() -> None:
    pattern = _regex(integer_rule(minimum=0.5, maximum=None, exclusive_minimum=None, exclusive_maximum=2.5))
    assert [value for value in range(-5, 6) if pattern.fullmatch(str(value))] == [1, 2]
