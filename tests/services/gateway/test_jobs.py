"""Async jobs through the gateway: the enqueue body of the design documents, /v1/jobs, SSE events,
with the session's scheduler running them on the real Gemma (background slot) and MiniLM."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest


def chat_body(**fields: object) -> dict[str, object]:
    return {
        "job_type": "chat",
        "request": {"messages": [{"role": "user", "content": "Say hi."}], "model": "background", "max_tokens": 6},
        "ttl_seconds": 300,
        **fields,
    }


async def events(http: httpx.AsyncClient, job_id: str, **headers: str) -> list[dict[str, object]]:
    """Every SSE event of /v1/jobs/{id}/events until [DONE]."""
    updates = []
    async with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                updates.append(json.loads(line.removeprefix("data: ")))
    return updates


async def test_enqueue_follow_and_read_a_chat_job(http: httpx.AsyncClient) -> None:
    body = chat_body(job_id=f"gw-{uuid.uuid4().hex[:8]}", idempotency_key="once")
    accepted = await http.post("/internal/queue/enqueue", json=body)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert job["id"].endswith(f".{body['job_id']}") and job["object"] == "job" and job["state"] in ("queued", "running")

    duplicate = await http.post("/internal/queue/enqueue", json=body)
    assert duplicate.status_code == 200 and duplicate.json()["id"] == job["id"]

    updates = await events(http, job["id"])
    assert updates[-1]["state"] == "succeeded", updates[-1]
    assert "running" in [u["state"] for u in updates]
    result = updates[-1]["result"]
    assert result["model"] == "gemma-3-270m" and result["message"]["content"][0]["text"]
    assert result["usage"]["completion_tokens"] <= 6

    read = (await http.get(f"/v1/jobs/{job['id']}")).json()
    assert read["state"] == "succeeded" and read["attempt"] == 1


async def test_embed_job(http: httpx.AsyncClient) -> None:
    body = {"job_type": "embed", "request": {"model": "all-MiniLM-L6-v2", "input": ["first", "second"]}}
    job = (await http.post("/internal/queue/enqueue", json=body)).json()
    final = (await events(http, job["id"]))[-1]
    assert final["state"] == "succeeded"
    assert len(final["result"]["embeddings"]) == 2 and final["result"]["dimensions"] == 384


async def test_jobs_of_another_key_are_not_found(http: httpx.AsyncClient, make_key) -> None:
    mine = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'])}"}
    theirs = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'])}"}
    job = (await http.post("/internal/queue/enqueue", json=chat_body(), headers=mine)).json()

    assert (await http.get(f"/v1/jobs/{job['id']}", headers=mine)).status_code == 200
    for response in (
        await http.get(f"/v1/jobs/{job['id']}", headers=theirs),
        await http.post(f"/v1/jobs/{job['id']}/cancel", headers=theirs),
        await http.get(f"/v1/jobs/{job['id']}/events", headers=theirs),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"
    listed = (await http.get("/v1/jobs", headers=theirs)).json()
    assert job["id"] not in [j["id"] for j in listed["data"]]
    listed = (await http.get("/v1/jobs", params={"job_type": "chat", "limit": 200}, headers=mine)).json()
    assert job["id"] in [j["id"] for j in listed["data"]] and listed["object"] == "list"


async def test_job_ids_are_each_owners_own(http: httpx.AsyncClient, make_key) -> None:
    """Two tenants choosing the same id get two jobs; neither learns the other chose it."""
    alice = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'])}"}
    bob = {"Authorization": f"Bearer {await make_key(['jobs', 'chat'])}"}
    first = await http.post("/internal/queue/enqueue", json=chat_body(job_id="report-1"), headers=alice)
    second = await http.post("/internal/queue/enqueue", json=chat_body(job_id="report-1"), headers=bob)
    assert first.status_code == second.status_code == 202, second.text
    assert first.json()["id"] != second.json()["id"] and first.json()["id"].endswith(".report-1")
    for headers, job in ((alice, first.json()), (bob, second.json())):
        for name in ("report-1", job["id"]):  # the id as chosen, or as returned
            assert (await http.get(f"/v1/jobs/{name}", headers=headers)).json()["id"] == job["id"]
    assert (await http.get(f"/v1/jobs/{first.json()['id']}", headers=bob)).status_code == 404
    again = await http.post("/internal/queue/enqueue", json=chat_body(job_id="report-1"), headers=alice)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]  # the same job, resubmitted


async def test_cancel_a_job(http: httpx.AsyncClient) -> None:
    body = chat_body()
    body["request"]["max_tokens"] = 400  # type: ignore[index]
    job = (await http.post("/internal/queue/enqueue", json=body)).json()
    cancelled = await http.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert (await events(http, job["id"]))[-1]["state"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"job_type": "transcribe", "request": {}}, 400, "job_type"),
        ({"job_type": "chat", "request": {"messages": []}}, 400, "request.messages"),
        ({"job_type": "chat", "request": {"messages": [{"role": "user", "content": "x"}], "n": 2}}, 400, "request"),
        ({"job_type": "adapter_train", "request": {"dataset": []}}, 400, "request.base_model"),
        ({"job_type": "adapter_train", "request": {"base_model": "x", "dataset": []}}, 400, "dataset"),
        (chat_body(callback_url="http://169.254.169.254/latest/meta-data"), 400, "callback_url"),
        (chat_body(ttl_seconds=0), 400, "ttl_seconds"),
        (chat_body(priority=2_147_483_647), 400, "priority"),  # an API key's jobs may not jump every queue
    ],
)
async def test_bad_enqueue_bodies(http: httpx.AsyncClient, body: dict[str, object], status: int, param: str) -> None:
    response = await http.post("/internal/queue/enqueue", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and param in (error["param"] or "")


async def test_unknown_job_is_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/v1/jobs/no-such-job")
    assert response.status_code == 404 and response.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("hostile", ["' OR '1'='1", "x'; DROP TABLE jobs; --"])
async def test_sql_metacharacters_in_job_fields_are_data(http: httpx.AsyncClient, hostile: str) -> None:
    as_id = await http.post("/internal/queue/enqueue", json=chat_body(job_id=hostile))
    assert as_id.status_code == 400 and as_id.json()["error"]["param"] == "job_id"
    as_key = await http.post("/internal/queue/enqueue", json=chat_body(idempotency_key=hostile))
    assert as_key.status_code == 202 and as_key.json()["idempotency_key"] == hostile
    again = await http.post("/internal/queue/enqueue", json=chat_body(idempotency_key=hostile))
    assert again.status_code == 200 and again.json()["id"] == as_key.json()["id"]
    assert (await http.get(f"/v1/jobs/{hostile}")).status_code == 404
    await http.post(f"/v1/jobs/{as_key.json()['id']}/cancel")
