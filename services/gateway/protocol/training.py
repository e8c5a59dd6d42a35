"""Adapter training (the scheduler's adapter_train jobs) and the build pipeline: their requests
in JSON, mapped to the trainer's contract."""

from __future__ import annotations

import json
from typing import Any, Optional

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
from services.common.errors import InvalidArgument
from services.gateway.protocol.chat import ChatMessageIn
from services.gateway.protocol.common import INT32_MAX, OpenAIModel
from services.trainer.client import Hyperparameters


class ChatExampleIn(OpenAIModel):
    messages: list[ChatMessageIn] = Field(min_length=2)


class InstructionExampleIn(OpenAIModel):
    instruction: str
    input: str = ""
    output: str


def all_optional(model: type[BaseModel]) -> type[OpenAIModel]:
    """`model`'s fields, with their bounds, each optional: unset takes the service's default."""
    fields: dict[str, Any] = {
        name: (Optional[info.annotation], FieldInfo.merge_field_infos(info, default=None))  # noqa: UP045
        for name, info in model.model_fields.items()
    }
    return create_model(f"{model.__name__}In", __base__=OpenAIModel, **fields)


class HyperparametersIn(all_optional(Hyperparameters)):  # type: ignore[misc]
    """The trainer's Hyperparameters (their one declaration), each optional."""

    def to_pb(self) -> trainer_pb.Hyperparameters:
        return trainer_pb.Hyperparameters(**self.model_dump(exclude_none=True))


Dataset = list[ChatExampleIn | InstructionExampleIn] | str


class TrainAdapterIn(OpenAIModel):
    """An adapter_train job's request: the trainer's TrainAdapterRequest in JSON. A dataset is a
    list of examples ({"messages": [...]} or {"instruction", "input", "output"}) or an s3:// URI."""

    base_model: str
    dataset: Dataset
    eval_dataset: Dataset | None = None
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    name: str = Field("", max_length=100, description="A name people read; not part of the adapter's identity.")

    def to_pb(self, training_id: str = "") -> trainer_pb.TrainAdapterRequest:
        return trainer_pb.TrainAdapterRequest(
            base_model=self.base_model,
            name=self.name,
            dataset=_dataset_pb(self.dataset, "dataset"),
            eval_dataset=_dataset_pb(self.eval_dataset, "eval_dataset") if self.eval_dataset else None,
            hyperparameters=self.hyperparameters.to_pb(),
            training_id=training_id,
        )


def _dataset_pb(dataset: Dataset, param: str) -> trainer_pb.Dataset:
    if isinstance(dataset, str):
        return trainer_pb.Dataset(uri=dataset)
    examples = []
    for example in dataset:
        if isinstance(example, ChatExampleIn):
            messages = [m.to_domain(i).to_pb() for i, m in enumerate(example.messages)]
            examples.append(trainer_pb.TrainingExample(chat=trainer_pb.ChatExample(messages=messages)))
        else:
            item = trainer_pb.InstructionExample(
                instruction=example.instruction, input=example.input, output=example.output
            )
            examples.append(trainer_pb.TrainingExample(instruction=item))
    if not examples:
        raise InvalidArgument(f"'{param}' has no examples.", param=param)
    return trainer_pb.Dataset(inline=trainer_pb.Examples(examples=examples))


class PipelineBuildIn(OpenAIModel):
    """A build: the base model, a seed file (records, JSONL text or an s3:// URI; see
    services/trainer/seeds.py for its lines) and training hyperparameters."""

    base_model: str
    seed: list[dict[str, Any]] | None = None
    seed_jsonl: str | None = None
    seed_uri: str | None = None
    hyperparameters: HyperparametersIn = Field(default_factory=HyperparametersIn)
    eval_fraction: float | None = Field(None, gt=0, lt=1)
    split_seed: int = Field(0, ge=0, le=INT32_MAX)

    def to_pb(self) -> trainer_pb.BuildPipelineRequest:
        sources = [s for s in (self.seed, self.seed_jsonl, self.seed_uri) if s is not None]
        if len(sources) != 1:
            raise InvalidArgument("Give exactly one of 'seed', 'seed_jsonl' or 'seed_uri'.", param="seed")
        request = trainer_pb.BuildPipelineRequest(
            base_model=self.base_model,
            hyperparameters=self.hyperparameters.to_pb(),
            split_seed=self.split_seed,
        )
        if self.eval_fraction is not None:
            request.eval_fraction = self.eval_fraction
        if self.seed_uri is not None:
            request.seed_uri = self.seed_uri
        else:
            request.seed_jsonl = self.seed_jsonl or "\n".join(json.dumps(record) for record in self.seed or ())
        return request
