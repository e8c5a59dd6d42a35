"""A grammar build's time limit counts its own run, never its wait for a grammar thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.common.errors import InvalidArgument
from services.inference.backends import grammar_builds
from services.inference.backends.grammar_builds import build_grammar


async def test_a_build_that_runs_past_the_limit_is_a_400_naming_the_parameter(monkeypatch) -> None:
    monkeypatch.setattr(grammar_builds, "BUILD_SECONDS", 0.1)
    release = threading.Event()
    try:
        with pytest.raises(InvalidArgument) as refused:
            await build_grammar(release.wait, "tools")  # never finishes on its own
        assert refused.value.param == "tools" and "took longer" in refused.value.message
    finally:
        release.set()


async def test_a_build_queued_behind_busy_threads_is_not_refused_for_the_wait(monkeypatch) -> None:
    monkeypatch.setattr(grammar_builds, "BUILD_SECONDS", 1.0)
    release = threading.Event()
    busy = [asyncio.ensure_future(build_grammar(lambda: release.wait(10), "x")) for _ in range(2)]
    queued = asyncio.ensure_future(build_grammar(lambda: "grammar", "response_format"))
    await asyncio.sleep(1.5)  # queued for longer than the limit
    release.set()
    assert await queued == "grammar"
    outcomes = await asyncio.gather(*busy, return_exceptions=True)
    assert all(isinstance(outcome, InvalidArgument) for outcome in outcomes)  # they ran past it


async def test_errors_from_the_build_reach_the_caller() -> None:
    def refuse() -> str:
        raise InvalidArgument("llama.cpp refused the grammar", param="response_format")

    with pytest.raises(InvalidArgument, match="refused"):
        await build_grammar(refuse, "response_format")
