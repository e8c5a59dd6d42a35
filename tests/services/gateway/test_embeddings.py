"""/v1/embeddings through the official openai SDK, and /v1/rerank, against the real embedding model."""

import base64

import numpy as np
import pytest


async def test_openai_sdk_embeddings(client) -> None:
    texts = ["The cat sleeps on the sofa.", "A kitten is napping on the couch.", "The central bank raised rates."]
    response = await client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
    assert [item.index for item in response.data] == [0, 1, 2]
    assert all(item.object == "embedding" for item in response.data)
    matrix = np.array([item.embedding for item in response.data])
    assert matrix.shape == (3, 384)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    cat, kitten, bank = matrix
    assert cat @ kitten > cat @ bank
    assert response.usage.prompt_tokens == response.usage.total_tokens > 0
    assert response.model == "all-MiniLM-L6-v2"


async def test_base64_decodes_to_the_float_vector(http) -> None:
    body = {"model": "all-MiniLM-L6-v2", "input": "same text"}
    as_float = (await http.post("/v1/embeddings", json=body)).json()["data"][0]["embedding"]
    encoded = (await http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_float, atol=1e-6)


async def test_dimensions(client) -> None:
    response = await client.embeddings.create(model="all-MiniLM-L6-v2", input="hello", dimensions=128)
    assert len(response.data[0].embedding) == 128


async def test_rerank(http) -> None:
    body = {
        "model": "all-MiniLM-L6-v2",
        "query": "How do I bake bread?",
        "documents": ["Knead the dough and let it rise.", "The stock market closed higher.", {"text": "Bake at 220C."}],
        "top_n": 2,
    }
    for path in ("/v1/rerank", "/rerank", "/v2/rerank"):
        response = (await http.post(path, json=body)).json()
        assert response["scorer"] == "cosine"
        assert [r["index"] for r in response["results"]] != [1]
        assert {r["index"] for r in response["results"]} == {0, 2}
        assert response["results"][0]["relevance_score"] >= response["results"][1]["relevance_score"]
        assert "text" in response["results"][0]["document"]
        assert response["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": []}, 400, "input"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": [[1, 2, 3]]}, 400, "input"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": ["x"] * 17}, 400, "input"),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x" * 6000}, 400, "input"),
        (
            "/v1/embeddings",
            {"model": "all-MiniLM-L6-v2", "input": "x", "encoding_format": "int8"},
            400,
            "encoding_format",
        ),
        ("/v1/embeddings", {"model": "all-MiniLM-L6-v2", "input": "x", "dimensions": 0}, 400, "dimensions"),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
        ("/v1/rerank", {"model": "all-MiniLM-L6-v2", "query": "", "documents": ["a"]}, 400, "query"),
        ("/v1/rerank", {"model": "all-MiniLM-L6-v2", "query": "q", "documents": []}, 400, "documents"),
    ],
)
async def test_bad_input(http, path, body, status, param) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


async def test_embedding_model_is_listed(client) -> None:
    model = await client.models.retrieve("sentence-transformers/all-MiniLM-L6-v2")
    assert model.id == "all-MiniLM-L6-v2"
