"""Admission's input hygiene and error quoting, without servers."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, MeshError, ResourceExhausted, quote
from services.gateway.admission import check_text
from services.gateway.protocol.batches import BatchCreateIn, check_input_lines
from services.scheduler.handlers import is_retryable, is_transient


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"messages": [{"content": "ok"}, {"content": "a\ud800"}]}, "messages.1.content"),
        ({"metadata": {"k\x00": "v"}}, "metadata.k\\x00"),
        (["fine", ["deeper", "\x00"]], "1.1"),
        (BatchCreateIn.model_construct(input_file_id="f", metadata={"a": "b\udfff"}), "metadata.a"),
    ],
)
def test_text_json_allows_and_utf8_or_postgres_do_not_is_refused_with_where(value: object, where: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_text(value)
    assert caught.value.param == where and caught.value.reason == "INVALID_TEXT"


def test_good_text_passes_and_deep_nesting_is_bounded() -> None:
    check_text({"a": ["é", "日本", "\u2028", {"b": "😀"}]})
    deep: object = "x"
    for _ in range(100):
        deep = [deep]
    with pytest.raises(InvalidArgument, match="nests deeper"):
        check_text(deep)


def test_an_error_quotes_a_short_escaped_prefix_and_stays_bounded() -> None:
    quoted = quote("m" * 20_000)
    assert len(quoted) < 100 and "20000 characters" in quoted
    assert quote("a\ud800\x00b") == "a\\ud800\\x00b"
    assert len(MeshError("x" * 100_000).message) <= 2_003
    MeshError("a\ud800").message.encode("utf-8")  # always sendable


def test_a_transport_resource_exhausted_is_permanent_and_a_declared_overload_is_not() -> None:
    transport = ResourceExhausted("received metadata size exceeds hard limit")  # no reason of ours
    assert not is_transient(transport) and not is_retryable(transport)
    busy = ResourceExhausted("queue full", reason="QUEUE_FULL", retry_after_seconds=1)
    assert is_transient(busy) and is_retryable(busy)


def test_batch_lines_split_on_newline_only_and_are_bounded() -> None:
    line = b'{"custom_id": "a\xe2\x80\xa8b", "method": "POST", "url": "/v1/embeddings", "body": {}}'
    assert [parsed.custom_id for parsed in check_input_lines(line + b"\r\n" + line.replace(b"a", b"c"), 10, 1000)] == [
        "a\u2028b",
        "c\u2028b",
    ]
    with pytest.raises(InvalidArgument, match="Line 2 is"):
        check_input_lines(line + b"\n" + b" " * 2000 + b"{}", 10, 1000)
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        check_input_lines(b"[" * 3000, 10, 10_000)
