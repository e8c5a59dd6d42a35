"""`python -m services.trainer`: the trainer service (gRPC)."""

from services.common.grpc_server import run_service
from services.trainer.config import TrainerSettings
from services.trainer.server import TrainerServer

if __name__ == "__main__":
    run_service(TrainerServer(TrainerSettings()))
