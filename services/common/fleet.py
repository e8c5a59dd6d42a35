"""The fleet: the nodes that serve models, declared once for every process that routes to them
(the gateway and the scheduler, through the inference client).

Nodes come from the registry's `nodes:` section (LLMMESH_FLEET_FILE names the YAML; usually
the inference service's models.yaml) and from LLMMESH_NODES, a JSON list of the same entries:

    nodes:
      - {name: gpu-1, kind: mesh, address: "10.0.0.11:50051"}
      - {name: gpu-2, kind: openai, address: "http://10.0.0.12:8080", weight: 2}
      - {name: dell-micro, kind: ollama, address: "http://10.0.0.13:11434", tier: 2, capacity: 2}

The inference service the process is configured with (its `inference_target`) is always a
node too, named `local` unless `home_node` says otherwise; an entry of that name sets its
tier, weight and capacity.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

NODE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class NodeKind(StrEnum):
    MESH = "mesh"  # another LLM Mesh inference service, over gRPC
    OPENAI = "openai"  # an OpenAI-compatible server: llama-server, vLLM, LM Studio, an LLM Mesh gateway
    OLLAMA = "ollama"  # Ollama, over its native API


class NodeSpec(BaseModel):
    """One node of the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NODE_NAME_PATTERN, description="What responses, metrics and `model@node` call it.")
    kind: NodeKind = NodeKind.MESH
    address: str = Field(
        "",
        description="mesh: host:port, dns:///name:port (every replica) or ipv4:a:p,b:p; openai and ollama: "
        "the base URL. May be empty only for the home node.",
    )
    tier: int = Field(1, ge=1, le=100, description="Priority tier: 1 first; the next tier takes overflow.")
    weight: float = Field(1.0, gt=0, le=1000, description="Relative share of the load among its tier.")
    capacity: int | None = Field(
        None,
        ge=1,
        description="Requests it runs at once before it counts as saturated (overflow moves to the next tier). "
        "Unset: the slots llama-server reports, else never saturated.",
    )
    models: tuple[str, ...] | None = Field(None, description="The models it serves; unset: discovered.")
    auth_token_env: str | None = Field(None, description="Environment variable holding its bearer token.")


class FleetSettings(BaseSettings):
    """How the inference client routes (env prefix LLMMESH_FLEET_; the nodes also as LLMMESH_NODES)."""

    model_config = SettingsConfigDict(env_prefix="LLMMESH_FLEET_", extra="ignore", frozen=True, populate_by_name=True)

    nodes: list[NodeSpec] = Field(
        default_factory=list,
        validation_alias=AliasChoices("LLMMESH_NODES", "LLMMESH_FLEET_NODES"),
        description="Nodes beside the home inference service (JSON list).",
    )
    file: Path | None = Field(None, description="A registry YAML whose `nodes:` section is read too.")
    home_node: str = Field("local", pattern=NODE_NAME_PATTERN, description="The home inference service's name.")
    probe_seconds: float = Field(2.0, gt=0, description="How often each node's health and load are read.")
    discovery_seconds: float = Field(15.0, gt=0, description="How often each node's model list is read again.")
    failure_threshold: int = Field(3, ge=1, description="Failures in a row that open a node's circuit.")
    cooldown_seconds: float = Field(10.0, gt=0, description="How long an open circuit keeps a node out.")
    first_token_timeout_seconds: float = Field(
        60.0, gt=0, description="A node silent this long before its first chunk is failed over (model loads count)."
    )

    def all_nodes(self) -> list[NodeSpec]:
        """The file's nodes, then the environment's; a name used twice is a startup error."""
        nodes = [*(read_nodes(self.file) if self.file else []), *self.nodes]
        names = [node.name for node in nodes]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise SystemExit(f"Fleet nodes named twice: {', '.join(duplicates)}.")
        for node in nodes:
            if not node.address and node.name != self.home_node:
                raise SystemExit(f"Fleet node '{node.name}' has no address.")
        return nodes


class _NodesSection(BaseModel):
    nodes: list[NodeSpec] = Field(default_factory=list)


def read_nodes(path: Path) -> list[NodeSpec]:
    """The `nodes:` section of a registry YAML (its models are the inference service's business)."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        return _NodesSection.model_validate({"nodes": raw.get("nodes") or []}).nodes
    except (OSError, yaml.YAMLError, AttributeError, ValidationError) as error:
        raise SystemExit(f"Cannot read the fleet's nodes from {path}: {error}") from error
