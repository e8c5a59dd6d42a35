"""The inference side of the adapter store: resolved once, remembered in an LRU, evicted from disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.artifacts import ArtifactSettings, ArtifactStore
from services.common.errors import InvalidArgument, NotFound
from services.inference.server.adapters import AdapterStore


def zipped_adapter(root: Path, adapter_id: str, owner: str | None = None) -> None:
    trained = root / "trained" / adapter_id
    trained.mkdir(parents=True)
    (trained / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (trained / "adapter_model.safetensors").write_bytes(b"weights")
    manifest = {"adapter_id": adapter_id, **({"owner": owner} if owner is not None else {})}
    ArtifactStore(root / "store", ArtifactSettings(dir=root / "store")).put(adapter_id, trained, manifest)  # type: ignore[call-arg]


async def test_lru_keeps_the_recent_ones_and_evicts_from_disk(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        zipped_adapter(tmp_path, name)
    settings = ArtifactSettings(dir=tmp_path / "store", lru_size=2, evict_from_disk=True)  # type: ignore[call-arg]
    store = AdapterStore(ArtifactStore(tmp_path / "store", settings))
    paths = {name: await store.resolve(name) for name in ("a", "b", "c")}
    assert not paths["a"].exists() and paths["b"].is_dir() and paths["c"].is_dir()  # "a" left the LRU
    assert (tmp_path / "store" / "a" / "adapter.zip").is_file()  # the zip stays
    assert (await store.resolve("a")).is_dir()  # extracted again on demand


async def test_unknown_and_bad_ids(tmp_path: Path) -> None:
    store = AdapterStore(ArtifactStore(tmp_path, ArtifactSettings(dir=tmp_path)))  # type: ignore[call-arg]
    with pytest.raises(NotFound):
        await store.resolve("missing")
    with pytest.raises(InvalidArgument):
        await store.resolve("../../etc")


async def test_another_tenants_adapter_is_missing_and_never_extracted(tmp_path: Path, monkeypatch) -> None:
    from services.inference.server import adapters

    zipped_adapter(tmp_path, "alices", owner="alice")
    artifacts = ArtifactStore(tmp_path / "store", ArtifactSettings(dir=tmp_path / "store"))  # type: ignore[call-arg]
    store = AdapterStore(artifacts)
    with pytest.raises(NotFound) as refused:
        await store.resolve("alices", tenant="bob")
    with pytest.raises(NotFound) as missing:
        await store.resolve("nobodys", tenant="bob")
    assert refused.value.message.replace("alices", "x") == missing.value.message.replace("nobodys", "x")
    assert not (tmp_path / "store" / "alices" / "adapter").exists()  # refused before extraction
    assert (await store.resolve("alices", tenant="alice")).is_dir()
    assert (await store.resolve("alices")).is_dir()  # a trusted caller (the superuser, a service)
    with pytest.raises(NotFound):
        await store.resolve("alices", tenant="bob")  # remembered, still refused
    artifacts.share("alices")
    monkeypatch.setattr(adapters, "REFRESH_SECONDS", 0.0)
    assert (await store.resolve("alices", tenant="bob")).is_dir()  # shared since: re-read
