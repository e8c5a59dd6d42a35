"""Adapter artifacts: zipped PEFT adapters with a manifest, kept locally and, optionally, in S3.

The trainer writes them; inference resolves them. Layout, the same under the local
root and under `s3://{bucket}/{prefix}/`:

    {adapter_id}/adapter.zip      adapter_config.json, adapter_model.safetensors, manifest.json
    {adapter_id}/manifest.json    base model, hash, hyperparameters, metrics, created_at
    {adapter_id}/adapter/         (local only) the zip extracted, what backends load

Resolution order: the extracted directory, then the local zip, then S3. Extraction
trusts nothing in a zip: it refuses absolute and parent paths, links, files that are
not an adapter's (pickles included), remote-code configs and zip bombs (size, count
and ratio limits, enforced on the bytes actually inflated, not on the header).
All calls block (disk, S3): async callers run them in a thread.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.buckets import Bucket, is_missing
from services.common.config import strong_secret
from services.common.errors import InvalidArgument, NotFound

ADAPTER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# What an adapter zip may hold; anything else (a pickled .bin, a script) is refused.
ALLOWED_FILES = {"adapter_config.json", "adapter_model.safetensors", "manifest.json", "README.md"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# adapter_config.json keys that make transformers import code from elsewhere.
REMOTE_CODE_KEYS = ("auto_map", "trust_remote_code")


class ArtifactSettings(BaseSettings):
    """Where adapters are kept. Shared by the trainer (writes) and inference (reads)."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_ARTIFACTS_", extra="ignore", frozen=True)

    dir: Path | None = Field(None, description="The local store. Unset: <data_dir>/adapters.")
    s3_bucket: str = Field("", description="Also keep adapters in this S3/MinIO bucket. Empty: local only.")
    s3_prefix: str = Field("adapters", description="Key prefix inside the bucket.")
    s3_endpoint_url: str = Field("", description="S3 API endpoint (MinIO, moto). Empty: AWS.")
    s3_region: str = Field("us-east-1", description="The S3 region.")
    # Credentials come from boto3's usual chain (AWS_ACCESS_KEY_ID, instance roles, ...); a
    # static secret key is read here only to refuse a weak one.
    s3_secret_access_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("AWS_SECRET_ACCESS_KEY"),
        description="Checked to be no placeholder when set (boto3 reads it, with the rest of its AWS_* chain).",
    )
    lru_size: int = Field(10, ge=1, description="Extracted adapters remembered in memory.")
    evict_from_disk: bool = Field(False, description="Delete an extracted adapter when it leaves the LRU.")
    max_unzipped_bytes: int = Field(2 * 1024**3, ge=1, description="Largest adapter accepted, inflated.")
    max_compression_ratio: float = Field(200.0, ge=1, description="Higher inflation ratios are zip bombs.")


def check_adapter_id(adapter_id: str, param: str = "adapter_id") -> str:
    """The id, if it is safe to use as a path component; an InvalidArgument otherwise."""
    if not ADAPTER_ID.match(adapter_id) or ".." in adapter_id:
        raise InvalidArgument(f"'{param}' must be 1-128 letters, digits, '.', '_' or '-'.", param=param)
    return adapter_id


def check_adapter_directory(path: Path, adapter_id: str) -> Path:
    """`path`, if it holds a loadable PEFT adapter: safetensors weights, no pickles, no remote code."""
    if any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
        raise InvalidArgument(
            f"Adapter '{adapter_id}' holds pickled weights; only safetensors are loaded.", reason="ADAPTER_UNSAFE"
        )
    if not (path / "adapter_model.safetensors").is_file():
        raise NotFound(f"Adapter '{adapter_id}' has no adapter_model.safetensors.", reason="ADAPTER_NOT_FOUND")
    try:
        config = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        raise InvalidArgument(f"Adapter '{adapter_id}' has an unreadable adapter_config.json.") from error
    if not isinstance(config, dict) or any(key in config for key in REMOTE_CODE_KEYS):
        raise InvalidArgument(
            f"Adapter '{adapter_id}' asks for remote code (auto_map); it is not loaded.", reason="ADAPTER_UNSAFE"
        )
    return path


def safe_extract(archive: Path | bytes, target: Path, max_bytes: int, max_ratio: float) -> None:
    """Extract an adapter zip into `target` (created atomically), refusing anything suspicious."""
    source = io.BytesIO(archive) if isinstance(archive, bytes) else archive
    try:
        zip_file = zipfile.ZipFile(source)
    except zipfile.BadZipFile as error:
        raise InvalidArgument("The adapter archive is not a zip file.", reason="ADAPTER_UNSAFE") from error
    with zip_file, tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as staging:
        members = zip_file.infolist()
        if len(members) > len(ALLOWED_FILES):
            raise InvalidArgument(f"The adapter archive has {len(members)} entries.", reason="ADAPTER_UNSAFE")
        inflated = 0
        for member in members:
            name = _checked_member_name(member)
            if member.file_size > max_ratio * max(member.compress_size, 1):
                raise InvalidArgument(f"'{name}' inflates too far (a zip bomb?).", reason="ADAPTER_UNSAFE")
            with zip_file.open(member) as packed, open(Path(staging) / name, "wb") as out:
                while chunk := packed.read(1 << 20):  # count real bytes: headers can lie
                    inflated += len(chunk)
                    if inflated > max_bytes:
                        raise InvalidArgument("The adapter archive inflates too far.", reason="ADAPTER_UNSAFE")
                    out.write(chunk)
        check_adapter_directory(Path(staging), target.name)
        shutil.rmtree(target, ignore_errors=True)
        Path(staging).rename(target)
        Path(staging).mkdir()  # TemporaryDirectory cleans up what is no longer there


def _checked_member_name(member: zipfile.ZipInfo) -> str:
    name = member.filename
    path = PurePosixPath(name)
    mode = member.external_attr >> 16
    if path.is_absolute() or "\\" in name or ".." in path.parts or len(path.parts) != 1:
        raise InvalidArgument(f"The adapter archive names a path outside it: '{name}'.", reason="ADAPTER_UNSAFE")
    if stat.S_ISLNK(mode) or member.is_dir():
        raise InvalidArgument(f"The adapter archive holds a link or folder: '{name}'.", reason="ADAPTER_UNSAFE")
    if name not in ALLOWED_FILES:
        raise InvalidArgument(
            f"The adapter archive holds '{name}', which is not an adapter file.", reason="ADAPTER_UNSAFE"
        )
    return name


def adapter_not_found(adapter_id: str) -> NotFound:
    """The error for an adapter a request names and cannot use: missing, or another tenant's
    (word for word the same, so that it reveals nothing)."""
    return NotFound(
        f"No adapter '{adapter_id}' in the adapter store.",
        param="adapter_settings.adapter_id",
        reason="ADAPTER_NOT_FOUND",
    )


def may_use(manifest: dict[str, Any] | None, tenant: str) -> bool:
    """Whether `tenant` may list and use an adapter: its owner's, or shared. A trusted caller
    (tenant "") may use all; an adapter placed in the store by hand (no manifest) is the
    operator's, put there for everyone."""
    if not tenant or manifest is None:
        return True
    return bool(manifest.get("shared")) or manifest.get("owner", "") == tenant


def zip_adapter(directory: Path, manifest: dict[str, Any]) -> bytes:
    """The adapter's safetensors and config, plus the manifest, as a zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            archive.write(directory / name, name)
        archive.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))
    return buffer.getvalue()


@dataclass(frozen=True)
class StoredAdapter:
    manifest: dict[str, Any]
    size_bytes: int
    locations: tuple[str, ...]


class ArtifactStore:
    def __init__(self, root: Path, settings: ArtifactSettings | None = None) -> None:
        self.root = root
        self.settings = settings or ArtifactSettings()
        if self.s3_enabled and self.settings.s3_secret_access_key is not None:
            # The bucket holds every tenant's adapters: MinIO's CHANGE-ME must not guard it.
            strong_secret("AWS_SECRET_ACCESS_KEY", self.settings.s3_secret_access_key)
        settings = self.settings
        self._bucket = Bucket(
            settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region, "adapter"
        )

    # ---- writing ----

    def put(self, adapter_id: str, directory: Path, manifest: dict[str, Any]) -> StoredAdapter:
        """Store a trained adapter: the zip and manifest locally, then in S3 when configured."""
        check_adapter_id(adapter_id)
        check_adapter_directory(directory, adapter_id)
        archive = zip_adapter(directory, manifest)
        home = self.root / adapter_id
        home.mkdir(parents=True, exist_ok=True)
        _write_atomically(home / "adapter.zip", archive)
        _write_atomically(home / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        if self.s3_enabled:
            self._bucket.put(f"{adapter_id}/adapter.zip", archive)
            self._bucket.put(f"{adapter_id}/manifest.json", json.dumps(manifest).encode())
        return StoredAdapter(manifest, len(archive), self._locations(adapter_id))

    def share(self, adapter_id: str) -> StoredAdapter:
        """Let every tenant use the adapter (its manifest says so, here and in S3)."""
        stored = self.get(adapter_id, from_bucket=True)
        if stored is None:
            raise NotFound(f"No adapter '{adapter_id}'.", param="adapter_id", reason="ADAPTER_NOT_FOUND")
        manifest = {**stored.manifest, "shared": True}
        home = self.root / adapter_id
        if (home / "manifest.json").is_file():
            _write_atomically(home / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
        if self.s3_enabled:
            self._bucket.put(f"{adapter_id}/manifest.json", json.dumps(manifest).encode())
        return StoredAdapter(manifest, stored.size_bytes, stored.locations)

    def delete(self, adapter_id: str) -> None:
        check_adapter_id(adapter_id)
        found = (self.root / adapter_id).exists()
        shutil.rmtree(self.root / adapter_id, ignore_errors=True)
        if self.s3_enabled:
            for name in ("adapter.zip", "manifest.json"):
                found |= self._bucket.head(f"{adapter_id}/{name}") is not None
                self._bucket.delete(f"{adapter_id}/{name}")
        if not found:
            raise NotFound(f"No adapter '{adapter_id}'.", reason="ADAPTER_NOT_FOUND")

    # ---- reading ----

    def get(self, adapter_id: str, from_bucket: bool = False) -> StoredAdapter | None:
        """The stored adapter's manifest and size, from the local store or S3; None if neither
        has it. `from_bucket`: S3's first, which a trainer elsewhere may have changed (shared)."""
        check_adapter_id(adapter_id)
        home = self.root / adapter_id
        if from_bucket and self.s3_enabled:
            manifest = self._bucket.get(f"{adapter_id}/manifest.json")
            if manifest is not None and home.is_dir():
                _write_atomically(home / "manifest.json", manifest)
        if (home / "manifest.json").is_file() and (home / "adapter.zip").is_file():
            manifest = json.loads((home / "manifest.json").read_text())
            return StoredAdapter(manifest, (home / "adapter.zip").stat().st_size, self._locations(adapter_id))
        if self.s3_enabled:
            head = self._bucket.head(f"{adapter_id}/adapter.zip")
            manifest = self._bucket.get(f"{adapter_id}/manifest.json") if head is not None else None
            if head is not None and manifest is not None:
                return StoredAdapter(json.loads(manifest), int(head["ContentLength"]), self._locations(adapter_id))
        return None

    def list(self) -> list[StoredAdapter]:
        ids = {p.parent.name for p in self.root.glob("*/manifest.json") if ADAPTER_ID.match(p.parent.name)}
        if self.s3_enabled:
            ids |= {adapter_id for adapter_id in self._bucket.folders() if ADAPTER_ID.match(adapter_id)}
        found = (self.get(adapter_id) for adapter_id in sorted(ids))
        return sorted((a for a in found if a), key=lambda a: str(a.manifest.get("created_at", "")), reverse=True)

    def resolve(self, adapter_id: str) -> Path:
        """A local directory a backend can load: extracted already, from the local zip, or from S3."""
        check_adapter_id(adapter_id, "adapter_settings.adapter_id")
        home = self.root / adapter_id
        extracted = home / "adapter"
        if (extracted / "adapter_config.json").is_file():
            return check_adapter_directory(extracted, adapter_id)
        if (home / "adapter_config.json").is_file():  # a PEFT directory placed in the store by hand
            return check_adapter_directory(home, adapter_id)
        limits = self.settings.max_unzipped_bytes, self.settings.max_compression_ratio
        if (home / "adapter.zip").is_file():
            safe_extract(home / "adapter.zip", extracted, *limits)
            return extracted
        if self.s3_enabled:
            archive = self._bucket.get(f"{adapter_id}/adapter.zip")
            if archive is not None:
                home.mkdir(parents=True, exist_ok=True)
                safe_extract(archive, extracted, *limits)
                # The local store now holds it whole: zip and manifest, as if trained here.
                _write_atomically(home / "adapter.zip", archive)
                if (extracted / "manifest.json").is_file():
                    _write_atomically(home / "manifest.json", (extracted / "manifest.json").read_bytes())
                return extracted
        raise adapter_not_found(adapter_id)

    def evict(self, adapter_id: str) -> None:
        """Drop the extracted copy; the zip stays, so the next resolve extracts it again."""
        shutil.rmtree(self.root / adapter_id / "adapter", ignore_errors=True)

    def read_object(self, uri: str, max_bytes: int, param: str = "dataset.uri") -> str:
        """A text object (a dataset) from `s3://bucket/key`, through this store's S3 endpoint."""
        from botocore.exceptions import ClientError

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not uri.startswith("s3://") or not bucket or not key:
            raise InvalidArgument(f"'{param}' must be an s3://bucket/key URI.", param=param)
        with self._bucket.errors():
            try:
                body = self._bucket.client.get_object(Bucket=bucket, Key=key)["Body"].read(max_bytes + 1)
            except ClientError as error:
                if is_missing(error) or error.response.get("Error", {}).get("Code") == "NoSuchBucket":
                    raise NotFound(f"No dataset at {uri}.", param=param) from error
                raise
        if len(body) > max_bytes:
            raise InvalidArgument(f"The dataset at {uri} is larger than {max_bytes} bytes.", param=param)
        try:
            return bytes(body).decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidArgument(f"The dataset at {uri} is not UTF-8 text.", param=param) from error

    # ---- S3 ----

    @property
    def s3_enabled(self) -> bool:
        return bool(self.settings.s3_bucket)

    def _locations(self, adapter_id: str) -> tuple[str, ...]:
        local = (str(self.root / adapter_id / "adapter.zip"),)
        if not self.s3_enabled:
            return local
        return (*local, self._bucket.uri(f"{adapter_id}/adapter.zip"))


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.rename(path)
