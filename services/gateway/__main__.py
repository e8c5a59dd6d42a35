"""`python -m services.gateway`: serve the gateway with uvicorn."""

from __future__ import annotations

import uvicorn

from services.common import tracing
from services.common.logs import configure_logging
from services.gateway.app import build_app
from services.gateway.config import GatewaySettings
from services.gateway.drain import GatewayServer


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, "gateway")
    tracing.configure_tracing("gateway", settings.otlp_endpoint)
    app = build_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
    )
    GatewayServer(config, app.state.drain).run()


if __name__ == "__main__":
    main()
