"""The sampling parameters, declared once: their names, types and bounds.

Inference's `SamplingParams` validates against these bounds, the gateway's request models
and the registry's per-model defaults take their fields from here, and a test checks the
proto's `SamplingParams` against the same names (tests/services/common/test_sampling.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field

INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 16
MAX_STOP_SEQUENCE_CHARS = 256  # each is matched against the tail of every token: keep that cheap


@dataclass(frozen=True)
class Bound:
    """A numeric sampling parameter: its type and its range."""

    kind: type
    low: float
    high: float = math.inf
    low_inclusive: bool = True

    def field(self) -> Any:
        """A pydantic Field with this range, for request and config models (None: unset)."""
        high = INT32_MAX if self.kind is int and self.high == math.inf else self.high
        return Field(
            None,
            ge=self.low if self.low_inclusive else None,
            gt=None if self.low_inclusive else self.low,
            le=None if high == math.inf else high,
        )

    def describe(self) -> str:
        high = "inf)" if self.high == math.inf else f"{self.high}]"
        return f"{'[' if self.low_inclusive else '('}{self.low}, {high}"


# name -> bound, in the proto's field order; `stop` (a list) and `seed` (any int64) aside.
BOUNDS: dict[str, Bound] = {
    "temperature": Bound(float, 0.0, 2.0),
    "top_p": Bound(float, 0.0, 1.0, low_inclusive=False),
    "top_k": Bound(int, 0),
    "min_p": Bound(float, 0.0, 1.0),
    "max_tokens": Bound(int, 1),
    "presence_penalty": Bound(float, -2.0, 2.0),
    "frequency_penalty": Bound(float, -2.0, 2.0),
    "repeat_penalty": Bound(float, 0.0, low_inclusive=False),
}
# Every sampling parameter, in the proto's field order.
NAMES = ("temperature", "top_p", "top_k", "min_p", "max_tokens", "stop", "seed") + (
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
)


def seed_field() -> Any:
    return Field(None, ge=INT64_MIN, le=INT64_MAX)
