"""PEFT LoRA adapters as GGUF LoRA files, the form llama.cpp's adapter API loads.

The conversion is llama.cpp's own (convert_lora_to_gguf.py) in miniature: each
PEFT module's A and B matrices keep their shapes ([r, in] and [out, r]) under the
base model's GGUF tensor name plus `.lora_a` / `.lora_b`, and the header carries
`adapter.type = lora` and alpha (llama.cpp scales by alpha / r, as PEFT does).
Names map through gguf-py's tensor name table for the base's architecture, read
from the base model's metadata; llama.cpp checks every name and shape against the
base when it loads the result. It runs once per adapter and base; the file is kept
next to the adapter.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from services.common.errors import InvalidArgument

PEFT_PREFIX = "base_model.model."


def gguf_lora_path(adapter_dir: Path, base_gguf: Path) -> Path:
    """Where the converted adapter for this base is kept."""
    return adapter_dir / f"adapter.{base_gguf.stem}.gguf"


def convert_peft_to_gguf(adapter_dir: Path, base_gguf: Path, architecture: str, blocks: int) -> Path:
    """The adapter as a GGUF LoRA for `base_gguf`, a model of `architecture` with `blocks`
    layers (converted once, then reused)."""
    import gguf
    from safetensors import safe_open

    target = gguf_lora_path(adapter_dir, base_gguf)
    if target.is_file():
        return target
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if (
        config.get("peft_type") != "LORA"
        or config.get("use_dora")
        or config.get("rank_pattern")
        or config.get("alpha_pattern")
    ):
        raise InvalidArgument(
            "Only plain LoRA adapters (no DoRA, no per-module ranks) run on the gguf backend.",
            param="adapter_settings.adapter_id",
            reason="ADAPTER_INCOMPATIBLE",
        )
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    if config.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r); llama.cpp always by alpha / r
        alpha *= math.sqrt(rank)

    arch = next((key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture), None)
    if arch is None:
        raise InvalidArgument(f"No LoRA conversion for architecture '{architecture}'.", reason="ADAPTER_INCOMPATIBLE")
    names = gguf.get_tensor_name_map(arch, blocks)

    partial = target.with_name(target.name + ".partial")
    writer = gguf.GGUFWriter(partial, architecture)
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", alpha)
    with safe_open(adapter_dir / "adapter_model.safetensors", "np") as weights:
        for key in sorted(weights.keys()):
            module, _, part = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
            if part not in ("A.weight", "B.weight"):
                raise InvalidArgument(f"Unexpected adapter tensor '{key}'.", reason="ADAPTER_INCOMPATIBLE")
            name = names.get_name(module)
            if name is None:
                raise InvalidArgument(
                    f"Adapter module '{module}' has no counterpart in a {architecture} GGUF.",
                    param="adapter_settings.adapter_id",
                    reason="ADAPTER_INCOMPATIBLE",
                )
            suffix = "lora_a" if part == "A.weight" else "lora_b"
            writer.add_tensor(f"{name}.weight.{suffix}", weights.get_tensor(key).astype("float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(target)
    return target
