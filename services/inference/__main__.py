"""`python -m services.inference`: run the inference gRPC service until SIGINT/SIGTERM."""

from services.common.grpc_server import run_service
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer

if __name__ == "__main__":
    run_service(InferenceServer(InferenceSettings()))
