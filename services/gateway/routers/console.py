"""The web console: a static single-page app under /console (services/gateway/console/).

It holds no session of its own: the page asks for a superuser JWT or an API key once, keeps
it in the tab's sessionStorage and sends it as `Authorization` on every call, so there is no
cookie for another site to ride. The Content-Security-Policy allows only this origin's scripts
and connections, and no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse, Response

from services.common.errors import NotFound

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console"
# The files are static: listed once, so a request is a lookup (no path to resolve, no stat).
CONSOLE_FILES = {path.relative_to(CONSOLE_DIR).as_posix(): path for path in CONSOLE_DIR.rglob("*") if path.is_file()}
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # Revalidate each load (FileResponse sends an ETag): an upgrade never serves a stale app.
    "cache-control": "no-cache",
}
MEDIA_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".css": "text/css", ".html": "text/html"}

router = APIRouter(include_in_schema=False)


@router.get("/console")
async def console_root() -> Response:
    return RedirectResponse("/console/")


@router.get("/console/{path:path}")
async def console_file(path: str) -> Response:
    """A file of the console (its views are #fragments of index.html, so there are no others)."""
    target = CONSOLE_FILES.get(path or "index.html")
    if target is None:
        raise NotFound(f"No console file '{path}'.")
    return FileResponse(target, media_type=MEDIA_TYPES.get(target.suffix), headers=SECURITY_HEADERS)
