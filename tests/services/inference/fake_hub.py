"""A small real HTTP server in the Hugging Face Hub's documented layout, for pulls without the
Hub: `/api/models/{repo}/tree/{revision}` lists a repository's files and
`/{repo}/resolve/{revision}/{file}` serves one (HEAD and GET, ranges included), with the headers
huggingface_hub reads (X-Repo-Commit, ETag as the content's sha256, Content-Length). An unknown
repository answers 404 with X-Error-Code: RepoNotFound, as the Hub does."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response


@functools.lru_cache(maxsize=8)
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def hub_app(repos: dict[str, dict[str, Path]], requests: list[str]) -> FastAPI:
    """`repos`: repository id -> file name -> the local file it serves. `requests` records each path."""
    app = FastAPI()

    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def missing(what: str) -> Response:
        return JSONResponse({"error": f"{what} not found"}, status_code=404, headers={"X-Error-Code": "RepoNotFound"})

    @app.get("/api/models/{owner}/{name}/tree/{revision:path}")
    async def tree(owner: str, name: str, revision: str, request: Request) -> Any:
        requests.append(request.url.path)
        files = repos.get(f"{owner}/{name}")
        if files is None:
            return missing(f"{owner}/{name}")
        return [
            {
                "type": "file",
                "oid": commit(file_name),
                "size": path.stat().st_size,
                "path": file_name,
                "lfs": {"oid": _sha256(path), "size": path.stat().st_size, "pointerSize": 134},
            }
            for file_name, path in files.items()
        ]

    @app.api_route("/{owner}/{name}/resolve/{revision}/{file_name}", methods=["GET", "HEAD"])
    async def resolve(owner: str, name: str, revision: str, file_name: str, request: Request) -> Response:
        requests.append(f"{request.method} {request.url.path}")
        path = repos.get(f"{owner}/{name}", {}).get(file_name)
        if path is None:
            return missing(f"{owner}/{name}/{file_name}")
        headers = {"X-Repo-Commit": commit(f"{owner}/{name}"), "ETag": f'"{_sha256(path)}"'}
        if request.method == "HEAD":
            return Response(headers={**headers, "Content-Length": str(path.stat().st_size)})
        return FileResponse(path, headers=headers)

    return app
