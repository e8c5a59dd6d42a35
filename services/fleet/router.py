"""Which node runs a request, and what happens when it fails.

Routing, per request:
1. `model@node` or an explicit node: that node only, or a clear error.
2. Otherwise the nodes that serve the model (listed, or discovered) and can take the request.
   A name no node lists (a slot, a file path, a typo) goes to the home node, which resolves
   or refuses it as a single inference service would.
3. The highest-priority tier with a node that has room; within it the lowest estimated wait,
   (busy + 1) / weight, where busy is what this process runs there now plus what the node
   reported beyond that at its last probe (its queue and slots: other clients' work). Ties
   rotate, so equal idle nodes take turns. When every node is saturated, the request waits on
   the least loaded node of the first tier.

Failover: a node that fails before the first token (unreachable, 5xx, silent past the
first-token timeout, overloaded, or without the model after all) hands the request to the
next node in that order, invisibly. After the first token the error goes to the client:
text is never sent twice. Failures in a row open the node's circuit for a cooldown; the
background watch probes every node and closes the circuit when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

from services.common.errors import (
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    MeshError,
    NotFound,
    ResourceExhausted,
    Unavailable,
    quote,
)
from services.common.fleet import FleetSettings
from services.common.grpc_client import opened
from services.fleet import metrics
from services.fleet.nodes import Node, NodeLoad, NodeModel
from services.inference.api import ChatRequest, Completed, CompletionRequest, ModelInfo, ModelState, StreamEvent

log = logging.getLogger(__name__)

R = TypeVar("R", ChatRequest, CompletionRequest)
MAX_RECENT_ERRORS = 10


class Circuit(StrEnum):
    CLOSED = "closed"
    HALF_OPEN = "half_open"  # cooldown over: the next request or probe decides
    OPEN = "open"


@dataclass
class NodeState:
    """What the router knows about one node."""

    node: Node
    in_flight: int = 0
    failures: int = 0  # in a row
    opened_at: float | None = None  # when its circuit opened; None: closed
    reachable: bool | None = None  # the last probe's verdict; None before the first
    load: NodeLoad = field(default_factory=NodeLoad)
    others: int = 0  # what the node reported beyond this process's own requests, at the last probe
    models: list[NodeModel] = field(default_factory=list)
    names: frozenset[str] = frozenset()  # models and aliases it serves
    discovered_at: float | None = None
    requests: int = 0
    failovers: int = 0
    recent_errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=MAX_RECENT_ERRORS))

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def busy(self) -> int:
        """Requests on the node now: this process's, plus what others had there at the last probe."""
        return self.in_flight + self.others

    @property
    def capacity(self) -> int | None:
        return self.node.spec.capacity or self.load.slots

    @property
    def saturated(self) -> bool:
        return self.capacity is not None and self.busy >= self.capacity

    @property
    def score(self) -> float:
        """The estimated wait, in units of one request's share of this node."""
        return (self.busy + 1) / self.node.spec.weight

    def circuit(self, now: float, cooldown: float) -> Circuit:
        if self.opened_at is None:
            return Circuit.CLOSED
        return Circuit.HALF_OPEN if now - self.opened_at >= cooldown else Circuit.OPEN

    def serves(self, model: str) -> bool:
        return model in self.names


@dataclass(frozen=True)
class NodePresence:
    """One node's copy of a model, as /v1/models shows it."""

    node: str
    available: bool
    loaded: bool


@dataclass(frozen=True)
class FleetModel:
    info: ModelInfo
    nodes: tuple[NodePresence, ...]


@dataclass(frozen=True)
class NodeView:
    """One node, as /v1/nodes shows it."""

    name: str
    kind: str
    address: str
    tier: int
    weight: float
    capacity: int | None
    healthy: bool
    circuit: Circuit
    in_flight: int
    running: int
    waiting: int
    models: tuple[str, ...]
    requests: int
    failovers: int
    recent_errors: tuple[tuple[float, str], ...]


class Fleet:
    """The nodes, the routing rules above, and the watch that keeps their state fresh."""

    def __init__(
        self,
        home: Node,
        nodes: Sequence[Node],
        settings: FleetSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.home = NodeState(home)
        self.states: dict[str, NodeState] = {home.name: self.home}
        for node in nodes:
            self.states[node.name] = NodeState(node, names=frozenset(node.spec.models or ()))
        self._clock = clock
        self._turn = 0
        self._watch: asyncio.Task[None] | None = None

    @property
    def single(self) -> bool:
        """Only the home node: requests go straight to it, as they did before fleets."""
        return len(self.states) == 1

    # ---- routing ----

    def split(self, model: str, node: str | None) -> tuple[str, str | None]:
        """The model name and the node it is pinned to: `model@node` or an explicit node."""
        if "@" in model:  # registry names cannot hold '@'
            model, _, named = model.rpartition("@")
            if node and node != named:
                raise InvalidArgument(f"The model names node '{named}' but 'node' is '{node}'.", param="node")
            node = named
        if node is not None and node not in self.states:
            raise InvalidArgument(f"Unknown node '{node}'. Nodes: {', '.join(self.states)}.", param="node")
        return model, node

    def plan(self, model: str, pinned: str | None, request: ChatRequest | CompletionRequest) -> list[NodeState]:
        """The nodes to try, in order."""
        if pinned is not None:
            state = self.states[pinned]
            if reason := state.node.refuses(request):
                raise InvalidArgument(
                    f"Node '{quote(pinned)}' ({state.node.spec.kind.value}) cannot serve requests with {reason}.",
                    param="node",
                )
            if state is not self.home and state.names and model not in state.names:
                raise NotFound(
                    f"Node '{quote(pinned)}' does not serve '{quote(model)}'."
                    f" It serves: {', '.join(sorted(state.names))}.",
                    reason="MODEL_NOT_ON_NODE",
                    param="model",
                )
            return [state]
        serving = [s for s in self.states.values() if s.serves(model)]
        if not serving:
            return [self.home]
        able = [s for s in serving if not s.node.refuses(request)]
        if not able:
            reason = serving[0].node.refuses(request)
            raise InvalidArgument(
                f"'{quote(model)}' is served only by nodes that cannot take requests with {reason} "
                f"({', '.join(s.name for s in serving)}).",
                param="model",
            )
        now = self._clock()
        up = [s for s in able if s.circuit(now, self.settings.cooldown_seconds) is not Circuit.OPEN]
        return self._rank(up or able)  # every circuit open: trying beats failing for certain

    def _rank(self, states: list[NodeState]) -> list[NodeState]:
        """Nodes with room first, by tier then estimated wait; then the saturated ones, so that when
        all are full the request waits on the least loaded node of the first tier."""
        self._turn += 1
        count = len(states)
        order = sorted(
            range(count),
            key=lambda i: (states[i].saturated, states[i].node.spec.tier, states[i].score, (i - self._turn) % count),
        )
        return [states[i] for i in order]

    async def call(
        self,
        model: str,
        pinned: str | None,
        requests: Sequence[R],
        run: Callable[[Node, Sequence[R]], Awaitable[list[Completed]]],
    ) -> list[Completed]:
        """A unary call: nothing reaches the client until it is done, so any node failure may fail over."""
        last: MeshError | None = None
        plan = self.plan(model, pinned, requests[0])
        for state in plan:
            started = self._start(state)
            try:
                results = await run(state.node, requests)
            except MeshError as error:
                if not self._failed(state, error, more=state is not plan[-1]):
                    raise
                last = error
                continue
            finally:
                self._end(state)
            self._succeeded(state, started)
            return results
        raise self._exhausted(model, last)

    async def stream(
        self,
        model: str,
        pinned: str | None,
        requests: Sequence[R],
        open_stream: Callable[[Node, Sequence[R]], Awaitable[AsyncIterator[StreamEvent]]],
    ) -> AsyncIterator[StreamEvent]:
        """A stream, opened: errors before its first event raise here (the caller can still answer
        with an HTTP status)."""
        return await opened(self._stream(self.plan(model, pinned, requests[0]), model, requests, open_stream))

    async def _stream(
        self,
        plan: list[NodeState],
        model: str,
        requests: Sequence[R],
        open_stream: Callable[[Node, Sequence[R]], Awaitable[AsyncIterator[StreamEvent]]],
    ) -> AsyncGenerator[StreamEvent]:
        timeout = self.settings.first_token_timeout_seconds
        last: MeshError | None = None
        for state in plan:
            started, tokens_sent = self._start(state), False
            events: AsyncIterator[StreamEvent] | None = None
            try:
                events = await _within(open_stream(state.node, requests), timeout, state.name)
                while True:
                    # Until the first token, a node silent past the timeout is failed over; after it, the
                    # call's own deadline applies.
                    event = await (anext(events) if tokens_sent else _within(anext(events), timeout, state.name))
                    if not tokens_sent and _is_token(event):
                        tokens_sent = True
                        self._succeeded(state, started)
                    yield event
            except StopAsyncIteration:
                return
            except MeshError as error:
                if tokens_sent or not self._failed(state, error, more=state is not plan[-1]):
                    raise
                last = error
            finally:
                self._end(state)
                if events is not None:
                    await events.aclose()  # type: ignore[attr-defined]
        raise self._exhausted(model, last)

    # ---- bookkeeping ----

    def _start(self, state: NodeState) -> float:
        state.in_flight += 1
        state.requests += 1
        metrics.NODE_IN_FLIGHT.labels(state.name).set(state.in_flight)
        return self._clock()

    def _end(self, state: NodeState) -> None:
        state.in_flight -= 1
        metrics.NODE_IN_FLIGHT.labels(state.name).set(state.in_flight)

    def _succeeded(self, state: NodeState, started: float) -> None:
        metrics.NODE_LATENCY.labels(state.name).observe(self._clock() - started)
        metrics.NODE_REQUESTS.labels(state.name, "ok").inc()
        if state.failures or state.opened_at is not None:
            state.failures, state.opened_at = 0, None
            self._circuit_changed(state)

    def _failed(self, state: NodeState, error: MeshError, more: bool) -> bool:
        """Record a failure on `state`; True when the request moves on to the next node (`more`
        says there is one)."""
        moves_on = _moves_on(error)
        if moves_on and isinstance(error, NotFound):
            state.discovered_at = None  # its model list is stale: read it again at the next probe
        elif moves_on and not isinstance(error, ResourceExhausted):  # busy is not broken
            state.failures += 1
            state.recent_errors.append((time.time(), error.message[:300]))
            now = self._clock()
            circuit = state.circuit(now, self.settings.cooldown_seconds)
            if circuit is Circuit.HALF_OPEN or (
                circuit is Circuit.CLOSED and state.failures >= self.settings.failure_threshold
            ):
                state.opened_at = now
                self._circuit_changed(state)
        if not (moves_on and more):
            metrics.NODE_REQUESTS.labels(state.name, "error").inc()
            return False
        metrics.NODE_REQUESTS.labels(state.name, "failed_over").inc()
        metrics.NODE_FAILOVERS.labels(state.name).inc()
        state.failovers += 1
        log.warning("node '%s' failed before the first token, failing over: %s", state.name, error.message)
        return True

    def _exhausted(self, model: str, last: MeshError | None) -> MeshError:
        if last is None:
            return Unavailable(f"No node can serve '{quote(model)}' now.", reason="NO_NODE_AVAILABLE")
        return last

    def _circuit_changed(self, state: NodeState) -> None:
        circuit = state.circuit(self._clock(), self.settings.cooldown_seconds)
        metrics.NODE_CIRCUIT.labels(state.name).set(list(Circuit).index(circuit))
        log.info("node '%s' circuit %s", state.name, circuit.value)

    # ---- the watch: health, load and models of every node ----

    def start(self) -> None:
        if not self.single and self._watch is None:
            self._watch = asyncio.create_task(self._watch_nodes(), name="fleet-watch")

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for state in self.states.values():
            await state.node.close()

    async def _watch_nodes(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.settings.probe_seconds)

    async def refresh(self) -> None:
        """Probe every node once, side by side; one node's trouble never stops the others'."""
        await asyncio.gather(*(self._probe(state) for state in self.states.values()))

    async def _probe(self, state: NodeState) -> None:
        timeout = min(self.settings.probe_seconds, 5.0)
        try:
            await state.node.check_health(timeout)
            state.load = await state.node.load(timeout)
            state.others = max(0, state.load.running + state.load.waiting - state.in_flight)
            now = self._clock()
            if state.node.spec.models is None and (
                state.discovered_at is None or now - state.discovered_at >= self.settings.discovery_seconds
            ):
                state.models = await state.node.models(timeout)
                state.names = frozenset(name for model in state.models for name in model.names)
                state.discovered_at = now
        except (MeshError, TimeoutError) as error:
            message = error.message if isinstance(error, MeshError) else "probe timed out"
            if state.reachable is not False:
                log.warning("node '%s' is down: %s", state.name, message)
            state.reachable = False
            state.load, state.others = NodeLoad(), 0
            if state.opened_at is None:
                state.opened_at = self._clock()
                self._circuit_changed(state)
            return
        except Exception:  # a node's odd answer must not end the watch
            log.exception("probing node '%s' failed", state.name)
            return
        if state.reachable is False:
            log.info("node '%s' is back", state.name)
        state.reachable = True
        if state.circuit(self._clock(), self.settings.cooldown_seconds) is Circuit.HALF_OPEN:
            state.failures, state.opened_at = 0, None
            self._circuit_changed(state)

    # ---- views ----

    def catalog(self, home_models: list[ModelInfo] | None) -> list[FleetModel]:
        """Every model on every node, with the nodes that serve it. A node that is down keeps its
        models listed, unavailable. `home_models`: the home node's list read just now, if it answered."""
        now = self._clock()
        by_name: dict[str, tuple[ModelInfo, list[NodePresence]]] = {}
        for state in self.states.values():
            fresh = state is self.home and home_models is not None
            models = [NodeModel(info) for info in home_models or ()] if fresh else state.models
            if state is not self.home and not models and state.node.spec.models:
                models = [NodeModel(_unknown_model(name, state)) for name in state.node.spec.models]
            available = state.reachable is not False and state.circuit(now, self.settings.cooldown_seconds) in (
                Circuit.CLOSED,
                Circuit.HALF_OPEN,
            )
            for model in models:
                entry = by_name.setdefault(model.info.name, (model.info, []))
                entry[1].append(NodePresence(state.name, available, model.info.state is ModelState.LOADED))
        return [FleetModel(info, tuple(nodes)) for info, nodes in by_name.values()]

    def views(self) -> list[NodeView]:
        now = self._clock()
        return [
            NodeView(
                name=state.name,
                kind=state.node.spec.kind.value,
                address=state.node.spec.address,
                tier=state.node.spec.tier,
                weight=state.node.spec.weight,
                capacity=state.capacity,
                healthy=state.reachable is not False,
                circuit=state.circuit(now, self.settings.cooldown_seconds),
                in_flight=state.in_flight,
                running=state.load.running,
                waiting=state.load.waiting,
                models=tuple(sorted(state.names)),
                requests=state.requests,
                failovers=state.failovers,
                recent_errors=tuple(state.recent_errors),
            )
            for state in self.states.values()
        ]


def _moves_on(error: MeshError) -> bool:
    """Whether another node may succeed where this one failed: outages, timeouts, overload and a
    missing model move on; a bad request would fail everywhere."""
    return isinstance(error, (Unavailable, DeadlineExceeded, ResourceExhausted, NotFound, Internal)) or (
        type(error) is MeshError
    )


def _is_token(event: StreamEvent) -> bool:
    chunk = event.chunk
    return chunk.wait_status is None and bool(
        chunk.text or chunk.finish_reason or chunk.tool_calls or chunk.tool_call_deltas
    )


_T = TypeVar("_T")


async def _within(work: Awaitable[_T], timeout: float, node: str) -> _T:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise DeadlineExceeded(
            f"Node '{node}' sent nothing for {timeout:g} s before its first token.", reason="NODE_TIMEOUT"
        ) from None


def _unknown_model(name: str, state: NodeState) -> ModelInfo:
    return ModelInfo(name, state.node.spec.kind.value, ModelState.UNLOADED, (), 0, False)
