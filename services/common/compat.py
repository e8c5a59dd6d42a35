"""The jarvis-llm-proxy environment names this mesh still accepts (the design documents'
variables), in one place: each settings field names its own variable through `env`, and the
legacy name it also answers to is listed here."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field

# Hyperparameter defaults of the trainer: LLMMESH_TRAINER_<NAME> and JARVIS_ADAPTER_<NAME>.
_ADAPTER_NAMES = (
    "LORA_R",
    "LORA_ALPHA",
    "LORA_DROPOUT",
    "LEARNING_RATE",
    "EPOCHS",
    "BATCH_SIZE",
    "MAX_SEQ_LEN",
    "TRAIN_DTYPE",
    "TRAIN_LOAD_IN_4BIT",
    "TARGET_MODULES",
    "MAX_STEPS",
    "SEED",
)

# this mesh's variable -> the jarvis-llm-proxy name it also reads
JARVIS_NAMES: dict[str, str] = {
    **{f"LLMMESH_TRAINER_{name}": f"JARVIS_ADAPTER_{name}" for name in _ADAPTER_NAMES},
    **{name: f"JARVIS_{name}" for name in ("LIVE_MODEL_BACKEND", "LIVE_MODEL_NAME", "MODEL_BACKEND", "MODEL_NAME")},
    **{name: f"JARVIS_{name}" for name in ("BACKGROUND_MODEL_BACKEND", "BACKGROUND_MODEL_NAME")},
    "LLMMESH_REST_LIVE_URL": "JARVIS_LIVE_REST_MODEL_URL",
    "LLMMESH_REST_BACKGROUND_URL": "JARVIS_BACKGROUND_REST_MODEL_URL",
    "LLMMESH_REST_MODEL_NAME": "JARVIS_REST_MODEL_NAME",
    "LLMMESH_REST_BACKGROUND_MODEL_NAME": "JARVIS_REST_BACKGROUND_MODEL_NAME",
    **{
        f"LLMMESH_REST_{name}": f"JARVIS_REST_{name}"
        for name in ("PROVIDER", "REQUEST_FORMAT", "AUTH_TYPE", "AUTH_TOKEN", "AUTH_HEADER", "TIMEOUT")
    },
    **{
        f"LLMMESH_VLLM_{name}": f"JARVIS_VLLM_{name}"
        for name in ("TENSOR_PARALLEL_SIZE", "GPU_MEMORY_UTILIZATION", "MAX_LORAS", "MAX_LORA_RANK")
    },
    "LLMMESH_TRANSFORMERS_DEVICE": "JARVIS_DEVICE",
    "LLMMESH_TRANSFORMERS_DTYPE": "JARVIS_TORCH_DTYPE",
    "LLMMESH_TRANSFORMERS_QUANTIZATION": "JARVIS_QUANTIZATION_TYPE",
    "LLMMESH_TRANSFORMERS_USE_QUANTIZATION": "JARVIS_USE_QUANTIZATION",
}


def aliases(name: str) -> AliasChoices:
    """`name`, and its jarvis-llm-proxy name where it has one."""
    legacy = JARVIS_NAMES.get(name)
    return AliasChoices(name, legacy) if legacy else AliasChoices(name)


def env(name: str, default: Any = None, **constraints: Any) -> Any:
    """A settings field read from `name` (or its legacy name)."""
    return Field(default, validation_alias=aliases(name), **constraints)
