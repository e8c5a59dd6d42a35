"""One S3 (or MinIO) bucket under a key prefix: what the adapter store and the file store keep
there. boto3 is imported on first use, so stores without a bucket never need it; credentials
come from boto3's usual chain. Trouble with the bucket is an Unavailable error that says so
plainly, never a botocore traceback. All calls block: async callers run them in a thread."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from services.common.errors import Unavailable

MISSING = ("404", "NoSuchKey", "NotFound")


class Bucket:
    def __init__(
        self, name: str, prefix: str, endpoint_url: str = "", region: str = "us-east-1", kind: str = ""
    ) -> None:
        self.name = name
        self.prefix = prefix.strip("/")
        self.endpoint_url = endpoint_url
        self.region = region
        self.kind = kind  # what it holds, for messages ("adapter", "file")
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url or None, region_name=self.region)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def uri(self, name: str) -> str:
        return f"s3://{self.name}/{self.key(name)}"

    def put(self, name: str, body: bytes) -> None:
        """Write an object; a fresh MinIO has no buckets, so the first write makes it."""
        from botocore.exceptions import ClientError

        with self.errors():
            try:
                self.client.put_object(Bucket=self.name, Key=self.key(name), Body=body)
            except ClientError as error:
                if _code(error) != "NoSuchBucket":
                    raise
                self.client.create_bucket(Bucket=self.name)
                self.client.put_object(Bucket=self.name, Key=self.key(name), Body=body)

    def get(self, name: str) -> bytes | None:
        """The object's bytes; None when there is no such object (one request either way)."""
        from botocore.exceptions import ClientError

        with self.errors():
            try:
                response = self.client.get_object(Bucket=self.name, Key=self.key(name))
            except ClientError as error:
                if _code(error) in (*MISSING, "NoSuchBucket"):
                    return None
                raise
            return bytes(response["Body"].read())

    def head(self, name: str) -> dict[str, Any] | None:
        """The object's metadata; None when there is no such object."""
        from botocore.exceptions import ClientError

        with self.errors():
            try:
                return dict(self.client.head_object(Bucket=self.name, Key=self.key(name)))
            except ClientError as error:
                if _code(error) in (*MISSING, "NoSuchBucket"):
                    return None
                raise

    def delete(self, name: str) -> None:
        with self.errors():
            self.client.delete_object(Bucket=self.name, Key=self.key(name))

    def names(self, folder: str) -> list[str]:
        """The names of the objects in `folder` (under the prefix), its subfolders' included."""
        return [key.rsplit("/", 1)[-1] for key in self._listed(self.key(folder), "Contents", "Key")]

    def folders(self) -> list[str]:
        """The folders directly under the prefix."""
        prefix = self.key("")
        return [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self._listed(prefix, "CommonPrefixes", "Prefix")]

    def _listed(self, prefix: str, section: str, field: str) -> list[str]:
        from botocore.exceptions import ClientError

        found: list[str] = []
        delimiter = {"Delimiter": "/"} if section == "CommonPrefixes" else {}
        with self.errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix, **delimiter)
            try:
                for page in pages:
                    found += [entry[field] for entry in page.get(section, [])]
            except ClientError as error:
                if _code(error) != "NoSuchBucket":
                    raise
        return found

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError) as error:
            raise Unavailable(f"The {self.kind} bucket '{self.name}' failed: {error}".replace("  ", " ")) from error


def is_missing(error: Any) -> bool:
    return _code(error) in MISSING


def _code(error: Any) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
