"""`llmmesh`: the mesh from a terminal, through the gateway's HTTP API.

    llmmesh run                                  start the whole mesh (as `make run`)
    llmmesh status                               services, models and queue
    llmmesh console [--open]                     the web console's address, signed in
    llmmesh models list | pull REPO [--file Q4_K_M] | load NAME | unload NAME
    llmmesh chat [PROMPT] [--model NAME]         one answer, or an interactive, streaming chat
    llmmesh jobs list | watch ID | cancel ID
    llmmesh train --base-model NAME --dataset FILE.jsonl   (follows the run's progress)
    llmmesh keys list | create --name N --scopes chat,jobs | revoke ID
    llmmesh token [--subject NAME] [--ttl SECONDS]   a superuser JWT for this machine's mesh

Tables for people, `--json` for scripts; errors go to stderr and the exit status says how it
went. Global options may come before or after the command. It talks to `--url` (LLMMESH_URL,
default http://127.0.0.1:8000) with `--token` (LLMMESH_TOKEN: an API key or a superuser JWT);
without one, for a gateway on this machine's loopback, it mints a short-lived superuser JWT
from the secret `make run` keeps in its data directory.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

# Plain click help: typer's rich help shows every flag as "<bool>".
app = typer.Typer(help="LLM Mesh from the terminal.", no_args_is_help=True, rich_markup_mode=None, add_completion=False)
models_app = typer.Typer(
    help="The model registry: list, pull, load, unload.", no_args_is_help=True, rich_markup_mode=None
)
jobs_app = typer.Typer(help="Async jobs: list, watch, cancel.", no_args_is_help=True, rich_markup_mode=None)
keys_app = typer.Typer(help="App API keys (superuser).", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(keys_app, name="keys")

console = Console()
stderr = Console(stderr=True)  # errors and progress: stdout carries only the output
GLOBAL_FLAGS, GLOBAL_OPTIONS = ("--json",), ("--url", "--token")  # see global_options_first
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
TERMINAL = ("succeeded", "failed", "cancelled", "expired")


class Options:
    url: str = "http://127.0.0.1:8000"
    token: str | None = None
    as_json: bool = False


options = Options()


@app.callback()
def main(
    url: Annotated[str, typer.Option(envvar="LLMMESH_URL", metavar="URL", help="The gateway.")] = Options.url,
    token: Annotated[
        str | None, typer.Option(envvar="LLMMESH_TOKEN", metavar="TOKEN", help="API key or superuser JWT.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output, for scripts.")] = False,
) -> None:
    options.url, options.token, options.as_json = url.rstrip("/"), token, as_json


def _token(minted_ttl_seconds: int = 600) -> str | None:
    """The caller's token; else, for `make run`'s own gateway (the default URL) on the machine
    where it keeps its secrets, a short-lived superuser JWT; else none (an anonymous gateway)."""
    if options.token:
        return options.token
    if httpx.URL(options.url).host not in LOOPBACK:
        return None
    return _local_jwt("llmmesh-cli", minted_ttl_seconds)


def _local_jwt(subject: str, ttl_seconds: int) -> str | None:
    """A superuser JWT signed with this machine's secret (`make run` keeps it in its data
    directory, or LLMMESH_JWT_SECRET); None where there is none."""
    from services.gateway.auth import mint_jwt
    from services.gateway.config import GatewaySettings, local_settings

    settings = GatewaySettings()
    if not (settings.data_dir / "jwt-secret").exists() and settings.jwt_secret is None:
        return None
    return mint_jwt(local_settings(settings), subject, ttl_seconds)


def _client(timeout: float = 60) -> httpx.Client:
    token = _token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=options.url, headers=headers, timeout=timeout)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        with _client() as http:
            response = http.request(method, path, **kwargs)
    except httpx.TransportError as error:
        _fail(f"cannot reach the gateway at {options.url}: {error}")
    return _body(response)


def _body(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        _fail(f"{response.status_code}: {message}")
    return response.json()


def _fail(message: str) -> Any:
    stderr.print(f"[red]error[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _events(method: str, path: str, timeout: float = 3600, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The JSON events of a server-sent event stream, until [DONE] or its end."""
    try:
        with _client(timeout) as http, http.stream(method, path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                _body(response)
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    event = json.loads(line.removeprefix("data: "))
                    if "error" in event and isinstance(event["error"], dict):
                        _fail(event["error"].get("message", "the stream failed"))
                    yield event
    except httpx.TransportError as error:
        _fail(f"cannot reach the gateway at {options.url}: {error}")


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))  # plain: never wrapped or coloured


def _cell(column: str, value: Any) -> str:
    """A value as people read it: dates, not epoch seconds; lists comma-separated."""
    if value is None:
        return ""
    if column.endswith("_at") and isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value)
    return str(value)


def _show(rows: list[dict[str, Any]], columns: list[str], title: str = "") -> None:
    if options.as_json:
        _print_json(rows)
        return
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_cell(c, row.get(c)) for c in columns))
    console.print(table)


# ---- the mesh ----


@app.command()
def run() -> None:
    """Start the whole mesh on this machine, as `make run` does."""
    from services.__main__ import main as launch

    launch()


@app.command()
def status() -> None:
    """Services, models and the queue."""
    with _client() as http:
        try:
            health = http.get("/health").json()
        except (httpx.TransportError, ValueError) as error:
            _fail(f"cannot reach the gateway at {options.url}: {error}")
        models = _body(http.get("/v1/models"))["data"]
        queue = http.get("/v1/queue")
    if options.as_json:
        _print_json({"health": health, "models": models})
        return
    colour = {"ok": "green", "degraded": "yellow"}.get(health.get("status"), "red")
    console.print(f"mesh: [{colour}]{health.get('status')}[/{colour}]  current model: {health.get('current_model')}")
    rows = [{"service": name, "state": state} for name, state in health.get("services", {}).items()]
    rows += [{"service": name, "state": dep["state"]} for name, dep in health.get("dependencies", {}).items()]
    _show(rows, ["service", "state"])
    _show([m for m in models if m.get("type") == "chat"], ["id", "backend", "state", "context_length"], "models")
    if queue.status_code == 200:
        _show(queue.json()["models"], ["model", "state", "running", "waiting"], "queue")


@app.command("console")
def web_console(
    open_browser: Annotated[bool, typer.Option("--open", help="Open it in the default browser.")] = False,
) -> None:
    """The web console's address, signed in: the token rides in the #fragment, which browsers
    never send to a server; the page moves it into the tab's sessionStorage."""
    import webbrowser

    token = _token(minted_ttl_seconds=8 * 3600)
    address = f"{options.url}/console/" + (f"#token={token}" if token else "")
    if options.as_json:
        _print_json({"url": address})
    else:
        console.print(address, highlight=False, soft_wrap=True)
    if open_browser:
        webbrowser.open(address)


# ---- models ----


@models_app.command("list")
def models_list() -> None:
    """Every model the gateway serves, with its state."""
    models = _call("GET", "/v1/models")["data"]
    _show(models, ["id", "type", "backend", "state", "context_length"])


@models_app.command("pull")
def models_pull(
    repo: Annotated[str, typer.Argument(help="Hugging Face repository, owner/name.")],
    file: Annotated[str, typer.Option(help="Which .gguf: a glob or part of its name.")] = "",
    name: Annotated[str, typer.Option(help="Registry name; default: from the repository.")] = "",
    revision: Annotated[str, typer.Option(help="Branch, tag or commit.")] = "",
) -> None:
    """Download a GGUF model from the Hub and add it to the registry, with a progress bar."""
    body = {"repo": repo, "file": file, "name": name, "revision": revision}
    model: dict[str, Any] | None = None
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), DownloadColumn())
    with Progress(*columns, TransferSpeedColumn(), console=stderr, disable=options.as_json) as progress:
        # The stages: finding the repository (and any wait for the Hub), the download, the entry.
        task = progress.add_task(f"finding {repo} on the Hub", total=None)
        for event in _events("POST", "/admin/models/pull", json=body):
            if event.get("status"):
                progress.update(task, description=event["status"])
                continue
            total = event["total_bytes"] or None
            progress.update(task, description=event["file"], completed=event["downloaded_bytes"], total=total)
            model = event.get("model") or model
    if model is None:
        _fail("the pull ended without a model")
    assert model is not None
    if options.as_json:
        _print_json(model)
    else:
        console.print(
            f"[green]pulled[/green] {model['id']} ({model.get('backend')}): try `llmmesh chat --model {model['id']}`"
        )


@models_app.command("load")
def models_load(name: str) -> None:
    """Load a model now (instead of on its first request)."""
    with stderr.status(f"loading {name}...", spinner="dots"):
        model = _call("POST", f"/admin/models/{name}/load", timeout=None)
    _show([model], ["id", "backend", "state"])


@models_app.command("unload")
def models_unload(name: str) -> None:
    """Unload a model (running requests finish first)."""
    _show([_call("POST", f"/admin/models/{name}/unload")], ["id", "backend", "state"])


# ---- chat ----


@app.command()
def chat(
    prompt: Annotated[str, typer.Argument(help="Ask this once and print the answer.")] = "",
    model: Annotated[str, typer.Option(help="Model, slot or alias.")] = "live",
    system: Annotated[str, typer.Option(help="A system prompt.")] = "",
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 512,
) -> None:
    """One answer to PROMPT; without it, a chat that streams its answers (an empty line or
    Ctrl-D ends it). Piped input is read line by line, with no prompts."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    interactive = not prompt and sys.stdin.isatty()
    questions = iter([prompt]) if prompt else None
    while True:
        try:
            if questions is not None:
                question = next(questions)
            elif interactive:
                question = console.input("[bold cyan]you>[/bold cyan] ")
            else:
                question = input()
        except (EOFError, KeyboardInterrupt, StopIteration):
            break
        if not question.strip():
            break
        history.append({"role": "user", "content": question})
        body = {"model": model, "messages": history, "stream": True, "max_tokens": max_tokens}
        answer, finish = [], None
        for event in _events("POST", "/v1/chat/completions", json=body):
            for choice in event.get("choices", []):
                piece = choice.get("delta", {}).get("content") or ""
                finish = choice.get("finish_reason") or finish
                answer.append(piece)
                if not options.as_json:
                    console.print(piece, end="", markup=False, highlight=False)
        content = "".join(answer)
        if options.as_json:
            _print_json({"model": model, "content": content, "finish_reason": finish})
        else:
            console.print()
            if finish == "length":
                stderr.print(f"[yellow](cut at --max-tokens {max_tokens})[/yellow]")
        history.append({"role": "assistant", "content": content})


# ---- jobs ----


@jobs_app.command("list")
def jobs_list(
    state: Annotated[list[str] | None, typer.Option(help="Only jobs in this state (repeatable).")] = None,
    limit: int = 20,
) -> None:
    """Your jobs, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    jobs = _call("GET", "/v1/jobs", params=params)["data"]
    _show(jobs, ["id", "job_type", "state", "attempt", "created_at"])


@jobs_app.command("watch")
def jobs_watch(job_id: str) -> None:
    """Follow a job until it ends, with its progress."""
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=stderr, disable=options.as_json) as progress:
        task = progress.add_task(job_id, total=100)
        last: dict[str, Any] = {}
        for last in _events("GET", f"/v1/jobs/{job_id}/events"):
            percent = (last.get("progress") or {}).get("percent", 0)
            progress.update(task, completed=100 if last["state"] == "succeeded" else percent, description=last["state"])
    if options.as_json:
        _print_json(last)
    elif last.get("error"):
        stderr.print(f"[red]{last['state']}[/red]: {escape(str(last['error']))}", soft_wrap=True)
    if last.get("state") != "succeeded":
        raise typer.Exit(1)  # failed, cancelled, expired, or the stream ended early


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    _show([_call("POST", f"/v1/jobs/{job_id}/cancel")], ["id", "job_type", "state"])


# ---- training ----


@app.command()
def train(
    base_model: Annotated[str, typer.Option(help="The model to adapt.")],
    dataset: Annotated[Path, typer.Option(help="Chat examples, JSONL ({'messages': [...]}).", exists=True)],
    epochs: int = 1,
) -> None:
    """Train a LoRA adapter on a dataset file and follow its progress."""
    examples = [json.loads(line) for line in dataset.read_text().splitlines() if line.strip()]
    request = {"base_model": base_model, "dataset": examples, "hyperparameters": {"epochs": epochs}}
    job = _call("POST", "/internal/queue/enqueue", json={"job_type": "adapter_train", "request": request})
    console.print(f"job {job['id']} queued", highlight=False)
    jobs_watch(job["id"])
    final = _call("GET", f"/v1/jobs/{job['id']}")
    if final["state"] == "succeeded":
        console.print(f"[green]adapter[/green] {final['result'].get('adapter_id')}")


# ---- keys ----


@keys_app.command("list")
def keys_list() -> None:
    """App API keys (never the keys themselves)."""
    _show(_call("GET", "/admin/keys")["data"], ["id", "name", "scopes", "created_at", "revoked_at"])


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option()],
    scopes: Annotated[str, typer.Option(help="Comma-separated: chat, embeddings, jobs, admin.")],
    rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
) -> None:
    """Create a key; it is shown once."""
    body: dict[str, Any] = {"name": name, "scopes": [s.strip() for s in scopes.split(",") if s.strip()]}
    if rpm is not None:
        body["rpm_limit"] = rpm
    key = _call("POST", "/admin/keys", json=body)
    if options.as_json:
        _print_json(key)
    else:
        console.print(f"{key['id']}: [bold]{key['key']}[/bold] (shown once)")


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key."""
    _show([_call("DELETE", f"/admin/keys/{key_id}")], ["id", "name", "revoked_at"])


# ---- this machine ----


@app.command()
def token(
    subject: Annotated[str, typer.Option(help="Who the token names.")] = "admin",
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
) -> None:
    """A superuser JWT for this machine's mesh, signed with the secret `make run` keeps (or
    LLMMESH_JWT_SECRET): for the console's sign-in, curl or an SDK."""
    minted = _local_jwt(subject, ttl)
    if minted is None:
        _fail("no JWT secret on this machine: start the mesh once (make run) or set LLMMESH_JWT_SECRET")
    if options.as_json:
        _print_json({"token": minted, "expires_in": ttl})
    else:
        typer.echo(minted)


def global_options_first(argv: Sequence[str]) -> list[str]:
    """`argv` with the global options moved before the command, so that `llmmesh status --json`
    means what `llmmesh --json status` does (click reads a group's options only before it)."""
    front: list[str] = []
    rest: list[str] = []
    arguments = iter(argv)
    for argument in arguments:
        name = argument.split("=", 1)[0]
        if argument == "--":
            rest += [argument, *arguments]
        elif argument in GLOBAL_FLAGS:
            front.append(argument)
        elif name in GLOBAL_OPTIONS:
            front += [argument] if "=" in argument else [argument, next(arguments, "")]
        else:
            rest.append(argument)
    return front + rest


def entry() -> None:
    """The console script."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app(args=global_options_first(sys.argv[1:]))


if __name__ == "__main__":
    entry()
