"""The embeddings service through gRPC, on the real all-MiniLM-L6-v2 model."""

import asyncio

import grpc
import numpy as np
import pytest

from llmmesh.embeddings.v1 import embeddings_service_pb2 as pb
from llmmesh.embeddings.v1 import embeddings_service_pb2_grpc as pb_grpc
from services.common.grpc_client import open_channel
from services.embeddings.server import EmbeddingsServer
from tests.conftest import INTERNAL_TOKEN


@pytest.fixture
async def stub(embeddings: EmbeddingsServer):
    async with open_channel(f"127.0.0.1:{embeddings.port}", INTERNAL_TOKEN) as channel:
        yield pb_grpc.EmbeddingsServiceStub(channel)


def vectors(response: pb.EmbedResponse) -> np.ndarray:
    return np.array([list(e.values) for e in response.embeddings])


async def test_embed_returns_unit_vectors_of_384(stub) -> None:
    response = await stub.Embed(pb.EmbedRequest(texts=["A cat sits on the mat.", "Stocks fell sharply today."]))
    assert response.model == "all-MiniLM-L6-v2"
    assert response.dimensions == 384
    matrix = vectors(response)
    assert matrix.shape == (2, 384)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
    assert response.usage.prompt_tokens == sum(e.token_count for e in response.embeddings) > 0


async def test_similar_sentences_are_closer(stub) -> None:
    texts = ["The cat sleeps on the sofa.", "A kitten is napping on the couch.", "The central bank raised rates."]
    cat, kitten, bank = vectors(await stub.Embed(pb.EmbedRequest(texts=texts)))
    assert cat @ kitten > cat @ bank + 0.2


async def test_dimensions_truncates_then_normalizes(stub) -> None:
    full = vectors(await stub.Embed(pb.EmbedRequest(texts=["hello"], normalize=False)))[0]
    short = vectors(await stub.Embed(pb.EmbedRequest(texts=["hello"], dimensions=64)))[0]
    assert short.shape == (64,)
    assert np.allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-5)


async def test_long_text_is_truncated_and_says_so(stub) -> None:
    response = await stub.Embed(pb.EmbedRequest(texts=["word " * 1000]))
    assert response.embeddings[0].truncated
    assert response.embeddings[0].token_count == 256


async def test_concurrent_requests_are_micro_batched(stub, embeddings: EmbeddingsServer) -> None:
    stats = embeddings.engine.batcher.stats
    before_batches, before_items = stats.batches, stats.items
    texts = [f"sentence number {i}" for i in range(24)]
    responses = await asyncio.gather(*(stub.Embed(pb.EmbedRequest(texts=[t])) for t in texts))
    assert all(len(r.embeddings) == 1 for r in responses)
    assert stats.items - before_items == 24
    assert stats.batches - before_batches < 24  # merged: fewer model calls than requests


async def test_rerank_orders_by_relevance_with_cosine(stub) -> None:
    documents = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]
    response = await stub.Rerank(
        pb.RerankRequest(query="What is the capital of France?", documents=documents, top_n=2, return_documents=True)
    )
    assert response.scorer == pb.SCORER_COSINE
    assert {r.index for r in response.results} == {0, 2}
    assert response.results[0].document in (documents[0], documents[2])
    assert response.results[0].relevance_score >= response.results[1].relevance_score


@pytest.mark.parametrize(
    ("request_message", "param"),
    [
        (pb.EmbedRequest(texts=[]), "input"),
        (pb.EmbedRequest(texts=["x"] * 17), "input"),
        (pb.EmbedRequest(texts=["  "]), "input"),
        (pb.EmbedRequest(texts=["x" * 5001]), "input"),
        (pb.EmbedRequest(texts=["x"], dimensions=385), "dimensions"),
    ],
)
async def test_bad_embed_input_is_invalid_argument(stub, request_message, param) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Embed(request_message)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_model_is_not_found(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Embed(pb.EmbedRequest(model="text-embedding-3-large", texts=["x"]))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_alias_resolves(stub) -> None:
    response = await stub.Embed(pb.EmbedRequest(model="sentence-transformers/all-MiniLM-L6-v2", texts=["x"]))
    assert response.model == "all-MiniLM-L6-v2"
