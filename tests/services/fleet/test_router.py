"""The router's rules on in-memory nodes (fast; the real fleet is in test_fleet.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

import pytest

from services.common.errors import InvalidArgument, MeshError, NotFound, Unavailable
from services.common.fleet import FleetSettings, NodeKind, NodeSpec
from services.common.grpc_client import open_merged
from services.fleet.nodes import Node, NodeLoad, NodeModel
from services.fleet.router import Circuit, Fleet
from services.inference.api import (
    ChatMessage,
    ChatRequest,
    Chunk,
    Completed,
    CompletionRequest,
    FinishReason,
    ModelInfo,
    ModelState,
    Role,
    StreamEvent,
    Tool,
    Usage,
)

MODEL = "m"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNode(Node):
    """A node in memory. `gate` holds its streams after the first token until the test opens it."""

    def __init__(self, name: str, *, tier: int = 1, weight: float = 1.0, capacity: int | None = None, **kind: object):
        spec = NodeSpec(name=name, address="x", tier=tier, weight=weight, capacity=capacity, **kind)  # type: ignore[arg-type]
        super().__init__(spec)
        self.models_served = [MODEL]
        self.fail_before: MeshError | None = None  # raised instead of the first token
        self.fail_after: MeshError | None = None  # raised after the first token
        self.silent = False  # never answers
        self.healthy = True
        self.gate = asyncio.Event()
        self.gate.set()
        self.started = 0

    async def chat(self, requests: Sequence[ChatRequest]) -> list[Completed]:
        self.started += 1
        if self.fail_before:
            raise self.fail_before
        await self.gate.wait()
        return [Completed(r.model, "hi", FinishReason.STOP, Usage(1, 1), node=self.name) for r in requests]

    async def complete(self, requests: Sequence[CompletionRequest]) -> list[Completed]:
        raise NotImplementedError

    async def stream_chat(self, requests: Sequence[ChatRequest]) -> AsyncIterator[StreamEvent]:
        self.started += 1
        return await open_merged([self._events(i, r.model) for i, r in enumerate(requests)])

    async def stream_complete(self, requests: Sequence[CompletionRequest]) -> AsyncIterator[StreamEvent]:
        raise NotImplementedError

    async def _events(self, index: int, model: str) -> AsyncGenerator[StreamEvent]:
        if self.silent:
            await asyncio.Event().wait()
        if self.fail_before:
            raise self.fail_before
        yield StreamEvent(index, model, Chunk("hel"), self.name)
        await self.gate.wait()
        if self.fail_after:
            raise self.fail_after
        yield StreamEvent(index, model, Chunk("lo", FinishReason.STOP, Usage(1, 2)), self.name)

    async def check_health(self, timeout: float) -> None:
        if not self.healthy:
            raise Unavailable("down")

    async def load(self, timeout: float) -> NodeLoad:
        return NodeLoad()

    async def models(self, timeout: float) -> list[NodeModel]:
        return [NodeModel(ModelInfo(m, "gguf", ModelState.LOADED, (), 0, False)) for m in self.models_served]


def fleet(*nodes: FakeNode, clock: Clock | None = None, **settings: object) -> Fleet:
    values: dict[str, object] = {"failure_threshold": 2, "cooldown_seconds": 10, **settings}
    home, *others = nodes
    return Fleet(home, others, FleetSettings(**values), clock=clock or Clock())  # type: ignore[arg-type]


def chat(model: str = MODEL, **fields: object) -> list[ChatRequest]:
    return [ChatRequest(model=model, messages=(ChatMessage(Role.USER, "hi"),), **fields)]  # type: ignore[arg-type]


async def stream_text(router: Fleet, model: str = MODEL, node: str | None = None) -> tuple[str, str]:
    """(text, node) of one streamed chat."""
    model, pinned = router.split(model, node)
    events = await router.stream(model, pinned, chat(model), lambda n, rs: n.stream_chat(rs))
    parts, names = [], set()
    async for event in events:
        parts.append(event.chunk.text)
        names.add(event.node)
    assert len(names) == 1
    return "".join(parts), names.pop()


async def open_stream(router: Fleet) -> tuple[AsyncIterator[StreamEvent], str]:
    """A stream opened and left running (its node counts it as in flight)."""
    events = await router.stream(MODEL, None, chat(), lambda n, rs: n.stream_chat(rs))
    first = await anext(events)
    return events, first.node


async def test_equal_idle_nodes_take_turns() -> None:
    """LiteLLM's least-busy router sends most sequential traffic to the first node (its issue
    #37622): ties here rotate, so equal nodes share even one-at-a-time traffic."""
    nodes = [FakeNode("a"), FakeNode("b"), FakeNode("c")]
    router = fleet(*nodes)
    await router.refresh()
    answered = [(await stream_text(router))[1] for _ in range(30)]
    assert {name: answered.count(name) for name in "abc"} == {"a": 10, "b": 10, "c": 10}


async def test_concurrent_load_spreads_evenly_and_by_weight() -> None:
    nodes = [FakeNode("a"), FakeNode("b"), FakeNode("heavy", weight=2.0)]
    for node in nodes:
        node.gate.clear()
    router = fleet(*nodes)
    await router.refresh()
    held = [await open_stream(router) for _ in range(20)]
    counts = {node.name: sum(1 for _, name in held if name == node.name) for node in nodes}
    assert counts == {"a": 5, "b": 5, "heavy": 10}
    for node in nodes:
        node.gate.set()
    for events, _ in held:
        async for _event in events:
            pass
    assert all(state.in_flight == 0 for state in router.states.values())


async def test_overflow_goes_to_the_next_tier_only_when_the_first_is_saturated() -> None:
    first, second, spare = FakeNode("a", capacity=2), FakeNode("b", capacity=1), FakeNode("spare", tier=2)
    for node in (first, second, spare):
        node.gate.clear()
    router = fleet(first, second, spare)
    await router.refresh()
    held = [await open_stream(router) for _ in range(3)]
    assert sorted(name for _, name in held) == ["a", "a", "b"]  # tier 1 fills up first
    overflow = [await open_stream(router) for _ in range(2)]
    assert [name for _, name in overflow] == ["spare", "spare"]
    for node in (first, second, spare):
        node.gate.set()
    for events, _ in held + overflow:
        async for _event in events:
            pass
    assert (await stream_text(router))[1] in ("a", "b")  # room again: back to tier 1


async def test_a_saturated_fleet_queues_on_the_first_tier() -> None:
    first, spare = FakeNode("a", capacity=1), FakeNode("spare", tier=2, capacity=1)
    for node in (first, spare):
        node.gate.clear()
    router = fleet(first, spare)
    await router.refresh()
    held = [await open_stream(router) for _ in range(3)]
    assert [name for _, name in held] == ["a", "spare", "a"]
    for node in (first, spare):
        node.gate.set()


async def test_a_failure_before_the_first_token_moves_on_invisibly_and_opens_the_circuit() -> None:
    clock = Clock()
    broken, good = FakeNode("broken"), FakeNode("good")
    router = fleet(broken, good, clock=clock)
    await router.refresh()
    broken.fail_before = Unavailable("connection refused")
    answers = [await stream_text(router) for _ in range(6)]
    assert all(answer == ("hello", "good") for answer in answers)
    assert broken.started == 2  # the threshold; then its circuit is open and it is skipped
    state = router.states["broken"]
    assert state.circuit(clock.now, 10) is Circuit.OPEN
    assert state.failovers == 2 and "connection refused" in state.recent_errors[-1][1]
    # After the cooldown a probe that answers closes it again.
    clock.now += 11
    broken.fail_before = None
    await router.refresh()
    assert state.circuit(clock.now, 10) is Circuit.CLOSED
    assert {(await stream_text(router))[1] for _ in range(4)} == {"broken", "good"}


async def test_a_failed_probe_takes_a_node_out_until_it_answers_again() -> None:
    clock = Clock()
    flaky, good = FakeNode("flaky"), FakeNode("good")
    router = fleet(flaky, good, clock=clock)
    flaky.healthy = False
    await router.refresh()
    assert {(await stream_text(router))[1] for _ in range(4)} == {"good"}
    assert flaky.started == 0
    flaky.healthy = True
    await router.refresh()  # answers, but the cooldown is not over
    assert router.states["flaky"].circuit(clock.now, 10) is Circuit.OPEN
    clock.now += 11
    await router.refresh()
    assert {(await stream_text(router))[1] for _ in range(4)} == {"flaky", "good"}


async def test_an_error_after_the_first_token_reaches_the_client_and_nothing_is_sent_twice() -> None:
    first, second = FakeNode("a"), FakeNode("b")
    router = fleet(first, second)
    await router.refresh()
    first.fail_after = Unavailable("node died")
    second.fail_after = Unavailable("node died")
    events = await router.stream(MODEL, None, chat(), lambda n, rs: n.stream_chat(rs))
    texts = []
    with pytest.raises(Unavailable, match="node died"):
        async for event in events:
            texts.append(event.chunk.text)
    assert texts == ["hel"]
    assert first.started + second.started == 1


async def test_a_silent_node_is_failed_over_at_the_first_token_timeout() -> None:
    silent, good = FakeNode("silent"), FakeNode("good")
    router = fleet(silent, good, first_token_timeout_seconds=0.05)
    await router.refresh()
    silent.silent = True
    assert {(await stream_text(router))[1] for _ in range(4)} == {"good"}
    assert silent.started >= 1


async def test_a_bad_request_is_not_retried_elsewhere() -> None:
    first, second = FakeNode("a"), FakeNode("b")
    router = fleet(first, second)
    await router.refresh()
    first.fail_before = second.fail_before = InvalidArgument("bad temperature")
    with pytest.raises(InvalidArgument):
        await stream_text(router)
    assert first.started + second.started == 1
    assert router.states["a"].failures == router.states["b"].failures == 0


async def test_unary_calls_fail_over_too() -> None:
    broken, good = FakeNode("broken"), FakeNode("good")
    router = fleet(broken, good)
    await router.refresh()
    broken.fail_before = Unavailable("gone")
    for _ in range(3):
        results = await router.call(MODEL, None, chat(), lambda n, rs: n.chat(rs))
        assert results[0].node == "good"


async def test_every_node_failing_gives_the_last_error() -> None:
    first, second = FakeNode("a"), FakeNode("b")
    router = fleet(first, second)
    await router.refresh()
    first.fail_before = second.fail_before = Unavailable("all gone")
    with pytest.raises(Unavailable, match="all gone"):
        await stream_text(router)


async def test_a_pinned_node_answers_alone_or_fails_clearly() -> None:
    first, second = FakeNode("a"), FakeNode("dell-micro")
    router = fleet(first, second)
    await router.refresh()
    assert {(await stream_text(router, f"{MODEL}@dell-micro"))[1] for _ in range(3)} == {"dell-micro"}
    assert {(await stream_text(router, MODEL, node="a"))[1] for _ in range(3)} == {"a"}
    with pytest.raises(InvalidArgument, match="Unknown node 'nowhere'"):
        router.split(f"{MODEL}@nowhere", None)
    with pytest.raises(InvalidArgument, match="names node"):
        router.split(f"{MODEL}@a", "dell-micro")
    with pytest.raises(NotFound, match="does not serve 'other'"):
        await stream_text(router, "other@dell-micro")
    second.fail_before = Unavailable("dell-micro is off")
    with pytest.raises(Unavailable, match="dell-micro is off"):  # pinned: no failover
        await stream_text(router, f"{MODEL}@dell-micro")


async def test_names_no_node_lists_go_to_the_home_node() -> None:
    home, other = FakeNode("home"), FakeNode("other")
    other.models_served = ["only-there"]
    router = fleet(home, other)
    await router.refresh()
    assert (await stream_text(router, "live"))[1] == "home"  # a slot or path: the home node resolves it
    assert (await stream_text(router, "only-there"))[1] == "other"


async def test_http_nodes_leave_tools_and_adapters_to_mesh_nodes() -> None:
    mesh, http = FakeNode("mesh"), FakeNode("llama", kind=NodeKind.OPENAI)
    http.refuses = lambda request: "tools" if isinstance(request, ChatRequest) and request.tools else None  # type: ignore[method-assign]
    router = fleet(mesh, http)
    await router.refresh()
    tools = chat(tools=(Tool("f", "", "{}"),))
    for _ in range(4):
        assert router.plan(MODEL, None, tools[0]) == [router.states["mesh"]]
    with pytest.raises(InvalidArgument, match="cannot serve requests with tools"):
        router.plan(MODEL, "llama", tools[0])
    mesh.models_served = []
    router.states["mesh"].discovered_at = None
    await router.refresh()
    with pytest.raises(InvalidArgument, match="served only by nodes that cannot take requests with tools"):
        router.plan(MODEL, None, tools[0])


async def test_a_node_that_is_down_keeps_its_models_listed_as_unavailable() -> None:
    home, other = FakeNode("home"), FakeNode("other")
    other.models_served = ["remote-model"]
    router = fleet(home, other)
    await router.refresh()
    other.healthy = False
    await router.refresh()
    catalog = {entry.info.name: entry for entry in router.catalog(None)}
    assert [(n.node, n.available) for n in catalog["remote-model"].nodes] == [("other", False)]
    assert [(n.node, n.available) for n in catalog[MODEL].nodes] == [("home", True)]
    views = {view.name: view for view in router.views()}
    assert not views["other"].healthy and views["other"].circuit is Circuit.OPEN


def test_a_lone_home_node_needs_no_watch() -> None:
    router = fleet(FakeNode("home"))
    assert router.single
    router.start()
    assert router._watch is None
