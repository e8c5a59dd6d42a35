"""README.md and docs/ as a newcomer uses them: short enough to read, every link resolves, and
every `make`, `llmmesh` and `python -m` command they show exists as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import typer.main

from services import settings_reference
from services.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


def test_the_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: the web is not checked here
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: {target}"


def commands(prefix: str) -> set[str]:
    """Each `prefix ...` line in the pages' code, as written (a leading .venv/bin/ dropped)."""
    found = set()
    for page in PAGES:
        for line in page.read_text().splitlines():
            line = re.sub(r"^\s*(\$ )?(\.venv/bin/)?", "", line)
            for part in line.split(";"):
                part = part.strip().strip("`")
                if part.startswith(prefix):
                    found.add(part.split("#")[0].strip())
    return found


def make_targets_shown(text: str) -> set[str]:
    """`make X` in inline code, and lines of fenced code that run make."""
    fenced = [
        re.findall(r"^\s*make ([a-z][\w-]*)", block, re.MULTILINE) for block in re.findall(r"```.*?```", text, re.S)
    ]
    return set(re.findall(r"`make ([a-z][\w-]*)", text)) | {target for block in fenced for target in block}


def test_every_make_target_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.MULTILINE))
    shown = set().union(*(make_targets_shown(page.read_text()) for page in PAGES))
    assert "test" in shown and shown - targets == set()


def test_every_llmmesh_command_exists() -> None:
    group = typer.main.get_command(app)
    assert commands("llmmesh ")
    for line in commands("llmmesh "):
        command, words = group, iter(line.split()[1:])
        for word in words:
            if word in ("--url", "--token"):
                next(words, None)  # the option's value
            elif not word.startswith("-") and isinstance(command, typer.core.TyperGroup):
                assert word in command.commands, line
                command = command.commands[word]
        assert not isinstance(command, typer.core.TyperGroup), line


def test_every_python_module_exists() -> None:
    modules = {m for page in PAGES for m in re.findall(r"python -m ([\w.]+)", page.read_text())}
    assert modules
    for module in sorted(modules):
        assert importlib.util.find_spec(module) is not None, module


def test_the_configuration_page_says_what_the_code_reads() -> None:
    page = ROOT / "docs" / "configuration.md"
    assert settings_reference.embedded(page.read_text()) == page.read_text(), "stale: run `make docs`"
    reference = settings_reference.reference()
    assert "|  |" not in reference  # every setting describes itself
    for variable in ("LLMMESH_INFERENCE_MODELS_FILE", "LIVE_MODEL_NAME", "LLMMESH_GATEWAY_MAX_BODY_BYTES"):
        assert f"`{variable}`" in reference
