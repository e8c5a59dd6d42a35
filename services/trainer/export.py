"""The export subprocess: `python -m services.trainer.export RUN_DIR`.

Reads RUN_DIR/export.json, merges a LoRA adapter into its base (PEFT
merge_and_unload, saved as safetensors) and, for a GGUF base, writes the merged
model as GGUF. Reports on stdout, one JSON object per line:

    {"event": "merged", "path": ...}
    {"event": "converted", "path": ..., "replaced": N}

The GGUF keeps everything of the base file (metadata, tokenizer, every tensor the
adapter did not touch, still quantized) and replaces only the adapted weights with
their merged values in F32. The dequantized checkpoint transformers trains on has
the GGUF's own layout for these matrices, so they map one to one by name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from services.common.child import emit
from services.trainer.training import base_checkpoint


def merge(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> list[str]:
    """The merged model saved under `merged_dir`; the names of the weights the adapter changed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    changed = [
        name.removeprefix("base_model.model.").replace(".base_layer", "")
        for name, module in model.named_modules()
        if name.endswith(".base_layer")
    ]
    merged = model.merge_and_unload()
    merged.save_pretrained(merged_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(merged_dir)
    return [f"{name}.weight" for name in changed]


def convert(base_gguf: Path, merged_dir: Path, changed: list[str], out: Path) -> int:
    """The base GGUF with the changed weights replaced by the merged ones; how many were replaced."""
    import gguf
    from safetensors import safe_open

    reader = gguf.GGUFReader(base_gguf)
    architecture = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    blocks = int(reader.fields[f"{architecture}.block_count"].parts[-1][0])
    arch = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture)
    names = gguf.get_tensor_name_map(arch, blocks)
    replaced: dict[str, str] = {}  # GGUF tensor name -> merged checkpoint name
    for name in changed:
        gguf_name = names.get_name(name, try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"No GGUF tensor for merged weight '{name}'")
        replaced[gguf_name] = name

    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, architecture)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)
    weights = safe_open(str(_weights_file(merged_dir)), "np")
    for tensor in reader.tensors:
        if tensor.name in replaced:
            writer.add_tensor(tensor.name, weights.get_tensor(replaced[tensor.name]).astype("float32"))
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    missing = set(replaced) - {t.name for t in reader.tensors}
    if missing:
        raise ValueError(f"The base GGUF has no tensors {sorted(missing)}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out)
    return len(replaced)


def _weights_file(merged_dir: Path) -> Path:
    files = sorted(merged_dir.glob("*.safetensors"))
    if len(files) != 1:
        raise ValueError(f"Expected one safetensors file in {merged_dir}, found {len(files)}")
    return files[0]


def main(run_dir: Path) -> None:
    job = json.loads((run_dir / "export.json").read_text())
    base = Path(job["model_path"])
    base_dir = base_checkpoint(base, Path(job["cache_dir"]))
    merged_dir = Path(job["merged_dir"])
    changed = merge(base_dir, Path(job["adapter_dir"]), merged_dir)
    emit("merged", path=str(merged_dir), changed=len(changed))
    if base.suffix == ".gguf":
        out = Path(job["gguf_path"])
        emit("converted", path=str(out), replaced=convert(base, merged_dir, changed, out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
