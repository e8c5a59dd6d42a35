"""The artifact store: adapters zipped locally and in S3 (moto_server), resolved in order, and
extraction that refuses what could escape the store, run code or fill the disk."""

from __future__ import annotations

import io
import json
import stat
import zipfile
from pathlib import Path

import boto3
import pytest

from services.common.artifacts import ArtifactSettings, ArtifactStore, safe_extract
from services.common.errors import InvalidArgument, NotFound
from tests.conftest import ADAPTER_BUCKET, artifact_settings

CONFIG = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]})


def peft_directory(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_config.json").write_text(CONFIG)
    (root / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return root


def zipped(entries: dict[str, bytes], links: tuple[str, ...] = ()) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        for name in links:
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return buffer.getvalue()


GOOD = {"adapter_config.json": CONFIG.encode(), "adapter_model.safetensors": b"weights"}


@pytest.mark.parametrize(
    ("entries", "links"),
    [
        ({**GOOD, "../escape.json": b"{}"}, ()),
        ({**GOOD, "/etc/cron.d/x": b"x"}, ()),
        ({**GOOD, "sub/adapter_config.json": b"{}"}, ()),
        ({**GOOD, "adapter_model.bin": b"\x80\x04pickle"}, ()),  # pickled weights
        ({**GOOD, "run.py": b"import os"}, ()),
        ({"adapter_config.json": CONFIG.encode(), "adapter_model.bin": b"\x80"}, ()),
        ({**GOOD, "adapter_config.json": json.dumps({"auto_map": {"AutoModel": "evil.Model"}}).encode()}, ()),
        (GOOD, ("README.md",)),  # a symlink
        ({"adapter_config.json": CONFIG.encode(), "adapter_model.safetensors": b"\0" * 5_000_000}, ()),  # ratio bomb
    ],
)
def test_malicious_archives_are_refused(tmp_path: Path, entries: dict[str, bytes], links: tuple[str, ...]) -> None:
    target = tmp_path / "adapter"
    with pytest.raises(InvalidArgument) as refused:
        safe_extract(zipped(entries, links), target, max_bytes=10_000_000, max_ratio=200)
    assert refused.value.reason == "ADAPTER_UNSAFE"
    assert not target.exists() and not (tmp_path / "escape.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no staging left behind


def test_the_inflated_size_is_counted_not_trusted(tmp_path: Path) -> None:
    archive = zipped({"adapter_config.json": CONFIG.encode(), "adapter_model.safetensors": b"\0" * 50_000})
    with pytest.raises(InvalidArgument):
        safe_extract(archive, tmp_path / "adapter", max_bytes=10_000, max_ratio=1e9)


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        safe_extract(b"PK but not really", tmp_path / "adapter", max_bytes=1000, max_ratio=10)


def test_store_locally_and_in_s3_then_resolve_from_s3(tmp_path: Path, s3_server: str) -> None:
    writer = ArtifactStore(tmp_path / "trainer", artifact_settings(tmp_path / "trainer", s3_server))
    manifest = {"adapter_id": "abc123", "base_model": "gemma", "created_at": 1.0, "metrics": {"loss": 0.5}}
    stored = writer.put("abc123", peft_directory(tmp_path / "trained"), manifest)
    assert stored.locations[1] == f"s3://{ADAPTER_BUCKET}/adapters/abc123/adapter.zip"
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    assert s3.head_object(Bucket=ADAPTER_BUCKET, Key="adapters/abc123/adapter.zip")["ContentLength"] > 0
    assert (tmp_path / "trainer" / "abc123" / "adapter.zip").is_file()

    # Another machine: nothing local, so the bucket serves it (and the zip is kept locally).
    reader = ArtifactStore(tmp_path / "inference", artifact_settings(tmp_path / "inference", s3_server))
    path = reader.resolve("abc123")
    assert path == tmp_path / "inference" / "abc123" / "adapter"
    assert (path / "adapter_config.json").read_text() == CONFIG
    assert json.loads((path / "manifest.json").read_text())["base_model"] == "gemma"
    assert reader.get("abc123") is not None and any(a.manifest["adapter_id"] == "abc123" for a in reader.list())

    reader.evict("abc123")  # the local zip now serves it, without S3
    offline = ArtifactStore(tmp_path / "inference", ArtifactSettings(dir=tmp_path / "inference"))  # type: ignore[call-arg]
    assert offline.resolve("abc123") == path
    assert [a.manifest["adapter_id"] for a in offline.list()] == ["abc123"]  # listed from the local store alone

    writer.delete("abc123")
    with pytest.raises(NotFound):
        ArtifactStore(tmp_path / "third", artifact_settings(tmp_path / "third", s3_server)).resolve("abc123")


def test_ids_cannot_reach_outside_the_store(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, ArtifactSettings(dir=tmp_path))  # type: ignore[call-arg]
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 200):
        with pytest.raises(InvalidArgument):
            store.resolve(bad)
