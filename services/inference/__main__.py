"""`python -m services.inference`: run the inference gRPC service until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio

from services.common.grpc_server import wait_for_shutdown_signal
from services.common.logs import configure_logging
from services.inference.config import InferenceSettings
from services.inference.server import InferenceServer


async def main() -> None:
    settings = InferenceSettings()
    configure_logging(settings.log_level)
    server = InferenceServer(settings)
    await server.start()
    await wait_for_shutdown_signal()
    await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
