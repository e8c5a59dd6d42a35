"""Adapter training requests: the trainer's hyperparameters, each optional."""


def test_hyperparameters_have_one_declaration_that_the_proto_and_http_follow() -> None:
    from llmmesh.trainer.v1 import trainer_service_pb2 as trainer_pb
    from services.gateway.protocol.training import HyperparametersIn
    from services.trainer.client import Hyperparameters

    declared = tuple(Hyperparameters.model_fields)
    assert tuple(f.name for f in trainer_pb.Hyperparameters.DESCRIPTOR.fields) == declared
    assert tuple(HyperparametersIn.model_fields) == declared
    for name, info in Hyperparameters.model_fields.items():  # the same bounds, only optional
        assert HyperparametersIn.model_fields[name].metadata == info.metadata, name
    assert HyperparametersIn().model_dump(exclude_none=True) == {}
