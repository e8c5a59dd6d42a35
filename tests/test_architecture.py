"""The shape every service keeps: a service package reaches another service only through its
typed client (services/<name>/client.py), and the shared runtime (services/common) reaches none."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"
PACKAGES = sorted(p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists() and p.name != "common")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def crossings(package: str) -> list[str]:
    """`file: module` for each import of another service's package other than its client."""
    found = []
    for path in sorted((SERVICES / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            parts = module.split(".")
            if parts[0] != "services" or len(parts) < 2 or parts[1] in (package, "common"):
                continue
            if parts[1] in PACKAGES and module != f"services.{parts[1]}.client":
                found.append(f"{path.relative_to(SERVICES)}: {module}")
            if package == "common" and parts[1] in PACKAGES:
                found.append(f"{path.relative_to(SERVICES)}: {module}")
    return found


def test_the_service_packages_are_the_ones_expected() -> None:
    assert PACKAGES == ["embeddings", "gateway", "inference", "scheduler", "trainer"]


def test_services_reach_each_other_only_through_their_clients() -> None:
    assert [crossing for package in PACKAGES for crossing in crossings(package)] == []


def test_the_shared_runtime_imports_no_service() -> None:
    assert crossings("common") == []


def test_every_service_that_is_called_has_a_typed_client() -> None:
    for package in ("embeddings", "inference", "scheduler", "trainer"):
        assert (SERVICES / package / "client.py").is_file(), package
