"""API keys, superuser JWTs, limits and hostile input at the gateway, on a gateway that
requires keys (no local-development mode), with the mock models behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import anthropic
import httpx
import jwt
import pytest

from services.common.postgres import open_pool
from services.gateway import api_keys
from services.gateway.app import build_app
from services.gateway.auth import mint_jwt
from services.gateway.cli import main as cli
from services.gateway.config import GatewaySettings
from services.inference.server.server import InferenceServer
from tests.conftest import JWT_SECRET, gateway_settings, serve_http


@pytest.fixture
async def strict(
    fresh_database_url: str, inference: InferenceServer
) -> AsyncIterator[tuple[httpx.AsyncClient, GatewaySettings]]:
    settings = gateway_settings(
        allow_anonymous=False,
        database_url=fresh_database_url,
        inference_target=f"127.0.0.1:{inference.port}",
        max_messages=4,
        max_tokens_cap=64,
        max_choices=2,
    )
    server, task, url = await serve_http(build_app(settings))
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        yield http, settings
    server.should_exit = True
    await task


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat(model: str = "mock", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def new_key(http: httpx.AsyncClient, settings: GatewaySettings, **fields: object) -> tuple[str, str]:
    admin = bearer(mint_jwt(settings, "tests", 600))
    response = await http.post("/admin/keys", json={"name": "k", "scopes": ["chat"], **fields}, headers=admin)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["key"].startswith("llmm_") and body["key"] not in body["hint"]
    return body["key"], body["id"]


async def key_usage(http: httpx.AsyncClient, admin: dict[str, str], key_id: str) -> dict[str, int]:
    listed = (await http.get("/admin/keys", headers=admin)).json()["data"]
    assert all("key" not in k for k in listed)  # the key itself is never shown again
    return next(k["usage"] for k in listed if k["id"] == key_id)


async def test_keys_missing_bad_revoked_scoped_and_model_limited(strict) -> None:
    http, settings = strict
    assert (await http.post("/v1/chat/completions", json=chat())).status_code == 401
    assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer("llmm_nope"))).status_code == 401

    key, key_id = await new_key(http, settings, models=["mock"])
    ok = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert ok.status_code == 200, ok.text
    other_model = await http.post("/v1/chat/completions", json=chat("mock-slow"), headers=bearer(key))
    assert other_model.status_code == 403 and other_model.json()["error"]["code"] == "model_not_allowed"
    no_scope = await http.post("/v1/embeddings", json={"model": "x", "input": "hi"}, headers=bearer(key))
    assert no_scope.status_code == 403 and no_scope.json()["error"]["code"] == "missing_scope"

    admin = bearer(mint_jwt(settings, "tests", 600))
    async with asyncio.timeout(10):  # usage is written in the background
        while not (usage := await key_usage(http, admin, key_id))["requests"]:
            await asyncio.sleep(0.05)
    last_used = usage.pop("last_used_at")
    assert usage == {"requests": 1, "prompt_tokens": 1, "completion_tokens": 2}
    assert 0 <= time.time() - last_used < 120  # the minute it was used in
    assert (await http.delete(f"/admin/keys/{key_id}", headers=admin)).json()["revoked_at"]
    revoked = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": -60},  # expired
        {"iss": "someone-else"},
        {"aud": "another-service"},
        {"exp": 100 * 365 * 24 * 3600},  # a hundred years: past the longest lifetime accepted (24 h)
    ],
)
async def test_bad_jwts_are_refused(strict, claims: dict[str, object]) -> None:
    http, settings = strict
    now = int(time.time())
    payload = {"sub": "x", "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "iat": now, **claims}
    payload["exp"] = now + int(claims.get("exp", 600))  # type: ignore[call-overload]
    token = jwt.encode(payload, JWT_SECRET, algorithm="HS256")
    assert (await http.get("/settings/", headers=bearer(token))).status_code == 401


async def test_alg_none_wrong_secret_and_app_keys_never_reach_admin(strict) -> None:
    http, settings = strict
    claims = {"sub": "x", "iss": settings.jwt_issuer, "aud": settings.jwt_audience, "exp": int(time.time()) + 600}
    unsigned = jwt.encode(claims, key=None, algorithm="none")
    forged = jwt.encode(claims, "a-guessed-secret-that-is-long-enough-0123", algorithm="HS256")
    for token in (unsigned, forged):
        assert (await http.get("/settings/", headers=bearer(token))).status_code == 401
    key, _ = await new_key(http, settings, scopes=["chat", "embeddings", "jobs", "admin"])
    calls = (
        http.get("/settings/", headers=bearer(key)),
        http.post("/admin/keys", json={}, headers=bearer(key)),
        http.get("/admin/processes", headers=bearer(key)),  # pids, and logs that may hold anything
        http.get("/admin/logs/gateway", headers=bearer(key)),
    )
    for call in calls:
        response = await call
        assert response.status_code == 403 and response.json()["error"]["code"] == "admin_needs_jwt"
    assert (await http.get("/settings/", headers=bearer(mint_jwt(settings, "x", 60)))).status_code == 200


async def test_rate_limits_hit_exactly_at_the_configured_numbers(strict) -> None:
    http, settings = strict
    key, _ = await new_key(http, settings, rpm_limit=3)
    codes = [(await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    limited = await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))
    assert limited.json()["error"]["type"] == "rate_limit_error" and 1 <= int(limited.headers["retry-after"]) <= 60

    key, _ = await new_key(http, settings, tpm_limit=5)  # "[mock-text:mock] hi" costs 1 + 2 tokens
    codes = [(await http.post("/v1/chat/completions", json=chat(), headers=bearer(key))).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


async def test_concurrent_streams_are_limited(strict) -> None:
    http, settings = strict
    key, _ = await new_key(http, settings, stream_limit=1)
    slow = chat("mock-slow", stream=True, messages=[{"role": "user", "content": " ".join(["w"] * 40)}])
    async with http.stream("POST", "/v1/chat/completions", json=slow, headers=bearer(key)) as first:
        assert first.status_code == 200
        second = await http.post("/v1/chat/completions", json=slow, headers=bearer(key))
        assert second.status_code == 429 and second.json()["error"]["code"] == "rate_limited"
        async for _ in first.aiter_lines():
            pass
    again = await http.post("/v1/chat/completions", json=chat(stream=True), headers=bearer(key))
    assert again.status_code == 200  # the slot came back when the stream ended


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(messages=[{"role": "user", "content": "x"}] * 5), "messages"),
        (chat(max_tokens=65), "max_tokens"),
        (chat(n=3), "n"),
    ],
)
async def test_oversize_inputs_are_400_before_any_backend(strict, body: dict[str, object], param: str) -> None:
    http, settings = strict
    key, _ = await new_key(http, settings)
    response = await http.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert response.status_code == 400 and response.json()["error"]["param"] == param


async def test_a_prompt_longer_than_the_context_is_400(strict) -> None:
    http, settings = strict
    key, _ = await new_key(http, settings)
    long = chat("gemma-3-270m", messages=[{"role": "user", "content": "word " * 3000}])  # context: 2048
    response = await http.post("/v1/chat/completions", json=long, headers=bearer(key))
    assert response.status_code == 400 and "context window" in response.json()["error"]["message"]


@pytest.mark.parametrize("hostile", ["' OR '1'='1", "x'; DROP TABLE api_keys; --", '\\x00"\\', "llmm_'||'"])
async def test_sql_metacharacters_are_data(strict, hostile: str) -> None:
    http, settings = strict
    assert (await http.post("/v1/chat/completions", json=chat(), headers=bearer(hostile))).status_code == 401
    key, _ = await new_key(http, settings, scopes=["chat", "jobs"])
    as_model = await http.post("/v1/chat/completions", json=chat(hostile), headers=bearer(key))
    assert as_model.status_code == 404  # an unknown model, nothing more
    job = await http.get(f"/v1/jobs/{hostile}", headers=bearer(key))
    assert job.status_code in (404, 503)  # no scheduler behind this gateway: never a 500
    assert (await http.get("/admin/keys", headers=bearer(mint_jwt(settings, "x", 60)))).status_code == 200


def test_exposure_rules() -> None:
    with pytest.raises(SystemExit, match="not loopback"):
        build_app(gateway_settings(host="0.0.0.0"))
    with pytest.raises(SystemExit, match="without auth"):
        build_app(gateway_settings(allow_anonymous=False))
    with pytest.raises(SystemExit, match="shorter than 32 bytes"):
        build_app(gateway_settings(jwt_secret="short"))


async def test_cli_creates_lists_revokes_keys_and_mints_tokens(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    monkeypatch.setenv("LLMMESH_API_KEY_SECRET", "cli-test-secret-of-at-least-32-bytes!!")
    monkeypatch.setenv("LLMMESH_JWT_SECRET", JWT_SECRET)
    import json

    quotas = '{"max_priority": 50}'
    await asyncio.to_thread(
        cli, ["keys", "create", "--name", "ci", "--scopes", "chat,jobs", "--rpm", "10", "--quotas", quotas]
    )
    created = json.loads(capsys.readouterr().out)
    assert created["key"].startswith("llmm_") and created["limits"]["rpm"] == 10
    assert created["quotas"] == {"max_priority": 50}
    await asyncio.to_thread(cli, ["keys", "list"])
    assert [k["name"] for k in json.loads(capsys.readouterr().out)] == ["ci"]
    await asyncio.to_thread(cli, ["keys", "revoke", created["id"]])
    assert json.loads(capsys.readouterr().out)["revoked_at"]
    await asyncio.to_thread(cli, ["token", "--subject", "ops", "--ttl", "60"])
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="llmmesh", issuer="llmmesh")
    assert claims["sub"] == "ops" and claims["exp"] - claims["iat"] == 60


async def test_rs256_tokens_verify_against_the_public_key(fresh_database_url: str, inference: InferenceServer) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    settings = gateway_settings(
        jwt_algorithm="RS256", jwt_public_key=public_pem, inference_target=f"127.0.0.1:{inference.port}"
    )
    server, task, url = await serve_http(build_app(settings))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            good = mint_jwt(settings, "ops", 60, private_key=private_pem)
            assert (await http.get("/settings/", headers=bearer(good))).status_code == 200
            # An HS256 token "signed" with the public key (the classic confusion attack) is refused.
            claims = jwt.decode(good, options={"verify_signature": False})
            confused = jwt.encode(claims, JWT_SECRET, algorithm="HS256")
            assert (await http.get("/settings/", headers=bearer(confused))).status_code == 401
    finally:
        server.should_exit = True
        await task


async def test_random_bearer_tokens_do_not_grow_the_key_cache_without_bound(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_keys, "CACHE_MAX_ENTRIES", 20)
    pool = await open_pool(fresh_database_url)
    try:
        store = api_keys.ApiKeyStore(pool, b"k" * 32)
        await store.migrate()
        for index in range(100):
            assert await store.find(f"llmm_random-{index}") is None
        assert len(store._cache) <= 20
    finally:
        await pool.close()


async def test_anthropic_clients_authenticate_with_x_api_key(strict) -> None:
    http, settings = strict
    key, _ = await new_key(http, settings)
    claude = anthropic.AsyncAnthropic(base_url=str(http.base_url), api_key=key, max_retries=0)
    message = await claude.messages.create(model="mock", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert message.content[0].text == "[mock-text:mock] hi"  # type: ignore[union-attr]
    stranger = anthropic.AsyncAnthropic(base_url=str(http.base_url), api_key="llmm_not-a-key", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as refused:
        await stranger.messages.create(model="mock", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
