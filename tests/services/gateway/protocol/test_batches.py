"""Batch input lines: each problem names its line once, plainly."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.gateway.protocol.batches import check_input_lines

LINE = b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}'


@pytest.mark.parametrize(
    ("second", "message"),
    [
        (b'"just a string"', "Line 2: Input should be a valid dictionary or instance of BatchLineIn"),
        (LINE.replace(b"POST", b"GET"), "Line 2: method: Input should be"),
        (b"{not json", "Line 2 is not valid JSON."),
    ],
)
def test_a_bad_line_is_named_once(second: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_input_lines(LINE + b"\n" + second + b"\n", max_lines=10, max_line_bytes=1000)
    assert error.value.message.startswith(message) and ": :" not in error.value.message
