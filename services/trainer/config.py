"""Trainer settings (env prefix LLMMESH_TRAINER_) and training defaults.

Training defaults are LLMMESH_TRAINER_<NAME>; the design documents' JARVIS_ADAPTER_<NAME>
are accepted too (services/common/compat.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common import compat
from services.common.config import ServiceSettings
from services.common.registry import DEFAULT_MODELS_FILE
from services.trainer.domain import Hyperparameters

# The environment names of the hyperparameter defaults, where they are not the field's own.
_ENV_NAMES = {"max_seq_length": "MAX_SEQ_LEN", "load_in_4bit": "TRAIN_LOAD_IN_4BIT"}


class _DefaultsFromEnvironment(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    def resolved(self) -> Hyperparameters:
        return Hyperparameters.checked(self.model_dump(exclude_none=True))


# Hyperparameters a request leaves unset, from LLMMESH_TRAINER_<NAME> or JARVIS_ADAPTER_<NAME>:
# the fields are Hyperparameters' own (one declaration, services/trainer/domain.py), each
# optional here; an unset one keeps Hyperparameters' default, and bounds are checked there.
TrainingDefaults = create_model(
    "TrainingDefaults",
    __base__=_DefaultsFromEnvironment,
    **{
        name: (
            Optional[info.annotation],  # noqa: UP045 - a runtime type, not an annotation
            compat.env(
                f"LLMMESH_TRAINER_{_ENV_NAMES.get(name, name.upper())}",
                description=f"{info.description} Unset: {json.dumps(info.default)}.",
            ),
        )
        for name, info in Hyperparameters.model_fields.items()
    },  # type: ignore[call-overload]
)


class TrainerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LLMMESH_TRAINER_")

    port: int = Field(50054, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    models_file: Path = Field(DEFAULT_MODELS_FILE, description="The model registry YAML (base models).")
    transformers_cache_dir: Path = Field(
        Path(".data/transformers"), description="Dequantized GGUF checkpoints (shared with the transformers backend)."
    )
    work_dir: Path | None = Field(None, description="Scratch space for runs. Unset: <data_dir>/training.")
    max_concurrent_runs: int = Field(1, ge=1, description="Training subprocesses at once (one GPU: 1).")
    inference_target: str = Field("127.0.0.1:50051", description="host:port of the inference gRPC service.")
    free_inference_memory: bool = Field(
        False, description="Ask inference to unload its models before training and reload them after (one GPU)."
    )
    max_dataset_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest dataset read from a URI.")
    max_examples: int = Field(100_000, ge=1, description="Most examples (training and held out) in one run.")
    max_epochs: int = Field(20, ge=1, description="Most epochs one run may ask for.")
    max_steps: int = Field(100_000, ge=1, description="Most optimizer steps one run may ask for.")
    max_run_seconds: float = Field(
        6 * 3600, gt=0, description="Wall-clock limit of a run; past it the run is killed and fails."
    )
    dataset_locations: list[str] = Field(
        default_factory=list,
        description='Where datasets may be read from, e.g. ["s3://datasets/team-a/"] (JSON list). Empty: inline'
        " datasets only. The trainer's S3 credentials reach more than any one caller should.",
    )
