"""The local adapter store: LoRA adapters by id, as PEFT directories under one root.

An id names a directory; it is checked before it touches the file system, so no id
reaches outside the store. Only safetensors weights are accepted: a pickled
`adapter_model.bin` could run code when loaded.
"""

from __future__ import annotations

import re
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound

ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, adapter_id: str) -> Path:
        """The adapter's directory, or an error saying why it cannot be used."""
        if not ADAPTER_ID.match(adapter_id) or ".." in adapter_id:
            raise InvalidArgument(
                "'adapter_settings.adapter_id' must be 1-128 letters, digits, '.', '_' or '-'.",
                param="adapter_settings.adapter_id",
            )
        path = self.root / adapter_id
        if not (path / "adapter_config.json").is_file():
            raise NotFound(
                f"No adapter '{adapter_id}' in the adapter store.",
                param="adapter_settings.adapter_id",
                reason="ADAPTER_NOT_FOUND",
            )
        if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
            raise InvalidArgument(
                f"Adapter '{adapter_id}' holds pickled weights; only safetensors are loaded.",
                param="adapter_settings.adapter_id",
                reason="ADAPTER_UNSAFE",
            )
        if not (path / "adapter_model.safetensors").is_file():
            raise NotFound(
                f"Adapter '{adapter_id}' has no adapter_model.safetensors.",
                param="adapter_settings.adapter_id",
                reason="ADAPTER_NOT_FOUND",
            )
        return path
