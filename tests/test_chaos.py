"""A short smoke of the chaos soak (`make chaos` runs it for ten minutes): a `make run` mesh
under load while processes are killed; nothing a client sees fails but with 503 and
Retry-After, nothing hangs, no accepted job is lost, and /health tells the truth."""

from __future__ import annotations

import json

from tests.chaos import healthy, run


async def test_a_short_chaos_soak_loses_nothing() -> None:
    report = await run(minutes=0.6, seed=7, interval=(3.0, 5.0), training=False)
    print(json.dumps(report, indent=2))
    assert report["kills_total"] >= 3, report
    assert healthy(report), json.dumps(report, indent=2)
