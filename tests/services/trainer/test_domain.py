"""Plans: hyperparameter defaults (the design documents' variable names), identity hashes, examples."""

from __future__ import annotations

import pytest

from llmmesh.trainer.v1 import trainer_service_pb2 as pb
from services.common.errors import InvalidArgument
from services.trainer.config import TrainingDefaults
from services.trainer.domain import (
    Hyperparameters,
    TrainingJob,
    TrainingState,
    TrainRequest,
    adapter_identity,
    adapter_to_pb,
    as_json,
    examples_from_jsonl,
    timestamp,
)

CHAT = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]]


def test_defaults_follow_the_design_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = TrainingDefaults().resolved()
    assert (defaults.lora_r, defaults.lora_alpha) == (16, 32.0)
    monkeypatch.setenv("JARVIS_ADAPTER_LORA_R", "8")
    monkeypatch.setenv("JARVIS_ADAPTER_MAX_SEQ_LEN", "256")
    monkeypatch.setenv("LLMMESH_TRAINER_EPOCHS", "3")
    overridden = TrainingDefaults().resolved()
    assert (overridden.lora_r, overridden.max_seq_length, overridden.epochs) == (8, 256, 3)


def test_requests_override_defaults_and_zero_is_a_value() -> None:
    resolved = Hyperparameters.from_pb(pb.Hyperparameters(lora_dropout=0.0, max_steps=5), Hyperparameters())
    assert resolved.lora_dropout == 0.0 and resolved.max_steps == 5 and resolved.lora_r == 16
    with pytest.raises(InvalidArgument) as bad:
        Hyperparameters.from_pb(pb.Hyperparameters(train_dtype="float8"), Hyperparameters())
    assert bad.value.param == "hyperparameters.train_dtype"


def test_identity_is_stable_and_sensitive_to_what_changes_the_weights() -> None:
    base = adapter_identity("gemma", CHAT, [], Hyperparameters())
    assert base == adapter_identity("gemma", [list(turns) for turns in CHAT], [], Hyperparameters())
    assert base != adapter_identity("other", CHAT, [], Hyperparameters())
    assert base != adapter_identity("gemma", CHAT, [], Hyperparameters(lora_r=8))
    assert base != adapter_identity(
        "gemma", [[CHAT[0][0], {"role": "assistant", "content": "hey"}]], [], Hyperparameters()
    )


def test_two_tenants_training_the_same_thing_get_two_adapters() -> None:
    alice = adapter_identity("gemma", CHAT, [], Hyperparameters(), owner="alice")
    assert alice != adapter_identity("gemma", CHAT, [], Hyperparameters(), owner="bob")
    assert alice != adapter_identity("gemma", CHAT, [], Hyperparameters())  # nor the operator's


@pytest.mark.parametrize(
    "jsonl",
    [
        "",
        "not json",
        '{"messages": [{"role": "user", "content": "only a question"}]}',
        '{"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}',
        '{"instruction": "x", "output": ""}',
        "[1, 2]",
    ],
)
def test_bad_jsonl_datasets(jsonl: str) -> None:
    with pytest.raises(InvalidArgument):
        examples_from_jsonl(jsonl, "dataset.uri")


def test_json_bodies_use_words_seconds_and_numbers() -> None:
    job = pb.TrainingJob(state=pb.TRAINING_STATE_RUNNING, create_time=timestamp(10.5), adapter=pb.Adapter(size_bytes=7))
    body = as_json(job)
    assert body["state"] == "running" and body["create_time"] == 10.5 and body["adapter"]["size_bytes"] == 7
    received = TrainingJob.from_pb(job)  # as the trainer's client hands it on
    assert received.state is TrainingState.RUNNING and received.to_pb() == job and received.to_json() == body


def test_an_adapter_name_is_for_people_and_checked_at_the_edge() -> None:
    example = pb.TrainingExample(instruction=pb.InstructionExample(instruction="a", output="b"))
    dataset = pb.Dataset(inline=pb.Examples(examples=[example]))

    def request(name: str) -> TrainRequest:
        return TrainRequest.from_pb(pb.TrainAdapterRequest(base_model="m", dataset=dataset, name=name))

    assert request("  support tone v1 ").name == "support tone v1"
    for bad in ("x" * 101, "two\nlines", "nul\x00"):
        with pytest.raises(InvalidArgument) as refused:
            request(bad)
        assert refused.value.param == "name" and bad not in refused.value.message
    manifest = {"adapter_id": "a" * 64, "name": "support tone v1"}
    assert adapter_to_pb(manifest, 1, ()).name == "support tone v1"
