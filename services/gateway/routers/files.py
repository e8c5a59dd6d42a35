"""/v1/files: upload, list, read, download and delete files (OpenAI's Files API).

Files are the caller's own: another key gets 404 for them, as for a file that does not
exist. `purpose: batch` uploads are checked as batch input (JSONL, line count) on upload,
so that a bad file is refused before a batch names it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from services.common.errors import InvalidArgument
from services.common.files import FileStore
from services.gateway.auth import Caller, scope
from services.gateway.config import GatewaySettings
from services.gateway.dependencies import get_files, get_settings
from services.gateway.protocol.batches import check_input_lines
from services.gateway.protocol.pages import openai_list, page_after

router = APIRouter()

PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "user_data", "evals")
UPLOAD_PURPOSES = ("batch", "fine-tune", "assistants", "user_data", "evals")  # batch_output is written by batches


@router.post("/v1/files")
async def create_file(
    file: UploadFile = File(...),
    purpose: str = Form(...),
    files: FileStore = Depends(get_files),
    settings: GatewaySettings = Depends(get_settings),
    caller: Caller = Depends(scope("jobs")),
) -> JSONResponse:
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidArgument(f"'purpose' must be one of {', '.join(UPLOAD_PURPOSES)}.", param="purpose")
    data = await file.read(files.settings.max_bytes + 1)
    if len(data) > files.settings.max_bytes:
        raise InvalidArgument(f"The file is larger than {files.settings.max_bytes} bytes.", param="file")
    if purpose == "batch":
        await asyncio.to_thread(check_input_lines, data, files.settings.max_lines, settings.max_body_bytes)
    record = await asyncio.to_thread(files.put, caller.owner, file.filename or "upload", purpose, data)
    return JSONResponse(record.to_openai())


@router.get("/v1/files")
async def list_files(
    purpose: str = Query(""),
    limit: int = Query(10000, ge=1, le=10000),
    after: str = Query(""),
    order: Literal["asc", "desc"] = Query("desc", description="By creation time."),
    files: FileStore = Depends(get_files),
    caller: Caller = Depends(scope("jobs")),
) -> dict[str, Any]:
    records = await asyncio.to_thread(files.list_files, caller.owner, purpose)  # newest first
    if order == "asc":
        records.reverse()
    page, more = page_after(records, [r.id for r in records], after, limit, "a file")
    return openai_list([r.to_openai() for r in page], more)


@router.get("/v1/files/{file_id}")
async def retrieve_file(
    file_id: str, files: FileStore = Depends(get_files), caller: Caller = Depends(scope("jobs"))
) -> dict[str, Any]:
    return (await asyncio.to_thread(files.get, file_id, caller.owner)).to_openai()


@router.get("/v1/files/{file_id}/content")
async def file_content(
    file_id: str, files: FileStore = Depends(get_files), caller: Caller = Depends(scope("jobs"))
) -> Response:
    data = await asyncio.to_thread(files.content, file_id, caller.owner)
    return Response(data, media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
async def delete_file(
    file_id: str, files: FileStore = Depends(get_files), caller: Caller = Depends(scope("jobs"))
) -> dict[str, Any]:
    await asyncio.to_thread(files.delete, file_id, caller.owner)
    return {"id": file_id, "object": "file", "deleted": True}
