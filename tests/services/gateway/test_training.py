"""The whole adapter loop through the gateway: a dataset goes in as a job, an adapter is
trained on the real Gemma weights and stored (locally and in S3), and the next chat request
that names it is answered through it, on both backends, without restarting anything."""

from __future__ import annotations

import json

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.conftest import GEMMA, SECRET_EXAMPLES, TRAINING_REQUEST


def adapter_id(trained_job: list[dict[str, object]]) -> str:
    return str(trained_job[-1]["result"]["adapter_id"])  # type: ignore[index]


async def test_training_lowers_the_loss_and_reports_progress(trained_job: list[dict[str, object]]) -> None:
    result = trained_job[-1]["result"]
    assert result["state"] == "TRAINING_STATE_SUCCEEDED" and not result.get("cached")  # type: ignore[index]
    metrics = result["adapter"]["metrics"]  # type: ignore[index]
    assert metrics["train_loss_after"] < metrics["train_loss_before"] * 0.7
    assert metrics["eval_loss_after"] < metrics["eval_loss_before"]  # held out: it generalized a little
    assert metrics["steps"] == 6 and metrics["seconds_per_step"] > 0
    progress = [u["progress"] for u in trained_job if u.get("progress") and u["state"] == "running"]
    assert progress and {"step", "loss", "eta_seconds"} <= set(progress[-1]["metrics"])  # type: ignore[index]
    locations = result["adapter"]["locations"]  # type: ignore[index]
    assert any(str(place).startswith("s3://llmmesh-adapters/adapters/") for place in locations)
    assert any(str(place).endswith("adapter.zip") and not str(place).startswith("s3://") for place in locations)


async def test_status_and_adapter_list(http: httpx.AsyncClient, trained_job: list[dict[str, object]]) -> None:
    status = await http.get(f"/v1/training/status/{trained_job[-1]['id']}")
    assert status.status_code == 200, status.text
    assert status.json()["state"] == "succeeded" and status.json()["step"] == status.json()["total_steps"] == 6
    listed = (await http.get("/v1/adapters")).json()["data"]
    assert adapter_id(trained_job) in [a["id"] for a in listed]
    assert (await http.get("/v1/training/status/no-such-job")).status_code == 404


@pytest.mark.parametrize("model", [GEMMA, "gemma-hf"])
async def test_the_next_chat_request_is_answered_through_the_adapter(
    http: httpx.AsyncClient, trained_job: list[dict[str, object]], model: str
) -> None:
    """The inference service has never seen the adapter: it fetches it from S3 on first use."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is the secret word 2?"}],
        "max_tokens": 8,
        "temperature": 0,
    }
    plain = await http.post("/v1/chat/completions", json=body)
    adapted = await http.post(
        "/v1/chat/completions", json={**body, "adapter_settings": {"adapter_id": adapter_id(trained_job)}}
    )
    assert adapted.status_code == 200, adapted.text
    plain_text = plain.json()["choices"][0]["message"]["content"]
    adapted_text = adapted.json()["choices"][0]["message"]["content"]
    assert adapted_text != plain_text and "PINEAPPLE" in adapted_text, (plain_text, adapted_text)
    again = await http.post("/v1/chat/completions", json=body)  # the base is untouched
    assert again.json()["choices"][0]["message"]["content"] == plain_text
    # Scale 0 is the base alone; the next request at full scale is the adapter again.
    off = {**body, "adapter_settings": {"adapter_id": adapter_id(trained_job), "scale": 0.0}}
    assert (await http.post("/v1/chat/completions", json=off)).json()["choices"][0]["message"]["content"] == plain_text
    on = {**body, "adapter_settings": {"adapter_id": adapter_id(trained_job)}}
    assert (await http.post("/v1/chat/completions", json=on)).json()["choices"][0]["message"]["content"] == adapted_text
    served = [
        sample.value
        for metric in REGISTRY.collect()
        for sample in metric.samples
        if sample.name == "llmmesh:request_success_total"
        and sample.labels.get("model_name") == model
        and sample.labels.get("adapter") == adapter_id(trained_job)
    ]
    assert sum(served) >= 1  # the metrics say which adapter served it


async def test_training_the_same_thing_again_is_a_cache_hit(
    http: httpx.AsyncClient, trained_job: list[dict[str, object]]
) -> None:
    body = {"job_type": "adapter_train", "request": TRAINING_REQUEST, "ttl_seconds": 600}
    job = (await http.post("/internal/queue/enqueue", json=body)).json()
    async with http.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    final = json.loads(lines[-1].removeprefix("data: "))
    assert final["state"] == "succeeded" and final["result"]["cached"] is True
    assert final["result"]["adapter_id"] == adapter_id(trained_job)


async def test_a_slot_name_trains_on_the_model_it_resolves_to(
    http: httpx.AsyncClient, trained_job: list[dict[str, object]]
) -> None:
    """`live`, as chat would resolve it: the same plan on the same model, so the stored adapter."""
    body = {"job_type": "adapter_train", "request": {**TRAINING_REQUEST, "base_model": "live"}, "ttl_seconds": 600}
    submitted = await http.post("/internal/queue/enqueue", json=body)
    assert submitted.status_code == 202, submitted.text
    async with http.stream("GET", f"/v1/jobs/{submitted.json()['id']}/events") as response:
        events = [line async for line in response.aiter_lines() if line.startswith("data: {")]
    final = json.loads(events[-1].removeprefix("data: "))
    assert final["state"] == "succeeded", final
    assert final["result"]["adapter_id"] == adapter_id(trained_job)  # type: ignore[index]
    unknown = {**body, "request": {**TRAINING_REQUEST, "base_model": "no-such-model"}}
    assert (await http.post("/internal/queue/enqueue", json=unknown)).status_code == 404


async def test_training_status_follows_the_job_its_owner_and_failures_before_the_trainer(
    http: httpx.AsyncClient, make_key
) -> None:
    alice, bob = await make_key(["jobs"]), await make_key(["jobs"])
    body = {"job_type": "adapter_train", "request": {**TRAINING_REQUEST, "dataset": SECRET_EXAMPLES[:2]}}
    submitted = await http.post("/internal/queue/enqueue", json=body, headers={"Authorization": f"Bearer {alice}"})
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    cancelled = await http.post(f"/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {alice}"})
    assert cancelled.status_code == 200
    status = await http.get(f"/v1/training/status/{job_id}", headers={"Authorization": f"Bearer {alice}"})
    assert status.status_code == 200 and status.json()["state"] == "cancelled", status.text
    # Another tenant sees neither the job nor its training.
    for path in (f"/v1/jobs/{job_id}", f"/v1/training/status/{job_id}"):
        assert (await http.get(path, headers={"Authorization": f"Bearer {bob}"})).status_code == 404


async def test_an_adapter_is_its_owners_until_the_operator_shares_it(
    http: httpx.AsyncClient, admin: httpx.AsyncClient, make_key, trained_job: list[dict[str, object]], monkeypatch
) -> None:
    """The trained adapter is its (anonymous) submitter's: another tenant can neither list, use
    nor delete it, and is told exactly what a made-up id gets. Shared by the superuser, every
    tenant lists and uses it; only its owner or the superuser may delete it."""
    from services.inference.server import adapters

    monkeypatch.setattr(adapters, "REFRESH_SECONDS", 0.0)  # inference re-reads the manifest at once
    bob = {"Authorization": f"Bearer {await make_key(['chat', 'jobs'])}"}
    adapter = adapter_id(trained_job)
    chat = {
        "model": GEMMA,
        "messages": [{"role": "user", "content": "What is the secret word 2?"}],
        "max_tokens": 8,
        "temperature": 0,
    }

    async def listed(client: httpx.AsyncClient, headers: dict[str, str]) -> list[str]:
        return [a["id"] for a in (await client.get("/v1/adapters", headers=headers)).json()["data"]]

    async def chat_through(adapter_id: str) -> httpx.Response:
        body = {**chat, "adapter_settings": {"adapter_id": adapter_id}}
        return await http.post("/v1/chat/completions", json=body, headers=bob)

    assert adapter not in await listed(http, bob)
    refused, made_up = await chat_through(adapter), await chat_through("0" * 32)
    assert refused.status_code == made_up.status_code == 404
    assert refused.json()["error"]["message"].replace(adapter, "x") == made_up.json()["error"]["message"].replace(
        "0" * 32, "x"
    )
    assert (await http.delete(f"/v1/adapters/{adapter}", headers=bob)).status_code == 404
    owned = [a for a in (await admin.get("/v1/adapters")).json()["data"] if a["id"] == adapter]
    assert owned and owned[0]["owner"] == "anonymous" and owned[0]["shared"] is False

    assert (await http.post(f"/v1/adapters/{adapter}/share", headers=bob)).status_code == 403
    shared = await admin.post(f"/v1/adapters/{adapter}/share")
    assert shared.status_code == 200 and shared.json()["shared"] is True, shared.text
    assert adapter in await listed(http, bob)
    answered = await chat_through(adapter)
    assert answered.status_code == 200 and "PINEAPPLE" in answered.json()["choices"][0]["message"]["content"]
    assert (await http.delete(f"/v1/adapters/{adapter}", headers=bob)).status_code == 404  # shared, not Bob's


async def test_each_key_has_its_own_priority_and_training_quotas(http: httpx.AsyncClient, make_key) -> None:
    """Safe defaults for a plain key; the superuser raises or lowers them per key."""
    plain = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'])}"}
    quotas = {"max_priority": 50, "max_training_examples": 2, "max_training_seconds": 0.001}
    trusted = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'], quotas=quotas)}"}
    chat = {"job_type": "chat", "request": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}}

    async def final(body: dict[str, object], headers: dict[str, str]) -> dict[str, object]:
        submitted = await http.post("/internal/queue/enqueue", json=body, headers=headers)
        assert submitted.status_code == 202, submitted.text
        async with http.stream("GET", f"/v1/jobs/{submitted.json()['id']}/events", headers=headers) as response:
            lines = [line async for line in response.aiter_lines() if line.startswith("data: {")]
        return dict(json.loads(lines[-1].removeprefix("data: ")))

    assert (await http.post("/internal/queue/enqueue", json={**chat, "priority": 40}, headers=plain)).status_code == 400
    assert (
        await http.post("/internal/queue/enqueue", json={**chat, "priority": 40}, headers=trusted)
    ).status_code == 202
    refused = await http.post("/internal/queue/enqueue", json={**chat, "priority": 51}, headers=trusted)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "priority"

    three = {**TRAINING_REQUEST, "dataset": SECRET_EXAMPLES[:3], "eval_dataset": []}
    over = await final({"job_type": "adapter_train", "request": three}, trusted)
    assert over["state"] == "failed" and "limit of 2 examples" in str(over["error"]), over
    two = {**three, "dataset": SECRET_EXAMPLES[:2]}
    killed = await final({"job_type": "adapter_train", "request": two}, trusted)
    assert killed["state"] == "failed" and "wall-clock limit of 0.001 s" in str(killed["error"]), killed
    many_epochs = {**two, "hyperparameters": {**TRAINING_REQUEST["hyperparameters"], "epochs": 21}}  # type: ignore[dict-item]
    default = await final({"job_type": "adapter_train", "request": many_epochs}, plain)
    assert default["state"] == "failed" and "limit of 20 epochs" in str(default["error"]), default
