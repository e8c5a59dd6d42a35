"""The training subprocess: `python -m services.trainer.training RUN_DIR`.

Reads RUN_DIR/plan.json, trains a LoRA adapter with transformers + PEFT, saves it
(safetensors) to RUN_DIR/adapter and reports on stdout, one JSON object per line:

    {"event": "started", "total_steps": N}
    {"event": "step", "step": i, "total_steps": N, "loss": x, "elapsed": s}
    {"event": "done", "metrics": {...}}

It runs apart from the service so that a crash or an out-of-memory ends the run,
never the service. Only the assistant turn of each example is learned: prompt
tokens are masked out of the loss, and examples are rendered with the same chat
template inference uses, so the adapter sees at training what it sees in serving.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from services.common.child import emit
from services.trainer.domain import Turn

Example = list[dict[str, str]]


def base_checkpoint(model_path: Path, cache_dir: Path) -> Path:
    """A transformers directory for the registry's model: itself, or its GGUF dequantized once."""
    import torch

    from services.common.checkpoints import dequantized_checkpoint

    return dequantized_checkpoint(model_path, cache_dir, torch.float32) if model_path.suffix == ".gguf" else model_path


def load_base(plan: dict[str, Any]) -> tuple[Any, Any]:
    """The base model and tokenizer: a transformers directory, or a GGUF dequantized once (cached)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hyper = plan["hyperparameters"]
    dtype = getattr(torch, hyper["train_dtype"])
    source = base_checkpoint(Path(plan["model_path"]), Path(plan["cache_dir"]))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if hyper["load_in_4bit"] and torch.cuda.is_available():
        from transformers import BitsAndBytesConfig

        kwargs.update(quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="auto")
    elif hyper["load_in_4bit"]:
        emit("warning", message="load_in_4bit needs CUDA (bitsandbytes); training the base unquantized")
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if "quantization_config" not in kwargs:
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # type: ignore[arg-type]
    return model, tokenizer


def encode(example: Example, template: Any, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels: the prompt as inference renders it (masked), then the reply to learn."""
    from services.common.chat_templates import Prompt, hf_token_ids

    messages = [Turn(role=turn["role"], content=turn["content"]) for turn in example[:-1]]
    end_of_turn = template.stop[0] if template.stop else (tokenizer.eos_token or "")
    # As at inference, only the template's text may spell special tokens: a dataset cannot teach
    # the model turn markers hidden in its text.
    reply = Prompt(((example[-1]["content"].strip(), False), (end_of_turn, True)))
    prompt_ids = hf_token_ids(tokenizer, template.render_prompt(messages))
    reply_ids = reply.token_ids(
        lambda text, _first, special: list(
            tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not special)
        )
    )
    ids = (prompt_ids + reply_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + reply_ids)[:max_length]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = [row + [pad_id] * (width - len(row)) for row, _ in batch]
    labels = [row + [-100] * (width - len(row)) for _, row in batch]
    mask = [[1] * len(row) + [0] * (width - len(row)) for row, _ in batch]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "attention_mask": torch.tensor(mask, device=device),
        "labels": torch.tensor(labels, device=device),
    }


def mean_loss(model: Any, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> float:
    """Mean loss per learned token over `encoded` (no gradients)."""
    import torch

    if not encoded:
        return math.nan
    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = collate(encoded[start : start + batch_size], pad_id, model.device)
            count = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * count
            tokens += count
    model.train()
    return total / max(tokens, 1)


def train(run_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from services.common.chat_templates import ChatTemplate

    plan = json.loads((run_dir / "plan.json").read_text())
    hyper = plan["hyperparameters"]
    torch.manual_seed(hyper["seed"])
    model, tokenizer = load_base(plan)
    template = ChatTemplate.named_or_inline(
        plan["chat_template"] or getattr(tokenizer, "chat_template", None) or "chatml",
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    length = hyper["max_seq_length"]
    train_set = [encode(example, template, tokenizer, length) for example in plan["examples"]]
    eval_set = [encode(example, template, tokenizer, length) for example in plan["eval_examples"]]

    config = LoraConfig(
        r=hyper["lora_r"],
        lora_alpha=hyper["lora_alpha"],
        lora_dropout=hyper["lora_dropout"],
        target_modules=list(hyper["target_modules"]),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    batch_size = hyper["batch_size"]
    metrics = {
        "train_loss_before": mean_loss(model, train_set, pad_id, batch_size),
        "eval_loss_before": mean_loss(model, eval_set, pad_id, batch_size),
    }
    steps_per_epoch = math.ceil(len(train_set) / batch_size)
    total_steps = hyper["max_steps"] or hyper["epochs"] * steps_per_epoch  # as transformers: max_steps wins
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad), lr=hyper["learning_rate"])
    generator = torch.Generator().manual_seed(hyper["seed"])
    emit("started", total_steps=total_steps)

    model.train()
    started, step = time.perf_counter(), 0
    while step < total_steps:
        order = torch.randperm(len(train_set), generator=generator).tolist()
        for start in range(0, len(order), batch_size):
            batch = collate([train_set[i] for i in order[start : start + batch_size]], pad_id, model.device)
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            emit(
                "step",
                step=step,
                total_steps=total_steps,
                loss=float(loss.detach()),
                elapsed=time.perf_counter() - started,
            )
            if step >= total_steps:
                break
    elapsed = time.perf_counter() - started
    metrics.update(
        train_loss_after=mean_loss(model, train_set, pad_id, batch_size),
        eval_loss_after=mean_loss(model, eval_set, pad_id, batch_size),
        steps=float(total_steps),
        train_seconds=elapsed,
        seconds_per_step=elapsed / max(total_steps, 1),
        examples=float(len(train_set)),
    )
    model.save_pretrained(str(run_dir / "adapter"), safe_serialization=True)
    emit("done", metrics={k: v for k, v in metrics.items() if not math.isnan(v)})


if __name__ == "__main__":
    train(Path(sys.argv[1]))
