"""The sampling parameters have one declaration (services/common/sampling.py): the proto, the
domain type, the registry's defaults and the gateway's request fields all match it."""

from __future__ import annotations

import dataclasses
import math

import pytest

from llmmesh.inference.v1 import inference_service_pb2 as pb
from services.common import sampling
from services.common.errors import InvalidArgument
from services.common.registry import SamplingDefaults
from services.gateway.protocol.common import SamplingFields
from services.inference.api import SamplingParams


def test_every_form_has_exactly_the_declared_parameters() -> None:
    assert tuple(f.name for f in pb.SamplingParams.DESCRIPTOR.fields) == sampling.NAMES
    assert tuple(f.name for f in dataclasses.fields(SamplingParams)) == sampling.NAMES
    assert tuple(SamplingDefaults.model_fields) == sampling.NAMES
    assert set(sampling.NAMES) <= set(SamplingFields.model_fields)


@pytest.mark.parametrize("name", sorted(sampling.BOUNDS))
def test_every_form_enforces_the_declared_bounds(name: str) -> None:
    bound = sampling.BOUNDS[name]
    for model in (SamplingFields, SamplingDefaults):
        schema = next(s for s in model.model_json_schema()["properties"][name]["anyOf"] if s["type"] != "null")
        assert schema["type"] == {float: "number", int: "integer"}[bound.kind]
        low = schema["minimum"] if bound.low_inclusive else schema["exclusiveMinimum"]
        assert low == bound.low and schema.get("maximum", math.inf) in (bound.high, sampling.INT32_MAX)
    below = bound.low - 1 if bound.low_inclusive else bound.low
    with pytest.raises(InvalidArgument) as refused:
        SamplingParams(**{name: below}).validate()
    assert refused.value.param == name
    assert SamplingParams(**{name: bound.low if bound.low_inclusive else bound.low + 0.5}).validate()
