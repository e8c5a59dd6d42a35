"""Where output grammars are built: off the event loop, on threads of their own, within a limit.

The schema budget (services/common/schema_limits.py) and llguidance's own fuel limits already
bound the work; the time limit is the last guard against a case they miss. It counts from
when the build starts, so a build queued behind others, or behind a busy machine's other work,
is not refused for the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from services.common.errors import InvalidArgument

T = TypeVar("T")

BUILD_SECONDS = 30.0  # a build within the schema budget takes milliseconds
_BUILDERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="grammar")


async def build_grammar(build: Callable[[], T], param: str) -> T:
    """`build()` on a grammar thread; InvalidArgument for `param` once it has run BUILD_SECONDS.
    A build past its limit runs on to its end (a thread cannot be stopped), unawaited."""
    loop = asyncio.get_running_loop()
    started: asyncio.Future[None] = loop.create_future()

    def mark_started() -> None:
        if not started.done():
            started.set_result(None)

    def timed() -> T:
        loop.call_soon_threadsafe(mark_started)
        return build()

    work = loop.run_in_executor(_BUILDERS, timed)
    try:
        either: set[asyncio.Future[Any]] = {work, started}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        async with asyncio.timeout(BUILD_SECONDS):
            return await work
    except TimeoutError as error:
        raise InvalidArgument(
            f"The output grammar took longer than {BUILD_SECONDS:.0f} s to build.", param=param
        ) from error
    finally:
        started.cancel()
        work.cancel()  # one still queued never starts
