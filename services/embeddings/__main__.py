"""`python -m services.embeddings`: run the embeddings gRPC service until SIGINT/SIGTERM."""

from services.common.grpc_server import run_service
from services.embeddings.config import EmbeddingsSettings
from services.embeddings.server import EmbeddingsServer

if __name__ == "__main__":
    run_service(EmbeddingsServer(EmbeddingsSettings()))
