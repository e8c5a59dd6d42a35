"""Secrets: no service starts on a placeholder or short secret, and the error names the variable."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from pydantic import SecretStr

from services.common.config import strong_secret


@pytest.mark.parametrize("value", ["", "CHANGE-ME", "changeme", "password", "llmmesh-dev-callback-secret", "short"])
def test_placeholders_and_short_secrets_are_refused(value: str) -> None:
    with pytest.raises(SystemExit, match="LLMMESH_SOME_SECRET"):
        strong_secret("LLMMESH_SOME_SECRET", SecretStr(value))


def test_a_random_secret_passes() -> None:
    assert strong_secret("LLMMESH_SOME_SECRET", SecretStr("x" * 32)) == "x" * 32


async def _refused(module: str, **environment: str) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env={**os.environ, "LLMMESH_INFERENCE_PRELOAD_DEFAULT_MODEL": "false", **environment},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        output, _ = await process.communicate()
    assert process.returncode != 0, output
    return output.decode()


@pytest.mark.parametrize(
    "module", ["services.inference", "services.embeddings", "services.trainer", "services.gateway"]
)
async def test_every_service_refuses_a_placeholder_internal_token(module: str) -> None:
    output = await _refused(module, LLMMESH_INTERNAL_TOKEN="CHANGE-ME", LLMMESH_GATEWAY_ALLOW_ANONYMOUS="true")
    assert "Refusing to start: LLMMESH_INTERNAL_TOKEN is a placeholder" in output


async def test_the_scheduler_refuses_a_placeholder_callback_secret() -> None:
    nowhere = {"DATABASE_URL": "postgresql://127.0.0.1:1/none", "NATS_URL": "nats://127.0.0.1:1"}  # never reached
    output = await _refused("services.scheduler", LLMMESH_SCHEDULER_CALLBACK_SECRET="CHANGE-ME", **nowhere)
    assert "Refusing to start: LLMMESH_SCHEDULER_CALLBACK_SECRET is a placeholder" in output


@pytest.mark.parametrize(
    ("nats", "variable"),
    [
        ({"NATS_URL": "nats://127.0.0.1:1", "NATS_USER": "scheduler", "NATS_PASSWORD": "CHANGE-ME"}, "NATS_PASSWORD"),
        ({"NATS_URL": "nats://scheduler:secret@127.0.0.1:1"}, "NATS_URL's password"),
    ],
)
async def test_the_scheduler_refuses_a_placeholder_nats_password(nats: dict[str, str], variable: str) -> None:
    secret = "a-callback-secret-of-at-least-32-bytes"
    nowhere = {"DATABASE_URL": "postgresql://127.0.0.1:1/none"}  # never reached
    output = await _refused("services.scheduler", LLMMESH_SCHEDULER_CALLBACK_SECRET=secret, **nowhere, **nats)
    assert f"Refusing to start: {variable} is a placeholder" in output


@pytest.mark.parametrize("module", ["services.inference", "services.trainer"])
async def test_the_adapter_store_refuses_a_placeholder_s3_secret_key(module: str) -> None:
    bucket = {"LLMMESH_ARTIFACTS_S3_BUCKET": "adapters", "AWS_SECRET_ACCESS_KEY": "CHANGE-ME"}
    output = await _refused(module, **bucket)
    assert "Refusing to start: AWS_SECRET_ACCESS_KEY is a placeholder" in output


@pytest.mark.parametrize("variable", ["LLMMESH_JWT_SECRET", "LLMMESH_API_KEY_SECRET"])
async def test_the_gateway_refuses_placeholder_key_secrets(variable: str) -> None:
    output = await _refused("services.gateway", LLMMESH_GATEWAY_ALLOW_ANONYMOUS="true", **{variable: "CHANGE-ME"})
    assert f"Refusing to start: {variable} is a placeholder" in output
