"""Closed choices and their protobuf enums, mapped by name in one place: a member NAME travels as
the enum's PREFIX_NAME value (AIP-126: `FinishReason.TOOL_CALLS` is `FINISH_REASON_TOOL_CALLS`),
and 0 is always `..._UNSPECIFIED`."""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from typing import Any, ClassVar, Self

from services.common.errors import InvalidArgument


class ProtoEnum(StrEnum):
    """A str enum with its generated protobuf enum in `__pb__`."""

    __pb__: ClassVar[Any]

    def to_pb(self) -> Any:  # the generated enum's ValueType
        return type(self).__pb__.Value(f"{_prefix(type(self).__pb__)}{self.name}")

    @classmethod
    def parse_pb(cls, value: int) -> Self | None:
        """The member a wire value names; None for UNSPECIFIED or a value this build does not know."""
        try:
            name = cls.__pb__.Name(value)
        except ValueError:
            return None
        return cls.__members__.get(name.removeprefix(_prefix(cls.__pb__)))

    @classmethod
    def from_pb(cls, value: int) -> Self:
        """The member a wire value names; anything else is the caller's error."""
        member = cls.parse_pb(value)
        if member is None:
            raise InvalidArgument(f"A {_words(cls.__name__)} must be one of: {', '.join(m.value for m in cls)}.")
        return member


@functools.cache  # once per enum: to_pb runs for every message and chunk
def _prefix(pb_enum: Any) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", pb_enum.DESCRIPTOR.name).upper() + "_"


def _words(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
