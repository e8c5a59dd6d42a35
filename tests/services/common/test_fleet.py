"""The fleet's nodes, from the registry's `nodes:` section and from LLMMESH_NODES."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.common.fleet import FleetSettings, NodeKind
from services.common.registry import ModelRegistry

REGISTRY = """
default_model: gemma
models:
  - {name: gemma, backend: mock}
nodes:
  - {name: local, tier: 1, capacity: 4}
  - {name: gpu-1, kind: mesh, address: "dns:///inference-headless:50051"}
  - {name: dell-micro, kind: ollama, address: "http://10.0.0.13:11434", tier: 2, models: ["gemma3:270m"]}
"""


def test_nodes_come_from_the_registry_file_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(REGISTRY)
    ModelRegistry.from_yaml(path)  # the inference service reads the same file and ignores its nodes
    extra = [{"name": "lab", "kind": "openai", "address": "http://10.0.0.20:8080", "weight": 2}]
    monkeypatch.setenv("LLMMESH_FLEET_FILE", str(path))
    monkeypatch.setenv("LLMMESH_NODES", json.dumps(extra))
    monkeypatch.setenv("LLMMESH_FLEET_COOLDOWN_SECONDS", "3")
    settings = FleetSettings()
    nodes = {node.name: node for node in settings.all_nodes()}
    assert list(nodes) == ["local", "gpu-1", "dell-micro", "lab"]
    assert nodes["dell-micro"].kind is NodeKind.OLLAMA and nodes["dell-micro"].models == ("gemma3:270m",)
    assert nodes["lab"].weight == 2 and nodes["gpu-1"].kind is NodeKind.MESH
    assert settings.cooldown_seconds == 3


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ([{"name": "a", "address": "x:1"}, {"name": "a", "address": "y:1"}], "named twice: a"),
        ([{"name": "remote"}], "'remote' has no address"),
    ],
)
def test_a_bad_fleet_stops_startup_with_the_reason(nodes: list[dict[str, str]], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        FleetSettings(nodes=nodes).all_nodes()  # type: ignore[arg-type]


def test_an_unreadable_nodes_section_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text("nodes:\n  - {name: x, kind: carrier-pigeon}\n")
    with pytest.raises(SystemExit, match="models.yaml"):
        FleetSettings(file=path).all_nodes()
