"""The adapters inference can apply: resolved through the artifact store and remembered.

`resolve` finds an adapter's local directory (extracted, local zip, then S3; see
services/common/artifacts.py) off the event loop, and keeps the last `lru_size` in
memory so that a hot adapter costs one dictionary lookup per request. With
`evict_from_disk`, an adapter leaving the LRU also loses its extracted copy.

An adapter is its owner's: another tenant's is reported missing, exactly as one that does
not exist, unless it was shared (services/common/artifacts.py, `may_use`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.artifacts import ArtifactStore, adapter_not_found, check_adapter_id, may_use

REFRESH_SECONDS = 10.0  # a refused tenant re-reads a manifest (shared since?) at most this often


@dataclass(frozen=True)
class _Known:
    path: Path
    manifest: dict[str, object] | None  # None: placed in the store by hand
    read_at: float  # time.monotonic()


class AdapterStore:
    def __init__(self, artifacts: ArtifactStore) -> None:
        self.artifacts = artifacts
        self._known: collections.OrderedDict[str, _Known] = collections.OrderedDict()
        self._lock = asyncio.Lock()

    @property
    def root(self) -> Path:
        return self.artifacts.root

    async def resolve(self, adapter_id: str, tenant: str = "") -> Path:
        """The adapter's directory, or an error saying why it cannot be used. `tenant` "" is a
        trusted caller, which may use any adapter. Ownership is checked on the manifest before
        anything is downloaded or extracted."""
        check_adapter_id(adapter_id, "adapter_settings.adapter_id")
        known = self._known.get(adapter_id)
        if known is not None and known.path.is_dir():
            if may_use(known.manifest, tenant):
                self._known.move_to_end(adapter_id)
                return known.path
            if time.monotonic() - known.read_at <= REFRESH_SECONDS:
                raise adapter_not_found(adapter_id)
        async with self._lock:  # one download or extraction at a time
            refresh = known is not None  # refused before: shared since? (S3's manifest first)
            stored = await asyncio.to_thread(self.artifacts.get, adapter_id, refresh)
            manifest = stored.manifest if stored else None
            if not may_use(manifest, tenant):
                if known is not None:
                    self._known[adapter_id] = _Known(known.path, manifest, time.monotonic())
                raise adapter_not_found(adapter_id)
            path = await asyncio.to_thread(self.artifacts.resolve, adapter_id)
            self._known[adapter_id] = _Known(path, manifest, time.monotonic())
            self._known.move_to_end(adapter_id)
            while len(self._known) > self.artifacts.settings.lru_size:
                evicted, _ = self._known.popitem(last=False)
                if self.artifacts.settings.evict_from_disk:
                    await asyncio.to_thread(self.artifacts.evict, evicted)
        return path

    def forget(self, adapter_id: str) -> None:
        """Resolve again next time (the adapter was deleted or replaced)."""
        self._known.pop(adapter_id, None)
