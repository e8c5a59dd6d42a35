"""Exact GBNF for numeric bounds, which llama-cpp-python's JSON-schema converter ignores.

Integers in [low, high], either side open, as digit strings: at each length, the numbers
between the bounds' digits (`_between`). Decimals between integer bounds: the integer part
strictly inside, or on a bound with a fraction that keeps it inside. Negative values are "-"
and the magnitude's range. Integers have at most 16 digits, as in the converter's own rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

from services.common.errors import InvalidArgument

MAX_DIGITS = 16
_LARGEST = 10**MAX_DIGITS - 1
_ANY_FRACTION = '"." [0-9]{1,16}'
_NONZERO_FRACTION = '"." [0-9]{0,8} [1-9] [0-9]{0,7}'  # a fraction above zero
_ZERO_FRACTION = '("." "0"{1,16})?'


def integer_rule(
    minimum: float | None, maximum: float | None, exclusive_minimum: float | None, exclusive_maximum: float | None
) -> str:
    """A GBNF expression for the integers within the bounds; InvalidArgument if none are."""
    low = _tightest(
        [math.ceil(minimum) if minimum is not None else None]
        + [math.floor(exclusive_minimum) + 1 if exclusive_minimum is not None else None],
        max,
    )
    high = _tightest(
        [math.floor(maximum) if maximum is not None else None]
        + [math.ceil(exclusive_maximum) - 1 if exclusive_maximum is not None else None],
        min,
    )
    return _nonempty(_signed(low, high), low, high)


def number_rule(
    minimum: float | None, maximum: float | None, exclusive_minimum: float | None, exclusive_maximum: float | None
) -> str:
    """A GBNF expression for the decimals within the bounds, which must be whole numbers."""
    bounds = [minimum, maximum, exclusive_minimum, exclusive_maximum]
    if any(bound is not None and bound != int(bound) for bound in bounds):
        raise InvalidArgument("Only whole-number bounds are enforced on type 'number' (e.g. minimum: 0).")
    low, low_exclusive = _bound(minimum, exclusive_minimum, max)
    high, high_exclusive = _bound(maximum, exclusive_maximum, min)
    parts = []
    if high is None or high > 0 or (high == 0 and not high_exclusive):
        if low is None or low < 0:
            parts.append(_magnitude(0, False, high, high_exclusive))
        else:
            parts.append(_magnitude(low, low_exclusive, high, high_exclusive))
    if low is None or low < 0:  # x = -y with y > 0
        y_low, y_low_exclusive = (-high, high_exclusive) if high is not None and high < 0 else (0, True)
        y_high, y_high_exclusive = (-low, low_exclusive) if low is not None else (None, False)
        negative = _magnitude(y_low, y_low_exclusive, y_high, y_high_exclusive)
        parts.append(f'"-" {negative}' if negative else None)
    return _nonempty(_alternatives(parts), low, high)


def _bound(
    inclusive: float | None, exclusive: float | None, tighter: Callable[[Iterable[int]], int]
) -> tuple[int | None, bool]:
    pairs = ((inclusive, False), (exclusive, True))
    candidates = [(int(value), is_exclusive) for value, is_exclusive in pairs if value is not None]
    if not candidates:
        return None, False
    value = tighter(value for value, _ in candidates)
    return value, any(is_exclusive for bound, is_exclusive in candidates if bound == value)


def _tightest(values: list[int | None], tighter: Callable[[Iterable[int]], int]) -> int | None:
    present = [value for value in values if value is not None]
    return tighter(present) if present else None


def _nonempty(rule: str | None, low: int | None, high: int | None) -> str:
    if not rule:
        raise InvalidArgument(f"No value lies within the bounds (from {low} to {high}).")
    return rule


def _signed(low: int | None, high: int | None) -> str | None:
    """Integers in [low, high] (None: open)."""
    low = None if low is not None and low < -_LARGEST else low
    high = None if high is not None and high > _LARGEST else high
    parts = []
    if high is None or high >= 0:
        parts.append(_natural(max(low, 0) if low is not None else 0, high))
    if low is None or low < 0:
        magnitude = _natural(max(1, -high) if high is not None else 1, -low if low is not None else None)
        parts.append(f'"-" {magnitude}' if magnitude else None)
    return _alternatives(parts)


def _natural(low: int, high: int | None) -> str | None:
    """Non-negative integers in [low, high] without leading zeros (high None: up to 16 digits)."""
    if low > _LARGEST or (high is not None and low > high):
        return None
    low_digits = len(str(low))
    high_digits = len(str(high)) if high is not None else MAX_DIGITS
    parts = []
    for length in range(low_digits, high_digits + 1):
        if high is None and length > low_digits:  # every longer number: one rule for all lengths
            parts.append(f"[1-9] [0-9]{{{length - 1},{MAX_DIGITS - 1}}}")
            break
        first = str(low) if length == low_digits else "1" + "0" * (length - 1)
        last = str(high) if high is not None and length == high_digits else "9" * length
        if int(first) <= int(last):
            parts.append(_between(first, last))
    return _alternatives(parts)


def _between(first: str, last: str) -> str:
    """Digit strings of one length from `first` to `last`, leading zeros and all."""
    if not first:
        return ""
    if first == last:
        return f'"{first}"'
    if set(first) == {"0"} and set(last) == {"9"}:
        return _digits(len(first))
    if first[0] == last[0]:
        return f'"{first[0]}" {_between(first[1:], last[1:])}'
    rest = len(first) - 1
    parts = [_join(f'"{first[0]}"', _between(first[1:], "9" * rest))]
    low_digit, high_digit = int(first[0]) + 1, int(last[0]) - 1
    if low_digit <= high_digit:
        digit = f'"{low_digit}"' if low_digit == high_digit else f"[{low_digit}-{high_digit}]"
        parts.append(_join(digit, _digits(rest)))
    parts.append(_join(f'"{last[0]}"', _between("0" * rest, last[1:])))
    return _alternatives(parts) or ""


def _magnitude(low: int, low_exclusive: bool, high: int | None, high_exclusive: bool) -> str | None:
    """Decimals y >= 0 within whole-number bounds, as integer part and fraction."""
    inner = _natural(low + 1, None if high is None else high - 1)  # whole part strictly inside
    parts = [_join(inner, f"({_ANY_FRACTION})?") if inner else None]
    if high is None or low < high:
        parts.append(f'"{low}" ' + (_NONZERO_FRACTION if low_exclusive else f"({_ANY_FRACTION})?"))
    elif low == high and not low_exclusive and not high_exclusive:
        parts.append(f'"{low}" {_ZERO_FRACTION}')
    if high is not None and high > low and not high_exclusive:
        parts.append(f'"{high}" {_ZERO_FRACTION}')
    return _alternatives(parts)


def _digits(count: int) -> str:
    return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


def _join(*items: str) -> str:
    return " ".join(item for item in items if item)


def _alternatives(parts: Sequence[str | None]) -> str | None:
    present = [part for part in parts if part]
    if not present:
        return None
    return present[0] if len(present) == 1 else "(" + " | ".join(present) + ")"
