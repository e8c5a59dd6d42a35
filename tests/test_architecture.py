"""The shape of the house: a package reaches another only through its public surface (its typed
client and its contract module), the shared runtime (services/common) reaches none, and no modules
import each other in a circle."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).resolve().parents[1] / "services"
PACKAGES = sorted(p.name for p in SERVICES.iterdir() if (p / "__init__.py").exists() and p.name != "common")
# A package's public surface: what callers use (client.py) and what they send and get (api.py).
PUBLIC = ("client", "api")
# Libraries without a server: every module is public, and they import only contracts and common.
LIBRARIES = ("upstream",)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside functions (`from a import b` may name a module a.b)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _module_path(f"{node.module}.{alias.name}") is not None
            )
    return modules


def _module_path(module: str) -> Path | None:
    base = SERVICES.parent.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def crossings(package: str) -> list[str]:
    """`file: module` for each import of another package's insides."""
    found = []
    for path in sorted((SERVICES / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            parts = module.split(".")
            if parts[0] != "services" or len(parts) < 2 or parts[1] in (package, "common"):
                continue
            if parts[1] not in PACKAGES:
                continue
            public = parts[1] in LIBRARIES or (len(parts) == 3 and parts[2] in PUBLIC) or len(parts) == 2
            if package == "common" or package in LIBRARIES and not (len(parts) == 3 and parts[2] == "api"):
                found.append(f"{path.relative_to(SERVICES)}: {module}")
            elif not public:
                found.append(f"{path.relative_to(SERVICES)}: {module}")
    return found


def test_the_packages_are_the_ones_expected() -> None:
    assert PACKAGES == ["embeddings", "fleet", "gateway", "inference", "scheduler", "trainer", "upstream"]


def test_packages_reach_each_other_only_through_their_public_surface() -> None:
    assert [crossing for package in PACKAGES for crossing in crossings(package)] == []


def test_the_shared_runtime_imports_no_service() -> None:
    assert crossings("common") == []


def test_every_service_that_is_called_has_a_typed_client() -> None:
    for package in ("embeddings", "fleet", "inference", "scheduler", "trainer"):
        assert (SERVICES / package / "client.py").is_file(), package


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph: dict[str, set[str]] = {}
    for path in SERVICES.rglob("*.py"):
        name = ".".join(path.relative_to(SERVICES.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = {m for m in imported_modules(path) if m.startswith("services.") and _module_path(m)}
    circles = []
    for start in sorted(graph):
        stack, seen = [(start, [start])], {start}
        while stack:
            module, trail = stack.pop()
            for target in sorted(graph.get(module, ())):
                if target == start and len(trail) > 1:
                    circles.append(" -> ".join([*trail, start]))
                elif target not in seen and target > start:  # each circle once, from its least member
                    seen.add(target)
                    stack.append((target, [*trail, target]))
    assert circles == []
