"""Files: what callers upload (batch input) and what batches write (output and error files),
plus the objects batch jobs keep beside them (prepared items, results, checkpoints).

One store, local or S3, shared by the gateway (uploads, downloads, batch creation) and the
scheduler (runs batches): both point at the same directory (one machine, `make run`) or the
same bucket (a cluster). Layout, the same under the local root and `s3://{bucket}/{prefix}/`:

    files/{file_id}.json      the file's record: owner, name, purpose, size, time
    files/{file_id}.data      its bytes
    objects/{name}            internal objects (a batch's items, results, checkpoint)

A file belongs to its owner: another owner's file is NotFound, word for word as a missing one.
All calls block (disk, S3): async callers run them in a thread.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.buckets import Bucket
from services.common.errors import InvalidArgument, NotFound

FILE_ID = re.compile(r"^file-[a-f0-9]{32}$")
OBJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")


class FileSettings(BaseSettings):
    """Where files are kept; the gateway and the scheduler must agree."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_FILES_", extra="ignore", frozen=True)

    dir: Path = Field(Path(".data/files"), description="The local store (one machine).")
    s3_bucket: str = Field("", description="Keep files in this S3/MinIO bucket instead (a cluster).")
    s3_prefix: str = Field("files", description="Key prefix inside the bucket.")
    s3_endpoint_url: str = Field("", description="S3 API endpoint (MinIO, moto). Empty: AWS.")
    s3_region: str = Field("us-east-1", description="The S3 region.")
    max_bytes: int = Field(100 * 1024 * 1024, ge=1, description="Largest file accepted.")
    max_lines: int = Field(50_000, ge=1, description="Most requests in one batch input file.")
    max_files_per_owner: int = Field(1000, ge=1, description="Files one owner may keep at once.")


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    created_ns: int = 0  # orders files made within the same second

    def to_openai(self) -> dict[str, Any]:
        """OpenAI's file object."""
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


def derived_file_id(seed: str) -> str:
    """A file id that the same `seed` always gives: a batch rewritten after a redelivery keeps it."""
    return f"file-{uuid.uuid5(uuid.NAMESPACE_URL, seed).hex}"


def file_not_found(file_id: str) -> NotFound:
    return NotFound(f"No file '{file_id}'.", param="file_id", reason="FILE_NOT_FOUND")


class FileStore:
    def __init__(self, settings: FileSettings | None = None) -> None:
        self.settings = settings or FileSettings()
        s3 = self.settings
        self._bucket = Bucket(s3.s3_bucket, s3.s3_prefix, s3.s3_endpoint_url, s3.s3_region, kind="file")

    # ---- files ----

    def put(self, owner: str, filename: str, purpose: str, data: bytes, file_id: str = "") -> FileRecord:
        """Store a file (`file_id`: replace that one, e.g. a batch's output written again)."""
        if len(data) > self.settings.max_bytes:
            raise InvalidArgument(
                f"The file is {len(data)} bytes; the limit is {self.settings.max_bytes}.", param="file"
            )
        if not file_id and len(self.list_files(owner)) >= self.settings.max_files_per_owner:
            raise InvalidArgument(
                f"At most {self.settings.max_files_per_owner} files are kept per owner; delete some first.",
                param="file",
            )
        now = time.time_ns()
        record = FileRecord(file_id or new_file_id(), owner, filename[:255], purpose, len(data), now // 10**9, now)
        self._write(f"files/{record.id}.data", data)
        self._write(f"files/{record.id}.json", json.dumps(asdict(record)).encode())  # last: the file now exists
        return record

    def get(self, file_id: str, owner: str) -> FileRecord:
        """The record of `owner`'s file (a trusted caller, owner "", may read any)."""
        if not FILE_ID.match(file_id):
            raise file_not_found(file_id)
        raw = self._read(f"files/{file_id}.json")
        record = FileRecord(**json.loads(raw)) if raw is not None else None
        if record is None or (owner and record.owner != owner):
            raise file_not_found(file_id)
        return record

    def content(self, file_id: str, owner: str) -> bytes:
        self.get(file_id, owner)
        data = self._read(f"files/{file_id}.data")
        if data is None:
            raise file_not_found(file_id)
        return data

    def list_files(self, owner: str, purpose: str = "") -> list[FileRecord]:
        """`owner`'s files, newest first."""
        records = []
        for name in self._names("files/"):
            if name.endswith(".json") and (raw := self._read(f"files/{name}")) is not None:
                record = FileRecord(**json.loads(raw))
                if (not owner or record.owner == owner) and (not purpose or record.purpose == purpose):
                    records.append(record)
        return sorted(records, key=lambda r: (r.created_ns, r.id), reverse=True)

    def delete(self, file_id: str, owner: str) -> None:
        self.get(file_id, owner)
        self._delete(f"files/{file_id}.json")
        self._delete(f"files/{file_id}.data")

    # ---- internal objects ----

    def put_object(self, name: str, data: bytes) -> None:
        self._write(f"objects/{_checked_name(name)}", data)

    def get_object(self, name: str) -> bytes | None:
        return self._read(f"objects/{_checked_name(name)}")

    def delete_object(self, name: str) -> None:
        self._delete(f"objects/{_checked_name(name)}")

    def put_part(self, name: str, number: int, data: bytes) -> None:
        """Part `number` of a log kept in parts (a batch's results): each written whole, once."""
        self.put_object(f"{name}.part-{number:06d}", data)

    def read_parts(self, name: str) -> list[bytes]:
        """The parts written so far, in order."""
        parts: list[bytes] = []
        while (data := self.get_object(f"{name}.part-{len(parts):06d}")) is not None:
            parts.append(data)
        return parts

    # ---- storage: a directory, or a bucket ----

    def _write(self, key: str, data: bytes) -> None:
        if self.settings.s3_bucket:
            self._bucket.put(key, data)
            return
        path = self.settings.dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        partial.write_bytes(data)
        partial.rename(path)  # readers see the whole object or none

    def _read(self, key: str) -> bytes | None:
        if self.settings.s3_bucket:
            return self._bucket.get(key)
        try:
            return (self.settings.dir / key).read_bytes()
        except FileNotFoundError:
            return None

    def _delete(self, key: str) -> None:
        if self.settings.s3_bucket:
            self._bucket.delete(key)
            return
        (self.settings.dir / key).unlink(missing_ok=True)

    def _names(self, folder: str) -> list[str]:
        if self.settings.s3_bucket:
            return self._bucket.names(folder)
        directory = self.settings.dir / folder
        return [p.name for p in directory.iterdir() if not p.name.startswith(".")] if directory.is_dir() else []


def _checked_name(name: str) -> str:
    if not OBJECT_NAME.match(name) or ".." in name:
        raise InvalidArgument(f"Invalid object name '{name}'.")
    return name
