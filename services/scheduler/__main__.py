"""`python -m services.scheduler`: the scheduler service (gRPC, plus workers unless disabled)."""

from services.common.grpc_server import run_service
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import SchedulerServer

if __name__ == "__main__":
    run_service(SchedulerServer(SchedulerSettings()))
