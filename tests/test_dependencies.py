"""The lock: every install comes from uv.lock, which pins the whole tree with hashes, and a
dependency changed without `make lock` stops CI with a message saying so."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UV = ROOT / ".tools" / "bin" / "uv"
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
PACKAGES = {package["name"]: package for package in LOCK["package"]}


def test_every_package_is_pinned_with_hashes() -> None:
    for name, package in PACKAGES.items():
        if name == "llmmesh":
            continue
        files = package.get("wheels", []) + ([package["sdist"]] if "sdist" in package else [])
        assert files, f"{name} has no locked files"
        assert all(file["hash"].startswith("sha256:") for file in files), name


def test_transformers_and_peft_are_a_pair_that_loads_adapters() -> None:
    # transformers 5.24 refuses PEFT below 0.22 in load_adapter; 0.21.2 is the newest PEFT.
    transformers = tuple(int(part) for part in PACKAGES["transformers"]["version"].split(".")[:2])
    peft = tuple(int(part) for part in PACKAGES["peft"]["version"].split(".")[:2])
    assert peft >= (0, 22) or transformers < (5, 24)


def test_the_installed_environment_is_the_lock() -> None:
    from importlib.metadata import version

    for name in ("transformers", "peft", "torch", "llama-cpp-python", "grpcio", "fastapi"):
        assert version(name) == PACKAGES[name]["version"], name


def test_torch_is_the_cpu_build() -> None:
    assert PACKAGES["torch"]["version"].endswith("+cpu")
    assert not any(name.startswith("nvidia-") for name in PACKAGES)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The files `make lock-check` reads, with their times kept (so make does not rebuild uv)."""
    for name in ("Makefile", "pyproject.toml", "uv.lock", "README.md", "tools/uv-requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    return tmp_path


def _lock_check(project: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "lock-check", f"UV={UV}"],
        cwd=project,
        env={**os.environ, "UV_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_unchanged_project_passes_the_lock_check(project_copy: Path) -> None:
    result = _lock_check(project_copy)
    assert result.returncode == 0, result.stderr


def test_a_dependency_changed_without_make_lock_fails_the_check_saying_so(project_copy: Path) -> None:
    pyproject = project_copy / "pyproject.toml"
    changed = re.sub(r'"httpx>=[^"]*"', '"httpx>=0.27,<0.28"', pyproject.read_text())
    assert changed != pyproject.read_text()
    pyproject.write_text(changed)
    result = _lock_check(project_copy)
    assert result.returncode != 0
    assert "run 'make lock'" in result.stderr


def test_every_cpu_image_installs_exactly_the_lock() -> None:
    for dockerfile in sorted((ROOT / "deploy" / "docker").glob("Dockerfile.*")):
        text = dockerfile.read_text()
        if dockerfile.name.endswith("-cuda"):  # the vLLM image: its own CUDA torch, outside the lock
            assert "-r /src/deploy/requirements/vllm.txt" in text
            continue
        installs = [line for line in text.splitlines() if "pip install" in line]
        # pip installs only uv itself, by hash; everything else is `uv sync --frozen`.
        assert all("--require-hashes -r /src/tools/uv-requirements.txt" in line for line in installs), dockerfile.name
        syncs = re.findall(r"uv sync --frozen [^\n]*--extra [^\n]*", text)
        assert len(syncs) == 1, dockerfile.name
        extras = re.findall(r"--extra ([\w-]+)", syncs[0])  # the service's, and engines it runs (llama-server)
        optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
        assert extras and all(extra in optional for extra in extras), dockerfile.name
