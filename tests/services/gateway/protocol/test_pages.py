"""Cursor pages: each item once, in order, whatever the page size; a forged cursor is a 400."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.gateway.protocol.pages import page_after

IDS = [f"item-{n}" for n in range(7)]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
def test_following_the_last_id_walks_every_item_once(limit: int) -> None:
    seen, cursor, more = [], "", True
    while more:
        page, more = page_after(IDS, IDS, cursor, limit, "an item")
        assert page and len(page) <= limit
        seen += page
        cursor = page[-1]
    assert seen == IDS


def test_the_last_page_says_no_more_and_a_cursor_on_the_last_item_gives_an_empty_one() -> None:
    assert page_after(IDS, IDS, "item-4", 2, "an item") == (["item-5", "item-6"], False)
    assert page_after(IDS, IDS, "item-6", 2, "an item") == ([], False)


@pytest.mark.parametrize("cursor", ["item-9", "item-1\x00", "x" * 10_000])
def test_a_cursor_that_names_no_item_is_a_400_that_does_not_quote_it(cursor: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        page_after(IDS, IDS, cursor, 2, "an item", param="before_id")
    assert refused.value.param == "before_id" and cursor not in refused.value.message
