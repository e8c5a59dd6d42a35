"""Model files made from others once and kept: the dequantized copy of a GGUF model that
transformers serves (inference) and trains on (the trainer)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def gguf_cache_dir(cache_root: Path, gguf: Path) -> Path:
    """Where the dequantized copy of `gguf` lives; the name changes when the file does."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root / f"{gguf.stem}-{digest}"


def dequantized_checkpoint(gguf: Path, cache_root: Path, dtype: Any) -> Path:
    """A directory with the GGUF model dequantized by transformers, made once and reused
    (the trainer trains on the same copy)."""
    target = gguf_cache_dir(cache_root, gguf)
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        # One process makes it (inference and the trainer may both start on it); the others wait
        # for that copy rather than each spending a minute on their own.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():
            return target
        return _dequantize(gguf, target, dtype)


def _dequantize(gguf: Path, target: Path, dtype: Any) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantizing %s for transformers (once; cached in %s)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are plain tensors now; the GGUF marker only blocks save_pretrained.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(target)  # atomic: a crash mid-save never leaves a half cache behind
    except OSError:  # another process made it first
        shutil.rmtree(partial, ignore_errors=True)
    return target
