"""Cursor pages of the list endpoints (files, batches, a response's input items, Anthropic's
models), and OpenAI's list body around one."""

from __future__ import annotations

from typing import Any, TypeVar

from services.common.errors import InvalidArgument

Item = TypeVar("Item")


def page_after(
    items: list[Item], ids: list[str], cursor: str, limit: int, what: str, param: str = "after"
) -> tuple[list[Item], bool]:
    """The `limit` items right after the one whose id is `cursor` (from the start when it is
    empty), and whether more follow. A cursor that names none of them is a 400: an empty page
    would read as the end of the list."""
    if cursor and cursor not in ids:
        raise InvalidArgument(f"'{param}' is not the id of {what} in this list.", param=param)
    rest = items[ids.index(cursor) + 1 :] if cursor else items
    return rest[:limit], len(rest) > limit


def openai_list(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """OpenAI's list body: the page, its first and last ids, and whether more follow."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
