"""Pulling a GGUF model from the Hugging Face Hub (or the mirror HF_ENDPOINT names).

The download runs in a child process (services/common/child.py) with the Hub's offline
mode lifted for it alone: huggingface_hub resumes a partial download, checks it and keeps
it in its cache, and a crash or a cancel kills the child, never the service. The child
reports progress as JSON lines; the parent turns the finished file into a registry entry
(context length from the GGUF metadata, a memory estimate from the file size).

    python -m services.inference.server.pull RUN_DIR     (the child; RUN_DIR/request.json says what)
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from services.common.child import Child, ChildFailed, Event, emit
from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.registry import ModelSpec

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# Quantizations preferred when the caller names none: a good size-quality balance first.
PREFERRED = ("q4_k_m", "q4_k_s", "q5_k_m", "q4_0", "q8_0")
MAX_CONTEXT = 8192  # the default context of a pulled model's entry; the registry may raise it
PROGRESS_SECONDS = 0.25
MAX_MESSAGE = 500  # errors and statuses quote the Hub's words, bounded


@dataclass(frozen=True)
class PullProgress:
    """One step of a pull: bytes so far; the last one carries the registry entry."""

    file: str
    downloaded: int
    total: int
    spec: ModelSpec | None = None
    status: str = ""  # what the pull waits for while no bytes move (the Hub not answering)


def check_pull(repo: str, file: str, revision: str) -> None:
    if not REPO_ID.match(repo) or ".." in repo:
        raise InvalidArgument("'repo' must be a Hub repository id, 'owner/name'.", param="repo")
    if len(file) > 200 or any(c in file for c in "/\\\x00"):
        raise InvalidArgument("'file' must be a file name pattern, e.g. 'Q4_K_M'.", param="file")
    if revision and (not REVISION.match(revision) or ".." in revision):
        raise InvalidArgument("'revision' must be a branch, tag or commit.", param="revision")


def default_name(repo: str, file: str) -> str:
    """A registry name for the pulled file: the repository's, without a -GGUF suffix, plus the
    quantization when the file names one."""
    base = re.sub(r"[-_.]gguf$", "", repo.split("/")[-1], flags=re.IGNORECASE).lower()
    quant = re.search(r"(i?q\d[\w]*?|f16|bf16|f32)(?=\.gguf$)", file, re.IGNORECASE)
    name = f"{base}-{quant.group(1).lower()}" if quant and quant.group(1).lower() not in base else base
    return re.sub(r"[^A-Za-z0-9._:-]", "-", name)


async def pull(repo: str, file: str, revision: str, name: str) -> AsyncIterator[PullProgress]:
    """Download the chosen GGUF file and yield progress; the last item has the registry entry."""
    check_pull(repo, file, revision)
    with tempfile.TemporaryDirectory(prefix="llmmesh-pull-") as run_dir:
        (Path(run_dir) / "request.json").write_text(json.dumps({"repo": repo, "file": file, "revision": revision}))
        child = Child("services.inference.server.pull", Path(run_dir), environment={"HF_HUB_OFFLINE": None})
        events: list[Event] = []
        steps: asyncio.Queue[PullProgress | None] = asyncio.Queue()

        async def on_event(event: Event) -> None:
            events.append(event)
            if event["event"] == "progress":
                steps.put_nowait(PullProgress(event["file"], int(event["downloaded"]), int(event["total"])))
            elif event["event"] == "status":
                steps.put_nowait(PullProgress("", 0, 0, status=str(event["message"])[:MAX_MESSAGE]))

        run = asyncio.create_task(child.run(on_event))
        run.add_done_callback(lambda _: steps.put_nowait(None))  # the end of the steps
        try:
            while (step := await steps.get()) is not None:
                yield step
            try:
                run.result()
            except ChildFailed as failure:
                raise _failure(events, failure) from None
        finally:
            if not run.done():  # the caller went away: the download stops with it
                child.kill()
                run.cancel()
    done = next((e for e in reversed(events) if e["event"] == "done"), None)
    if done is None:
        raise Unavailable("The pull ended without a file.")
    size = int(done["size"])
    spec = ModelSpec(
        name=name or default_name(repo, done["file"]),
        backend="gguf",
        path=done["path"],
        context_length=min(int(done.get("context_length") or 4096), MAX_CONTEXT),
        # The file's weights plus a KV cache and scratch: what the memory budget counts.
        memory_mb=int(size * 1.2 / 2**20) + 64,
        options={"n_parallel": 4},
    )
    yield PullProgress(done["file"], size, size, spec)


def _failure(events: list[Event], failure: ChildFailed) -> Exception:
    """The child's own account of what went wrong, as the error a caller can act on."""
    error = next((e for e in reversed(events) if e["event"] == "error"), None)
    if error is None:  # it died without saying why: its last words, never a whole traceback
        return Unavailable(f"The model pull failed: {str(failure).split(' | ')[-1][-MAX_MESSAGE:]}")
    kind, message = error.get("kind"), str(error.get("message", ""))[:MAX_MESSAGE]
    if kind == "not_found":
        return NotFound(message, param="repo")
    if kind == "invalid":
        return InvalidArgument(message, param="file")
    return Unavailable(message)


# ---- the child ----


def choose_file(files: list[str], pattern: str) -> str:
    """The GGUF file to pull: the one `pattern` names (a glob, or a substring), else the preferred
    quantization, else the smallest-sounding single file. Split files (-00001-of-00003) are not
    supported yet."""
    ggufs = sorted(f for f in files if f.lower().endswith(".gguf") and "/" not in f.strip("/"))
    if not ggufs:
        raise LookupError(f"the repository has no .gguf file (it has: {', '.join(sorted(files)[:10])})")
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        matches = [f for f in ggufs if fnmatch.fnmatch(f.lower(), glob.lower())]
        if len(matches) != 1:
            found = "no file" if not matches else f"{len(matches)} files ({', '.join(matches)})"
            raise ValueError(f"'{pattern}' matches {found}; the .gguf files are: {', '.join(ggufs)}")
        return matches[0]
    for quant in PREFERRED:
        for candidate in ggufs:
            if quant in candidate.lower():
                return candidate
    if len(ggufs) == 1:
        return ggufs[0]
    raise ValueError(f"several .gguf files; name one with 'file': {', '.join(ggufs)}")


def gguf_context_length(path: str) -> int | None:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    architecture = reader.fields.get("general.architecture")
    if architecture is None:
        return None
    name = bytes(architecture.parts[architecture.data[0]]).decode()
    field = reader.fields.get(f"{name}.context_length")
    return int(field.parts[field.data[0]][0]) if field is not None else None


class RetriesReported(logging.Handler):
    """huggingface_hub retries a Hub that does not answer for about 25 s, saying so only in its
    log: each retry becomes a status event, so the caller hears at once what the wait is."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if " thrown while requesting " in message:
            self.reason = message.split(" thrown while requesting ")[0].strip("'\" ")
        elif message.startswith("Retrying in"):
            emit("status", message=f"The Hub did not answer ({self.reason}); {message[0].lower()}{message[1:]}")


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:MAX_MESSAGE]


def main(run_dir: Path) -> None:
    from huggingface_hub import HfApi, constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    from tqdm import tqdm

    logging.getLogger("huggingface_hub").addHandler(RetriesReported())
    request = json.loads((run_dir / "request.json").read_text())
    repo, revision = request["repo"], request["revision"] or None
    try:
        files = HfApi().list_repo_files(repo, revision=revision)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        emit("error", kind="not_found", message=f"No repository '{repo}' (or revision) on the Hub: {error}")
        sys.exit(2)
    except Exception as error:  # the Hub unreachable or failing: one line, not a traceback
        emit("error", kind="unavailable", message=f"Cannot list {repo} on {constants.ENDPOINT}: {one_line(error)}")
        sys.exit(2)
    try:
        chosen = choose_file(files, request["file"])
    except (LookupError, ValueError) as error:
        emit("error", kind="invalid", message=str(error))
        sys.exit(2)

    class Reported(tqdm):  # type: ignore[type-arg]
        """huggingface_hub's progress bar, reported to the parent a few times a second."""

        reported_at = 0.0

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if time.monotonic() - self.reported_at >= PROGRESS_SECONDS or self.n >= (self.total or 0):
                self.reported_at = time.monotonic()
                emit("progress", file=chosen, downloaded=int(self.n), total=int(self.total or 0))
            return shown

    emit("progress", file=chosen, downloaded=0, total=0)
    try:
        path = hf_hub_download(repo, chosen, revision=revision, tqdm_class=Reported)
    except Exception as error:
        where = f"{chosen} from {constants.ENDPOINT}"
        emit("error", kind="unavailable", message=f"Cannot download {where}: {one_line(error)}")
        sys.exit(2)
    size = os.path.getsize(path)
    emit("progress", file=chosen, downloaded=size, total=size)
    emit("done", file=chosen, path=str(Path(path).resolve()), size=size, context_length=gguf_context_length(path))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
