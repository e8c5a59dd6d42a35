"""Cursor pages of the list endpoints (files, a response's input items, Anthropic's models)."""

from __future__ import annotations

from typing import TypeVar

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
