"""The ProcessService every service registers (services/common/grpc_server.py): its recent log
lines, followed live, and its memory and CPU, for the console's Logs and Overview views."""

from __future__ import annotations

import dataclasses
import os
import resource
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmmesh.process.v1 import process_service_pb2 as pb
from llmmesh.process.v1 import process_service_pb2_grpc as pb_grpc
from services.common.logs import RECENT, RECENT_LINES

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ProcessService"].full_name
DEFAULT_TAIL = 200
_STARTED = time.time()  # this module is imported as the process starts its server


@dataclass(frozen=True)
class ProcessStats:
    pid: int
    rss_bytes: int
    cpu_seconds: float  # since the process started: a rate is the difference of two reports
    uptime_seconds: float
    threads: int

    @classmethod
    def from_pb(cls, stats: pb.ProcessStats) -> ProcessStats:
        return cls(stats.pid, stats.rss_bytes, stats.cpu_seconds, stats.uptime_seconds, stats.threads)

    def to_pb(self) -> pb.ProcessStats:
        return pb.ProcessStats(**dataclasses.asdict(self))


def process_stats() -> ProcessStats:
    """This process's resource use, from /proc where there is one."""
    cpu = os.times()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, where /proc is missing
    threads = threading.active_count()
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return ProcessStats(
        pid=os.getpid(),
        rss_bytes=rss,
        cpu_seconds=cpu.user + cpu.system,
        uptime_seconds=time.time() - _STARTED,
        threads=threads,
    )


class ProcessServicer(pb_grpc.ProcessServiceServicer):
    async def WatchLogs(
        self, request: pb.WatchLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.LogLine]:
        tail = min(max(request.tail, 0), RECENT_LINES) if request.HasField("tail") else DEFAULT_TAIL
        async for line in RECENT.follow(tail):
            yield pb.LogLine(line=line)

    async def GetStats(self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext) -> pb.ProcessStats:
        return process_stats().to_pb()
