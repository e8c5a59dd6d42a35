"""The numeric-bound grammars accept exactly the numbers within the bounds. The GBNF these
rules use (literals, classes, groups, |, ?, {m,n}) reads as a regular expression once literals
are escaped and spaces dropped, so each rule is checked value by value against the bounds."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Bounds:
    low: int | None
    high: int | None
    low_exclusive: bool
    high_exclusive: bool

    def keywords(self) -> dict[str, int | None]:
        """As the rules take them: one keyword a side, inclusive or exclusive."""
        return {
            "minimum": None if self.low_exclusive else self.low,
            "exclusive_minimum": self.low if self.low_exclusive else None,
            "maximum": None if self.high_exclusive else self.high,
            "exclusive_maximum": self.high if self.high_exclusive else None,
        }

    def inside(self, value: int | Decimal) -> bool:
        low, high = self.low, self.high
        return (low is None or (value > low if self.low_exclusive else value >= low)) and (
            high is None or (value < high if self.high_exclusive else value <= high)
        )


@pytest.mark.parametrize("case", _cases(BOUNDS))
def test_integers_within_bounds_match_and_no_others(case: tuple[int | None, int | None, bool, bool]) -> None:
    bounds = Bounds(*case)
    values = range(-1200, 1200)
    if not any(bounds.inside(value) for value in values):
        with pytest.raises(InvalidArgument):
            integer_rule(**bounds.keywords())
        return
    pattern = _regex(integer_rule(**bounds.keywords()))
    for value in values:
        assert bool(pattern.fullmatch(str(value))) == bounds.inside(value), (bounds, value)
    assert not pattern.fullmatch("007")


NUMBER_BOUNDS = [None, -10, -1, 0, 1, 2, 10]
SAMPLES = ["0", "0.0", "0.5", "1", "1.0", "1.25", "2", "2.000", "9.99", "10", "10.5", "11", "123.4"]


@pytest.mark.parametrize("case", _cases(NUMBER_BOUNDS))
def test_decimals_within_bounds_match_and_no_others(case: tuple[int | None, int | None, bool, bool]) -> None:
    bounds = Bounds(*case)
    texts = SAMPLES + ["-" + sample for sample in SAMPLES if Decimal(sample) != 0]  # no "-0": a narrower notation
    try:
        pattern = _regex(number_rule(**bounds.keywords()))
    except InvalidArgument:
        assert not any(bounds.inside(Decimal(text)) for text in texts)
        return
    for text in texts:
        assert bool(pattern.fullmatch(text)) == bounds.inside(Decimal(text)), (bounds, text)


def test_a_fractional_bound_on_a_number_is_refused_not_rounded() -> None:
    with pytest.raises(InvalidArgument, match="whole-number"):
        number_rule(minimum=0.5, maximum=None, exclusive_minimum=None, exclusive_maximum=None)


def test_a_fractional_bound_on_an_integer_rounds_inwards() -> None:
    pattern = _regex(integer_rule(minimum=0.5, maximum=None, exclusive_minimum=None, exclusive_maximum=2.5))
    assert [value for value in range(-5, 6) if pattern.fullmatch(str(value))] == [1, 2]
