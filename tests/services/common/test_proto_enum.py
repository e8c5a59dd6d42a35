"""Every closed choice maps to its protobuf enum by name, both ways, and 0 is never a member."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.common.proto_enum import ProtoEnum
from services.embeddings.domain import Scorer
from services.inference.api import FinishReason, ModelState, ResponseFormatKind, Role, ToolChoiceMode, WaitState
from services.scheduler.domain import CallbackState, JobState, JobType
from services.trainer.domain import TrainingState

ENUMS = [
    Role,
    FinishReason,
    ModelState,
    WaitState,
    ResponseFormatKind,
    ToolChoiceMode,
    JobType,
    JobState,
    CallbackState,
    TrainingState,
    Scorer,
]


def test_every_proto_enum_is_listed_here() -> None:
    assert set(ProtoEnum.__subclasses__()) == set(ENUMS)


@pytest.mark.parametrize("enum", ENUMS, ids=lambda e: e.__name__)
def test_members_round_trip_and_unspecified_is_none(enum: type[ProtoEnum]) -> None:
    for member in enum:
        assert enum.from_pb(member.to_pb()) is member
    wire = {enum.__pb__.Name(v) for v in enum.__pb__.values()}
    assert wire - {m.to_pb() and enum.__pb__.Name(m.to_pb()) for m in enum} == {enum.__pb__.Name(0)}
    assert enum.parse_pb(0) is None
    assert enum.parse_pb(10_000) is None  # a value from a newer peer


def test_an_unspecified_value_is_a_client_error() -> None:
    with pytest.raises(InvalidArgument, match="job state"):
        JobState.from_pb(0)
    with pytest.raises(InvalidArgument, match="role"):
        Role.from_pb(0)
