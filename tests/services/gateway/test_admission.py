"""The door x rule matrix: every admission rule through every door of the mesh, with real API
keys through the session's gateway and scheduler (mock and real models behind them).

Each door is a way in (an HTTP endpoint of an API family, a batch line of each endpoint, an
async job type); each rule is sent as a request that breaks it, and must come back as that
rule's 4xx in the door's own error shape. The table must name every door of
`services.gateway.admission.DOORS`, and every model endpoint of the app must be a door. A
second test removes each rule from each door in turn and checks that its cell then fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest

from services.common.grpc_client import open_channel
from services.gateway import admission
from services.gateway.app import build_app
from services.scheduler.client import SchedulerClient
from tests.conftest import (
    INTERNAL_TOKEN,
    TRAINING_REQUEST,
    admin_jwt,
    gateway_settings,
    mesh_gateway_settings,
    serve_http,
)

ALL_SCOPES = ["chat", "embeddings", "jobs"]
SURROGATE, NUL, LONG_NAME = "a\ud800b", "a\x00b", "m" * 20_000
Sender = Callable[[httpx.AsyncClient, dict[str, str]], Awaitable[httpx.Response]]
# A door's request for a model and a text: made ready (a batch's file uploaded), then sent.
Prepare = Callable[[httpx.AsyncClient, dict[str, str], str, str], Awaitable[Sender]]


def post(path: str, body: dict[str, Any]) -> Sender:
    async def send(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
        data = json.dumps(body).encode()  # ensure_ascii: a lone surrogate travels as JSON's escape
        return await http.post(path, content=data, headers={**headers, "content-type": "application/json"})

    return send


def http_door(path: str, body: Callable[[str, str], dict[str, Any]]) -> Prepare:
    async def prepare(http: httpx.AsyncClient, headers: dict[str, str], model: str, text: str) -> Sender:
        return post(path, body(model, text))

    return prepare


def batch_door(url: str, body: Callable[[str, str], dict[str, Any]], metadata_text: bool = False) -> Prepare:
    """Upload a one-line batch file, then create the batch; `metadata_text`: the text goes in the
    batch's own metadata (the batch door) instead of the line."""

    async def prepare(http: httpx.AsyncClient, headers: dict[str, str], model: str, text: str) -> Sender:
        line = {"custom_id": "c1", "method": "POST", "url": url, "body": body(model, "hi" if metadata_text else text)}
        data = io.BytesIO((json.dumps(line) + "\n").encode())
        upload = await http.post(
            "/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"}, headers=headers
        )
        if upload.status_code != 200:  # a key without "jobs" cannot upload: refused there

            async def refused(http: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
                return upload

            return refused
        create: dict[str, Any] = {"input_file_id": upload.json()["id"], "endpoint": url, "completion_window": "24h"}
        if metadata_text:
            create["metadata"] = {"note": text}
        return post("/v1/batches", create)

    return prepare


def job_door(job_type: str, request: Callable[[str, str], dict[str, Any]]) -> Prepare:
    async def prepare(http: httpx.AsyncClient, headers: dict[str, str], model: str, text: str) -> Sender:
        body = {"job_type": job_type, "request": request(model, text), "idempotency_key": uuid.uuid4().hex}
        return post("/internal/queue/enqueue", body)

    return prepare


def chat_body(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 2}


def embed_body(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "input": [text]}


def training_set(text: str) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]}] * 2


def image_chat(model: str, text: str) -> dict[str, Any]:
    pixel = (
        "data:image/png;base64,"
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": pixel}}]
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2}


@dataclasses.dataclass(frozen=True)
class DoorCase:
    prepare: Prepare
    model: str  # a model the door may use
    anthropic: bool = False
    when_run: bool = False  # checked at the door, counted by the scheduler as it runs


DOOR_CASES: dict[str, DoorCase] = {
    "chat": DoorCase(http_door("/v1/chat/completions", chat_body), "mock"),
    "completions": DoorCase(
        http_door("/v1/completions", lambda m, t: {"model": m, "prompt": t, "max_tokens": 2}), "mock"
    ),
    "embeddings": DoorCase(http_door("/v1/embeddings", embed_body), "all-MiniLM-L6-v2"),
    "rerank": DoorCase(
        http_door("/v1/rerank", lambda m, t: {"model": m, "query": t, "documents": ["a", "b"]}), "all-MiniLM-L6-v2"
    ),
    "responses": DoorCase(
        http_door("/v1/responses", lambda m, t: {"model": m, "input": t, "max_output_tokens": 2, "store": False}),
        "mock",
    ),
    "messages": DoorCase(
        http_door("/v1/messages", lambda m, t: {**chat_body(m, t), "max_tokens": 2}), "mock", anthropic=True
    ),
    "count_tokens": DoorCase(
        http_door("/v1/messages/count_tokens", lambda m, t: {"model": m, "messages": [{"role": "user", "content": t}]}),
        "mock",
        anthropic=True,
    ),
    "batch": DoorCase(batch_door("/v1/chat/completions", chat_body, metadata_text=True), "mock"),
    "batch_line:/v1/chat/completions": DoorCase(batch_door("/v1/chat/completions", chat_body), "mock", when_run=True),
    "batch_line:/v1/completions": DoorCase(
        batch_door("/v1/completions", lambda m, t: {"model": m, "prompt": t, "max_tokens": 2}), "mock", when_run=True
    ),
    "batch_line:/v1/embeddings": DoorCase(batch_door("/v1/embeddings", embed_body), "all-MiniLM-L6-v2", when_run=True),
    "job:chat": DoorCase(job_door("chat", chat_body), "background", when_run=True),
    "job:vision": DoorCase(job_door("vision", image_chat), "background", when_run=True),
    "job:embed": DoorCase(job_door("embed", embed_body), "all-MiniLM-L6-v2", when_run=True),
    "job:adapter_train": DoorCase(
        job_door(
            "adapter_train",
            lambda m, t: {
                **TRAINING_REQUEST,
                "base_model": m,
                "dataset": training_set(t),
                "hyperparameters": {"max_steps": 1},
            },
        ),
        "gemma-3-270m",
        when_run=True,
    ),
}


# Each rule: the admission rule it tests, the key it needs, and the request that breaks it.
# `model`/`text`: None keeps the door's valid model / plain text.
@dataclasses.dataclass(frozen=True)
class Rule:
    admission_rule: str
    status: int
    says: str  # a piece of the error message
    key: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: str | None = None
    text: str = "hi"
    code: str | None = None  # the OpenAI error code


RULE_CASES: dict[str, Rule] = {
    "scope": Rule("scope", 403, "lacks the", code="missing_scope"),
    "allow_list": Rule(
        "allow_list", 403, "may not use the model", {"models": ["only-this-one"]}, code="model_not_allowed"
    ),
    "rate_limit": Rule("rate", 429, "requests per minute", {"rpm_limit": 1}, code="rate_limited"),
    "quota": Rule("rate", 429, "tokens per minute", {"tpm_limit": 1}, code="rate_limited"),
    "bad_utf8": Rule("text", 400, "lone UTF-16 surrogate", text=SURROGATE, code="invalid_text"),
    "nul": Rule("text", 400, "NUL", text=NUL, code="invalid_text"),
    "oversize": Rule("bounds", 400, "at most 256 characters", model=LONG_NAME, code="name_too_long"),
}
# Cells a door cannot hold: the batch object names no model (its lines do).
NOT_APPLICABLE = {("batch", "allow_list"), ("batch", "oversize")}


@pytest.fixture
async def strict_gateway(
    postgres_url: str, inference, embeddings, scheduler_server, trainer, s3_server: str
) -> AsyncIterator[str]:
    """The session's services behind a gateway that wants a key (no anonymous callers)."""
    settings = mesh_gateway_settings(
        postgres_url, inference, embeddings, scheduler_server, trainer, s3_server, allow_anonymous=False
    )
    server, task, url = await serve_http(build_app(settings))
    yield url
    server.should_exit = True
    await task


async def _key(http: httpx.AsyncClient, scopes: list[str], **fields: Any) -> dict[str, str]:
    made = await http.post(
        "/admin/keys",
        json={"name": "door", "scopes": scopes, **fields},
        headers={"Authorization": f"Bearer {admin_jwt()}"},
    )
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['key']}"}


async def run_cell(http: httpx.AsyncClient, door_name: str, rule_name: str) -> httpx.Response:
    """Send the request that breaks `rule_name` through `door_name`."""
    door, rule = DOOR_CASES[door_name], RULE_CASES[rule_name]
    scopes = list(ALL_SCOPES)
    if rule_name == "scope":
        scopes.remove(admission.DOORS[door_name].scopes[-1])  # the door's own scope (a line's endpoint's)
    headers = await _key(http, scopes, **rule.key)
    send = await door.prepare(http, headers, rule.model or door.model, rule.text)
    if rule_name == "rate_limit":  # the one request of this minute (unless a batch's upload took it)
        assert (await http.get("/v1/jobs", headers=headers)).status_code in (200, 429)
    if rule_name == "quota":  # tokens spent through another way
        spent = await http.post("/v1/chat/completions", json=chat_body("mock", "a b c"), headers=headers)
        assert spent.status_code == 200, spent.text
    response = await send(http, headers)
    if response.status_code in (200, 202) and "id" in response.json():  # admitted by mistake: stop it
        admin = {"Authorization": f"Bearer {admin_jwt()}"}
        await http.post(f"/v1/jobs/{response.json()['id']}/cancel", headers=admin)
    return response


def cell_holds(door_name: str, rule_name: str, response: httpx.Response) -> str | None:
    """None when the response is the rule's refusal in the door's shape; else what is wrong."""
    door, rule = DOOR_CASES[door_name], RULE_CASES[rule_name]
    if response.status_code != rule.status:
        return f"status {response.status_code}: {response.text[:300]}"
    body = response.json()
    if door.anthropic:
        if body.get("type") != "error" or rule.says not in body["error"]["message"]:
            return f"not Anthropic's error shape or not this rule's error: {body}"
    else:
        error = body.get("error") or {}
        if error.get("code") != rule.code or rule.says not in error.get("message", ""):
            return f"not this rule's OpenAI error: {body}"
    if rule.status == 429 and "retry-after" not in response.headers:
        return "a 429 without Retry-After"
    return None


CELLS = [(d, r) for d in DOOR_CASES for r in RULE_CASES if (d, r) not in NOT_APPLICABLE]


def test_the_matrix_names_every_door_and_every_model_endpoint_is_a_door() -> None:
    assert set(DOOR_CASES) == set(admission.DOORS), "a door without its row in the matrix, or a row without a door"
    assert {r.admission_rule for r in RULE_CASES.values()} == set(admission.RULES)
    door_paths = {door.path for door in admission.DOORS.values()} | {"/rerank", "/v2/rerank"}
    app = build_app(gateway_settings())
    superuser_only = ("/admin/", "/settings", "/v1/pipeline/")  # a superuser JWT, never an app key
    spec = app.openapi()
    schemas = spec["components"]["schemas"]
    seen = set()
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            content = operation.get("requestBody", {}).get("content", {})
            for media in content.values():
                ref = media.get("schema", {}).get("$ref", "")
                fields = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
                if path.startswith(superuser_only) or not ({"model", "request"} & set(fields)):
                    continue
                seen.add(path)  # names a model: it must come in by a door
                assert path in door_paths, f"{path} takes a model but is no door of admission.DOORS"
    assert {"/v1/chat/completions", "/v1/messages", "/internal/queue/enqueue"} <= seen


@pytest.mark.parametrize(("door_name", "rule_name"), CELLS, ids=[f"{d}-{r}" for d, r in CELLS])
async def test_every_rule_holds_at_every_door(strict_gateway: str, door_name: str, rule_name: str) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=60) as http:
        response = await run_cell(http, door_name, rule_name)
    assert (problem := cell_holds(door_name, rule_name, response)) is None, problem


WHEN_RUN = [name for name, case in DOOR_CASES.items() if case.when_run and name != "job:vision"]


@pytest.mark.parametrize("door_name", WHEN_RUN)
@pytest.mark.parametrize("without_rule", [False, True], ids=["as_built", "rate_rule_removed"])
async def test_a_door_counted_when_run_hands_the_keys_limits_to_the_scheduler(
    strict_gateway: str, scheduler_server, door_name: str, without_rule: bool
) -> None:
    """Batch lines and jobs are checked at the door and counted as they run: the job carries
    the key's limits (services/scheduler/pacing.py holds the work to them). Without the rate
    rule at the door, it carries none: this cell tells that rule for these doors."""
    async with (
        httpx.AsyncClient(base_url=strict_gateway, timeout=60) as http,
        open_channel(f"127.0.0.1:{scheduler_server.port}", INTERNAL_TOKEN) as channel,
    ):
        headers = await _key(http, ALL_SCOPES, rpm_limit=1000, tpm_limit=5000)
        door = DOOR_CASES[door_name]
        with rule_removed("rate", door_name) if without_rule else contextlib.nullcontext():
            response = await (await door.prepare(http, headers, door.model, "hi"))(http, headers)
        assert response.status_code in (200, 202), response.text
        job = await SchedulerClient(channel, 30).get(response.json()["id"], "")
        await http.post(f"/v1/jobs/{job.job_id}/cancel", headers={"Authorization": f"Bearer {admin_jwt()}"})
        limits = job.request.rate_limits
        carried = (limits.requests_per_minute, limits.tokens_per_minute) == (1000, 5000)
        assert carried is not without_rule


@contextlib.contextmanager
def rule_removed(rule: str, door: str) -> Iterator[None]:
    """`rule` skipped at `door` only, as a door that forgot it would."""
    original = admission.RULES[rule]

    def skipping(request: admission.Admission) -> None:
        if request.door.name != door:
            original(request)

    admission.RULES[rule] = skipping
    try:
        yield
    finally:
        admission.RULES[rule] = original


# The cells that tell each admission rule at each door; a rule enforced before the door is
# reached cannot be told there: a batch's own door checks the rate before its lines' (the limits
# test above tells the lines' rate rule), and a key without "jobs" cannot upload a batch file.
MUTATIONS = [
    (d, r)
    for d, r in CELLS
    if not (d.startswith("batch_line") and RULE_CASES[r].admission_rule == "rate")
    and r not in ("quota", "nul")  # the same admission rules as rate_limit and bad_utf8
    and (d, r) != ("batch", "scope")  # without "jobs" the file upload is refused first
    and (d, r) != ("batch", "rate_limit")  # its lines check the rate too
    and (d, r) != ("batch", "bad_utf8")  # metadata's bounded strings: the schema refuses it first
]


@pytest.mark.parametrize(("door_name", "rule_name"), MUTATIONS, ids=[f"{d}-{r}" for d, r in MUTATIONS])
async def test_the_matrix_fails_when_a_rule_is_removed_from_a_door(
    strict_gateway: str, door_name: str, rule_name: str
) -> None:
    async with httpx.AsyncClient(base_url=strict_gateway, timeout=60) as http:
        with rule_removed(RULE_CASES[rule_name].admission_rule, door_name):
            response = await run_cell(http, door_name, rule_name)
    assert cell_holds(door_name, rule_name, response) is not None, f"{door_name} x {rule_name} held without its rule"


# ---- the cases outside the matrix, on the session's gateway (anonymous local mode) ----


async def test_anonymous_mode_never_drops_a_mesh_key_to_anonymous(http: httpx.AsyncClient, make_key) -> None:
    chat = chat_body("mock", "hi")
    assert (
        await http.post("/v1/chat/completions", json=chat, headers={"Authorization": "Bearer sk-no-key"})
    ).is_success
    assert (await http.post("/v1/chat/completions", json=chat)).is_success  # no credential at all
    key = await make_key(["chat"])
    for header in ("Bearer llmm_unknown", "Bearer"):
        refused = await http.post("/v1/chat/completions", json=chat, headers={"Authorization": header})
        assert refused.status_code == 401, (header, refused.text)
    assert (await http.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {key}"})).is_success


async def test_history_shows_a_caller_only_its_own_failed_requests(http: httpx.AsyncClient, make_key) -> None:
    key = {"Authorization": f"Bearer {await make_key(['chat', 'admin'])}"}
    failed = await http.post("/v1/chat/completions", json=chat_body("no-such-model", "hi"), headers=key)
    assert failed.status_code == 404
    request_id = failed.headers["x-request-id"]
    mine = (await http.get("/metrics/history", headers=key)).json()["recent_errors"]
    assert request_id in {error["request_id"] for error in mine}
    anonymous = (await http.get("/metrics/history")).json()["recent_errors"]
    assert request_id not in {error["request_id"] for error in anonymous}
    everyone = (await http.get("/metrics/history", headers={"Authorization": f"Bearer {admin_jwt()}"})).json()
    assert request_id in {error["request_id"] for error in everyone["recent_errors"]}


async def test_a_413_on_the_messages_api_is_in_anthropics_shape(http: httpx.AsyncClient) -> None:
    big = {"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "x" * 100_000}]}
    for path, shape in (("/v1/messages", "anthropic"), ("/v1/chat/completions", "openai")):
        response = await http.post(path, json=big)
        assert response.status_code == 413
        body = response.json()
        assert (
            (body["type"] == "error" and body["error"]["type"] == "request_too_large")
            if shape == "anthropic"
            else (body["error"]["code"] == "request_too_large")
        )
    # A declared length is refused before any of the body is read (raw HTTP: clients send what they declare).
    url = httpx.URL(str(http.base_url))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n")
    writer.write(f"content-length: {20 * 1024 * 1024}\r\nconnection: close\r\n\r\n".encode())
    await writer.drain()
    head, _, body = (await reader.read()).partition(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 413") and json.loads(body)["type"] == "error"


@pytest.mark.parametrize(
    "cursor",
    [
        base64.urlsafe_b64encode(b"[" * 3000).decode(),
        base64.urlsafe_b64encode(b'["2026-01-01T00:00:00+00:00", "job-\\u0000"]').decode(),
        "job\x00",
        "%%%",
    ],
)
async def test_forged_cursors_are_a_400(http: httpx.AsyncClient, cursor: str) -> None:
    for path, name in (("/v1/batches", "after"), ("/v1/jobs", "page_token"), ("/v1/files", "after")):
        response = await http.get(path, params={name: cursor})
        assert response.status_code == 400, (path, response.text)
        assert response.json()["error"]["param"] == name


async def test_nul_in_an_idempotency_key_or_a_job_id_is_a_400(http: httpx.AsyncClient) -> None:
    for field in ("idempotency_key", "job_id"):
        body = {"job_type": "embed", "request": embed_body("all-MiniLM-L6-v2", "hi"), field: "a\x00b"}
        response = await post("/internal/queue/enqueue", body)(http, {})
        assert response.status_code == 400, response.text


async def test_adapters_show_the_servers_paths_to_the_superuser_alone(http: httpx.AsyncClient, trained_job) -> None:
    mine = (await http.get("/v1/adapters")).json()["data"]
    assert mine and all("://" in place for adapter in mine for place in adapter.get("locations", []))
    admin = {"Authorization": f"Bearer {admin_jwt()}"}
    everything = (await http.get("/v1/adapters", headers=admin)).json()["data"]
    assert any("://" not in place for adapter in everything for place in adapter.get("locations", []))
