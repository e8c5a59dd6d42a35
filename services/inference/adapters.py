"""The adapters inference can apply: resolved through the artifact store and remembered.

`resolve` finds an adapter's local directory (extracted, local zip, then S3; see
services/common/artifacts.py) off the event loop, and keeps the last `lru_size` in
memory so that a hot adapter costs one dictionary lookup per request. With
`evict_from_disk`, an adapter leaving the LRU also loses its extracted copy.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

from services.common.artifacts import ArtifactStore, check_adapter_id


class AdapterStore:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self._paths: collections.OrderedDict[str, Path] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def root(self) -> Path:
        return self.artifacts.root

    async def resolve(self, adapter_id: str) -> Path:
        """The adapter's directory, or an error saying why it cannot be used."""
        check_adapter_id(adapter_id, "adapter_settings.adapter_id")
        if (path := self._paths.get(adapter_id)) is not None and path.is_dir():
            self._paths.move_to_end(adapter_id)
            return path
        async with self._lock:  # one download or extraction at a time
            path = await asyncio.to_thread(self.artifacts.resolve, adapter_id)
            self._paths[adapter_id] = path
            self._paths.move_to_end(adapter_id)
            while len(self._paths) > self.artifacts.settings.lru_size:
                evicted, _ = self._paths.popitem(last=False)
                if self.artifacts.settings.evict_from_disk:
                    await asyncio.to_thread(self.artifacts.evict, evicted)
        return path

    def forget(self, adapter_id: str) -> None:
        """Resolve again next time (the adapter was deleted or replaced)."""
        self._paths.pop(adapter_id, None)
