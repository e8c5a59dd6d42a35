"""`python -m services.inference`: run the inference gRPC service until SIGINT/SIGTERM."""

from services.common.grpc_server import run_service
from services.inference.config import InferenceSettings
from services.inference.server.server import InferenceServer

if __name__ == "__main__":
    import os, sys
    if os.environ.get("EXP_SWITCH"): sys.setswitchinterval(float(os.environ["EXP_SWITCH"]))
    run_service(InferenceServer(InferenceSettings()))
