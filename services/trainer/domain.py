"""Training jobs, datasets and hyperparameters, and their protobuf mapping.

An adapter's id is a hash of what determines its weights (base model, examples,
resolved hyperparameters), so asking for the same training twice finds the
stored adapter instead of training again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Literal

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from llmmesh.inference.v1 import inference_service_pb2 as inference_pb
from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from services.common.artifacts import check_adapter_id
from services.common.chat_templates import ROLES
from services.common.errors import InvalidArgument
from services.common.proto_enum import ProtoEnum

MAX_EXAMPLES = 100_000
INT32_MAX = 2**31 - 1


class Hyperparameters(BaseModel):
    """Resolved hyperparameters: every field has a value (the request's, else the service
    default). The one declaration of their names, defaults and bounds: the gateway's request
    fields (`optional_hyperparameters`) and the trainer's environment defaults derive from
    it, and a test holds the proto's Hyperparameters to the same names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    lora_alpha: float = Field(32.0, gt=0, description="LoRA scaling (alpha / r).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers.")
    learning_rate: float = Field(2e-4, gt=0, le=1, description="AdamW learning rate.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes over the dataset.")
    batch_size: int = Field(4, ge=1, le=1024, description="Examples per step.")
    max_seq_length: int = Field(512, ge=8, le=131072, description="Longer examples are cut to this many tokens.")
    train_dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights' dtype in training.")
    load_in_4bit: bool = Field(False, description="Train on 4-bit weights (QLoRA, CUDA).")
    target_modules: tuple[Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]+$")], ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj"), description="The modules adapted (a JSON list)."
    )
    max_steps: int = Field(0, ge=0, le=INT32_MAX, description="Stop after this many steps; 0: the epochs decide.")
    seed: int = Field(0, ge=0, le=INT32_MAX, description="Random seed of the run.")

    @classmethod
    def checked(cls, values: dict[str, Any]) -> Hyperparameters:
        """Validated, a bad value as InvalidArgument naming `hyperparameters.<field>`."""
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            first = error.errors()[0]
            name = f"hyperparameters.{first['loc'][0]}" if first["loc"] else "hyperparameters"
            raise InvalidArgument(f"'{name}': {first['msg']}.", param=name) from None

    @classmethod
    def from_pb(cls, message: pb.Hyperparameters, defaults: Hyperparameters) -> Hyperparameters:
        """The request's fields over `defaults`."""
        return defaults.overridden(overrides_from_pb(message))

    def overridden(self, values: dict[str, Any]) -> Hyperparameters:
        """These hyperparameters with `values` (a request's) in place of theirs, checked."""
        return self.checked({**self.model_dump(), **values})

    def to_pb(self) -> pb.Hyperparameters:
        return pb.Hyperparameters(**self.to_json())

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(), "target_modules": list(self.target_modules)}


def overrides_from_pb(message: pb.Hyperparameters) -> dict[str, Any]:
    """The fields a request set: an `optional` one counts even when 0; empty strings and lists
    are unset."""
    values: dict[str, Any] = {}
    for descriptor in message.DESCRIPTOR.fields:
        name, value = descriptor.name, getattr(message, descriptor.name)
        if descriptor.is_repeated:
            if value:
                values[name] = tuple(value)
        elif descriptor.has_presence:
            if message.HasField(name):  # type: ignore[arg-type]
                values[name] = value
        elif value:  # a plain string: empty is unset
            values[name] = value
    return values


@dataclass(frozen=True)
class DatasetSource:
    """Where a run's examples come from: inline (already checked turns) or an s3:// URI."""

    examples: list[list[dict[str, str]]] | None = None
    uri: str = ""

    @classmethod
    def from_pb(cls, dataset: pb.Dataset, param: str) -> DatasetSource:
        source = dataset.WhichOneof("source")
        if source == "inline":
            return cls(examples=examples_from_pb(dataset.inline, f"{param}.inline.examples"))
        if source == "uri":
            return cls(uri=dataset.uri)
        raise InvalidArgument(f"'{param}' is empty: set 'inline' or 'uri'.", param=param)


@dataclass(frozen=True)
class TrainRequest:
    """What to train, as TrainAdapterRequest says it (see the .proto): checked at the edge."""

    base_model: str
    dataset: DatasetSource
    eval_dataset: DatasetSource | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # the fields the request set
    training_id: str = ""
    owner: str = ""
    limits: dict[str, float] = field(default_factory=dict)  # the limits the request set
    name: str = ""  # for people: not part of the adapter's identity

    @classmethod
    def from_pb(cls, request: pb.TrainAdapterRequest) -> TrainRequest:
        if not request.base_model:
            raise InvalidArgument("'base_model' is required.", param="base_model")
        if not request.HasField("dataset"):
            raise InvalidArgument("'dataset' is required.", param="dataset")
        limits = {
            name: getattr(request.limits, name)
            for name in ("max_examples", "max_epochs", "max_steps", "max_run_seconds")
            if request.limits.HasField(name)  # type: ignore[arg-type]
        }
        return cls(
            base_model=request.base_model,
            dataset=DatasetSource.from_pb(request.dataset, "dataset"),
            eval_dataset=(
                DatasetSource.from_pb(request.eval_dataset, "eval_dataset")
                if request.HasField("eval_dataset")
                else None
            ),
            hyperparameters=overrides_from_pb(request.hyperparameters),
            training_id=check_adapter_id(request.training_id, "training_id") if request.training_id else "",
            owner=request.owner,
            limits=limits,
            name=check_adapter_name(request.name),
        )


MAX_ADAPTER_NAME = 100


def check_adapter_name(name: str) -> str:
    name = name.strip()
    if len(name) > MAX_ADAPTER_NAME or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidArgument(f"'name' must be at most {MAX_ADAPTER_NAME} printable characters.", param="name")
    return name


def examples_from_pb(dataset: pb.Examples, param: str) -> list[list[dict[str, str]]]:
    """Each example as chat turns ({role, content}) ending with the assistant turn to learn."""
    examples = [_turns_from_pb(example, f"{param}[{i}]") for i, example in enumerate(dataset.examples)]
    return check_examples(examples, param)


def examples_from_jsonl(text: str, param: str) -> list[list[dict[str, str]]]:
    """Examples from JSON Lines: {"messages": [...]} or {"instruction", "input", "output"} per line."""
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise InvalidArgument(f"{param} line {number} is not JSON: {error}", param=param) from error
        if not isinstance(record, dict):
            raise InvalidArgument(f"{param} line {number} is not a JSON object.", param=param)
        where = f"{param} line {number}"
        if "messages" in record:
            messages = record["messages"]
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise InvalidArgument(f"{where}: 'messages' must be a list of objects.", param=param)
            turns = [{"role": str(m.get("role", "")), "content": str(m.get("content", ""))} for m in messages]
        else:
            turns = _instruction_turns(
                str(record.get("instruction", "")), str(record.get("input", "")), str(record.get("output", ""))
            )
        examples.append(_checked_turns(turns, where))
    return check_examples(examples, param)


def check_examples(examples: list[list[dict[str, str]]], param: str) -> list[list[dict[str, str]]]:
    if not examples:
        raise InvalidArgument(f"'{param}' has no examples.", param=param)
    if len(examples) > MAX_EXAMPLES:
        raise InvalidArgument(f"'{param}' has more than {MAX_EXAMPLES} examples.", param=param)
    return examples


def _turns_from_pb(example: pb.TrainingExample, where: str) -> list[dict[str, str]]:
    kind = example.WhichOneof("kind")
    if kind == "chat":
        turns = [
            {
                "role": inference_pb.Role.Name(m.role).removeprefix("ROLE_").lower(),
                "content": "".join(part.text for part in m.content),
            }
            for m in example.chat.messages
        ]
    elif kind == "instruction":
        item = example.instruction
        turns = _instruction_turns(item.instruction, item.input, item.output)
    else:
        raise InvalidArgument(f"{where} is empty: set 'chat' or 'instruction'.", param=where)
    return _checked_turns(turns, where)


def _instruction_turns(instruction: str, input_text: str, output: str) -> list[dict[str, str]]:
    prompt = f"{instruction}\n\n{input_text}" if input_text else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def _checked_turns(turns: list[dict[str, str]], where: str) -> list[dict[str, str]]:
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or not turns[-1]["content"].strip():
        raise InvalidArgument(f"{where} must end with a non-empty assistant turn after a prompt.", param=where)
    for turn in turns:
        if turn["role"] not in ROLES:
            raise InvalidArgument(f"{where} has an unknown role '{turn['role']}'.", param=where)
    return turns


def adapter_identity(
    base_model: str,
    examples: list[list[dict[str, str]]],
    eval_examples: list[list[dict[str, str]]],
    hyperparameters: Hyperparameters,
    owner: str = "",
) -> str:
    """The adapter's id: a hash of everything that determines its weights and reported metrics,
    and of its owner (another tenant's identical training is another adapter)."""
    canonical = json.dumps(
        {
            **({"owner": owner} if owner else {}),  # the operator's ids are as they were
            "base_model": base_model,
            "examples": examples,
            "eval_examples": eval_examples,
            "hyperparameters": hyperparameters.to_json(),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class TrainingState(ProtoEnum):
    __pb__ = pb.TrainingState

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TrainingState.SUCCEEDED, TrainingState.FAILED, TrainingState.CANCELLED)


@dataclass(frozen=True)
class Turn:
    """One message of a training example, as a chat template reads it."""

    role: str
    content: str
    name: str = ""


@dataclass(frozen=True)
class TrainingLimits:
    """What one run may ask for: its API key's limits, else the trainer's (see the .proto)."""

    max_examples: int
    max_epochs: int
    max_steps: int
    max_run_seconds: float


@dataclass
class TrainingPlan:
    """What one job trains: checked and resolved, ready for the training subprocess."""

    base_model: str
    examples: list[list[dict[str, str]]]
    eval_examples: list[list[dict[str, str]]]
    hyperparameters: Hyperparameters
    owner: str = ""  # the tenant it is trained for ("": the operator)
    max_run_seconds: float | None = None  # killed past it; None: the trainer's own limit
    name: str = ""  # for people; not part of its identity

    @functools.cached_property
    def adapter_id(self) -> str:  # hashes every example: computed once
        return adapter_identity(self.base_model, self.examples, self.eval_examples, self.hyperparameters, self.owner)


@dataclass
class TrainingJob:
    training_id: str
    adapter_id: str
    base_model: str
    state: TrainingState = TrainingState.QUEUED
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    eta_seconds: float = 0.0
    cached: bool = False
    error: str = ""
    adapter: pb.Adapter | None = None
    create_time: float = field(default_factory=time.time)
    start_time: float | None = None
    end_time: float | None = None

    @staticmethod
    def new_id() -> str:
        return f"train-{uuid.uuid4().hex[:16]}"

    def to_pb(self) -> pb.TrainingJob:
        return pb.TrainingJob(
            training_id=self.training_id,
            adapter_id=self.adapter_id,
            base_model=self.base_model,
            state=self.state.to_pb(),
            step=self.step,
            total_steps=self.total_steps,
            loss=self.loss,
            eta_seconds=self.eta_seconds,
            cached=self.cached,
            error=self.error,
            adapter=self.adapter,
            create_time=timestamp(self.create_time),
            start_time=timestamp(self.start_time),
            end_time=timestamp(self.end_time),
        )

    @classmethod
    def from_pb(cls, message: pb.TrainingJob) -> TrainingJob:
        def seconds(name: str) -> float | None:
            return getattr(message, name).ToNanoseconds() / 1e9 if message.HasField(name) else None  # type: ignore[arg-type]

        return cls(
            training_id=message.training_id,
            adapter_id=message.adapter_id,
            base_model=message.base_model,
            state=TrainingState.from_pb(message.state),
            step=message.step,
            total_steps=message.total_steps,
            loss=message.loss,
            eta_seconds=message.eta_seconds,
            cached=message.cached,
            error=message.error,
            adapter=message.adapter if message.HasField("adapter") else None,
            create_time=seconds("create_time") or 0.0,
            start_time=seconds("start_time"),
            end_time=seconds("end_time"),
        )

    def to_json(self) -> dict[str, Any]:
        return as_json(self.to_pb())


def adapter_to_pb(manifest: dict[str, Any], size_bytes: int, locations: tuple[str, ...]) -> pb.Adapter:
    """A stored adapter's manifest as the protobuf Adapter."""
    return pb.Adapter(
        adapter_id=str(manifest.get("adapter_id", "")),
        base_model=str(manifest.get("base_model", "")),
        metrics={k: float(v) for k, v in dict(manifest.get("metrics", {})).items()},
        create_time=timestamp(float(manifest.get("created_at", 0)) or None),
        size_bytes=size_bytes,
        locations=list(locations),
        hyperparameters=pb.Hyperparameters(**dict(manifest.get("hyperparameters", {}))),
        owner=str(manifest.get("owner", "")),
        shared=bool(manifest.get("shared", False)),
        name=str(manifest.get("name", "")),
    )


def as_json(message: Message) -> dict[str, Any]:
    """A trainer message as the gateway's JSON: field names as in the .proto, enums as
    lower-case words without their prefix (TRAINING_STATE_RUNNING: "running"), times as
    Unix seconds and sizes as numbers, as in the scheduler's job bodies."""
    body = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _plain(body)
    return body


def _plain(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _plain(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "state" and isinstance(item, str):
                value[key] = item.split("_STATE_")[-1].lower()
            elif key.endswith("_time") and isinstance(item, str):
                value[key] = datetime.fromisoformat(item).timestamp()
            elif key == "size_bytes":
                value[key] = int(item)
            else:
                _plain(item)


def timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp
