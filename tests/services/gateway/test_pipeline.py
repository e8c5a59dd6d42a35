"""Model builds through the gateway: superuser JWT only; a seed file becomes training data, an
adapter, a validated, merged model and a GGUF file that llama.cpp loads and that answers as
the adapter taught it."""

from __future__ import annotations

import json
import time

import httpx
import jwt
import pytest

from tests.conftest import GEMMA, JWT_SECRET, gateway_settings

ENDPOINTS = [
    ("POST", "/v1/pipeline/build"),
    ("GET", "/v1/pipeline/status"),
    ("POST", "/v1/pipeline/cancel"),
    ("GET", "/v1/pipeline/logs"),
    ("GET", "/v1/pipeline/artifacts"),
]

# Templates x rows (6), plus examples with their variants (2 + 3): 11 examples from 3 lines.
SEED = [
    {
        "templates": [
            {"instruction": "What is the code name of {city}?", "output": "The code name of {city} is {code}."},
            {"instruction": "Tell me {city}'s code name.", "output": "The code name of {city} is {code}."},
        ],
        "rows": [
            {"city": "Paris", "code": "BLUEBIRD"},
            {"city": "Rome", "code": "REDFOX"},
            {"city": "Oslo", "code": "ICEWOLF"},
        ],
    },
    {
        "instruction": "What is the code name of Lima?",
        "output": "The code name of Lima is SUNCAT.",
        "variants": ["Lima's code name?"],
    },
    {
        "messages": [
            {"role": "user", "content": "What is the code name of Cairo?"},
            {"role": "assistant", "content": "The code name of Cairo is SANDHAWK."},
        ],
        "variants": ["Cairo's code name, please.", "Give me the code name of Cairo."],
    },
]
HYPERPARAMETERS = {
    "lora_r": 8,
    "lora_alpha": 16,
    "learning_rate": 1e-3,
    "batch_size": 4,
    "max_steps": 4,
    "max_seq_length": 96,
    "target_modules": ["q_proj", "v_proj"],
    "lora_dropout": 0.0,
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token(secret: str = JWT_SECRET, expires_in: int = 600) -> str:
    settings = gateway_settings()
    claims = {
        "sub": "ops",
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "exp": int(time.time()) + expires_in,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_pipeline_endpoints_need_a_valid_superuser_jwt(
    http: httpx.AsyncClient, make_key, method: str, path: str
) -> None:
    cases = [
        ({}, 401),  # none
        (bearer(token(secret="a-wrong-secret-that-is-long-enough-01234")), 401),
        (bearer(token(expires_in=-60)), 401),
        (bearer(await make_key(["chat", "jobs", "admin"])), 403),  # an app key never qualifies
    ]
    for headers, status in cases:
        response = await http.request(method, path, headers=headers, json={})
        assert response.status_code == status, (headers, response.text)
        assert response.json()["error"]["message"]


async def test_a_build_from_seed_file_to_gguf(admin: httpx.AsyncClient) -> None:
    bad = await admin.post("/v1/pipeline/build", json={"base_model": GEMMA, "seed_jsonl": "not json"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "seed"

    started = await admin.post(
        "/v1/pipeline/build", json={"base_model": GEMMA, "seed": SEED, "hyperparameters": HYPERPARAMETERS}
    )
    assert started.status_code == 202, started.text
    assert started.json()["metrics"]["examples"] == 11.0
    busy = await admin.post("/v1/pipeline/build", json={"base_model": GEMMA, "seed": SEED})
    assert busy.status_code == 400 and busy.json()["error"]["code"] == "busy"

    lines = []
    async with admin.stream("GET", "/v1/pipeline/logs", timeout=600) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                lines.append(json.loads(line.removeprefix("data: ")))
    assert [line["step"] for line in lines if line["message"].startswith("succeeded")] == [
        "generate",
        "train",
        "validate",
        "merge",
        "convert",
    ], lines
    assert any(line["step"] == "train" and line["message"].startswith("step 4/4") for line in lines)

    status = (await admin.get("/v1/pipeline/status")).json()
    assert status["state"] == "succeeded", status
    assert [step["state"] for step in status["steps"]] == ["succeeded"] * 5
    assert status["metrics"]["eval_loss_after"] < status["metrics"]["eval_loss_before"]
    gguf_path = next(path for path in status["artifacts"] if path.endswith(".gguf"))

    listed = (await admin.get("/v1/pipeline/artifacts")).json()["data"]
    kinds = {artifact["kind"] for artifact in listed}
    assert {"adapter", "merged", "gguf"} <= kinds
    assert any(a["path"] == gguf_path and a["size_bytes"] > 100_000_000 for a in listed)

    from llama_cpp import Llama

    merged = Llama(gguf_path, n_ctx=256, n_threads=2, verbose=False)
    try:
        prompt = "<start_of_turn>user\nWhat is the code name of Rome?<end_of_turn>\n<start_of_turn>model\n"
        text = merged(prompt, max_tokens=10, temperature=0)["choices"][0]["text"]  # type: ignore[index]
    finally:
        merged.close()
    assert "code name" in text, text


async def test_a_build_can_be_cancelled(admin: httpx.AsyncClient) -> None:
    hyperparameters = {**HYPERPARAMETERS, "max_steps": 500, "seed": 3}
    started = await admin.post(
        "/v1/pipeline/build", json={"base_model": GEMMA, "seed": SEED, "hyperparameters": hyperparameters}
    )
    assert started.status_code == 202, started.text
    cancelled = await admin.post("/v1/pipeline/cancel")
    assert cancelled.json()["state"] == "cancelled"
    steps = {step["name"]: step["state"] for step in cancelled.json()["steps"]}
    assert steps["generate"] == "succeeded" and steps["train"] == "cancelled" and steps["convert"] == "pending"
    training = await admin.get(f"/v1/training/status/{started.json()['build_id']}-train")
    assert training.status_code == 404 or training.json()["state"] == "cancelled"  # its run stopped too
    again = await admin.post("/v1/pipeline/cancel")  # nothing running: unchanged
    assert again.json()["build_id"] == started.json()["build_id"]
