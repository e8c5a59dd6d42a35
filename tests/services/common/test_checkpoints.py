"""The dequantized copy of a GGUF model is made once, even when several processes ask at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from services.common import checkpoints


def test_concurrent_callers_wait_for_one_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    made: list[Path] = []

    def dequantize(source: Path, target: Path, dtype: Any) -> Path:
        made.append(target)
        time.sleep(0.3)  # long enough for the other caller to arrive while this one works
        target.mkdir()
        (target / "config.json").write_text("{}")
        return target

    monkeypatch.setattr(checkpoints, "_dequantize", dequantize)
    found: list[Path] = []
    # flock locks belong to open files, so two threads stand for two processes here.
    callers = [
        threading.Thread(target=lambda: found.append(checkpoints.dequantized_checkpoint(gguf, tmp_path / "c", None)))
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(10)
    assert len(made) == 1 and found == [made[0], made[0]]
