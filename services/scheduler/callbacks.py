"""Job callbacks: where they may go (an SSRF guard), how they are signed, and the
dispatcher that delivers them at least once.

The guard runs at submit time and again just before every POST, and the POST goes
to the address the guard approved (the Host header and TLS name stay the URL's),
so a DNS answer that changes between check and connect cannot redirect it.
Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx
from opentelemetry.trace import SpanKind

from services.common import tracing
from services.common.errors import InvalidArgument
from services.scheduler.domain import Job, job_json
from services.scheduler.metrics import CALLBACK_ATTEMPTS
from services.scheduler.store import JobStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-LLMMesh-Signature"
MAX_IN_FLIGHT = 16  # deliveries at once, per scheduler
JOB_ID_HEADER = "X-LLMMesh-Job-Id"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Hosts that are numbers in a form other than dotted-quad (2130706433, 0x7f000001, 0177.0.0.1,
# 127.1): resolvers read them as IPs, and such spellings exist mostly to slip past filters.
_OBSCURE_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+))*\.?$", re.IGNORECASE)
_DOTTED_QUAD = re.compile(
    r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$"
)


@dataclass(frozen=True)
class Target:
    """An approved callback destination: the URL, and the address to connect to."""

    url: str
    host: str
    address: IPAddress


class CallbackGuard:
    def __init__(self, allowed_networks: Sequence[IPNetwork] = ()) -> None:
        self.allowed_networks = tuple(allowed_networks)

    async def check(self, url: str) -> Target:
        """The approved target, or InvalidArgument saying why `url` may not be called."""
        if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
            raise _rejected(url, "it contains whitespace or control characters")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise _rejected(url, "only http and https URLs are allowed")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise _rejected(url, "it has no host")
        if parts.username or parts.password:
            raise _rejected(url, "credentials in the URL are not allowed")
        if _OBSCURE_NUMERIC_HOST.match(host) and not _DOTTED_QUAD.match(host):
            raise _rejected(url, "numeric hosts must be written as dotted-quad IPv4")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise _rejected(url, "its port is invalid") from None
        try:
            httpx.URL(url)  # what the POST will parse: a URL httpx refuses never gets past submit
        except (httpx.InvalidURL, ValueError) as error:
            raise _rejected(url, f"it is not a valid URL ({error})") from None
        try:
            answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError):
            raise _rejected(url, f"its host '{host}' does not resolve") from None
        addresses = {ipaddress.ip_address(str(answer[4][0]).split("%")[0]) for answer in answers}
        for address in addresses:
            if not self._allowed(address):
                raise _rejected(url, f"'{host}' resolves to {address}, a non-public address")
        return Target(url=url, host=host, address=min(addresses, key=lambda a: (a.version, int(a))))

    def _allowed(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed_networks):
            return True
        if isinstance(address, ipaddress.IPv4Address):
            return address.is_global and not address.is_multicast
        embedded = _embedded_ipv4(address)
        if embedded:  # reaching an IPv4 host through IPv6: that host must be allowed
            return all(self._allowed(inner) for inner in embedded)
        return address in _GLOBAL_UNICAST and address.is_global and not any(address in n for n in _NOT_GLOBAL_V6)


_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
# Inside 2000::/3 yet not a public host (Python 3.11's is_global misses some of these).
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(network) for network in ("2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20", "5f00::/16")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: the IPv4 part may sit anywhere
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated (RFC 2765)
_COMPATIBLE = ipaddress.IPv6Network("::/96")  # IPv4-compatible (deprecated), :: and ::1 among them


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[IPAddress]:
    """The IPv4 addresses an IPv6 address leads to: mapped, translated (SIIT), compatible,
    NAT64, 6to4 and Teredo (its server and its de-obfuscated client)."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped:
        return [address.ipv4_mapped]
    if address in _NAT64_LOCAL:
        return [ipaddress.IPv4Address(0)]  # not decodable with certainty: never allowed
    if address in _SIIT or address in _NAT64 or address in _COMPATIBLE:
        return [low32]
    if address.sixtofour:
        return [address.sixtofour]
    if address.teredo:
        return list(address.teredo)
    return []


def _rejected(url: str, why: str) -> InvalidArgument:
    return InvalidArgument(
        f"callback_url '{url}' is not allowed: {why}.", param="callback_url", reason="CALLBACK_URL_REJECTED"
    )


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """`t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the timestamp lets receivers refuse replays."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, header: str, body: bytes, tolerance_seconds: float = 300) -> bool:
    """What a receiver runs (tests use it too)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_seconds:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


class CallbackDispatcher:
    """Delivers due callbacks from the job table (an outbox), so that a callback survives the
    crash of whoever finished the job. Several replicas can run it: claims skip locked rows."""

    def __init__(
        self,
        store: JobStore,
        guard: CallbackGuard,
        secret: bytes,
        *,
        timeout_seconds: float,
        max_attempts: int,
        backoff_seconds: float,
        max_backoff_seconds: float,
    ) -> None:
        self.store = store
        self.guard = guard
        self.secret = secret
        self.timeout_seconds = timeout_seconds
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._client = httpx.AsyncClient(follow_redirects=False, timeout=timeout_seconds, trust_env=False)
        self._in_flight: set[asyncio.Task[None]] = set()
        self.on_delivered: Callable[[], None] = lambda: None  # the housekeeper claims more when one ends

    async def close(self) -> None:
        for task in self._in_flight:
            task.cancel()  # its claim lapses, and the callback is delivered later, by any replica
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        await self._client.aclose()

    async def deliver_due(self) -> int:
        """Start delivering due callbacks, up to MAX_IN_FLIGHT at once; how many were started.
        Each delivery is a task of its own, so a slow receiver delays no other callback. The
        claim outlasts a delivery's deadline, so no other replica POSTs it meanwhile."""
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0:
            return 0
        jobs = await self.store.claim_due_callbacks(limit=free, lease_seconds=self.timeout_seconds * 2)
        for job in jobs:
            task = asyncio.create_task(self._deliver(job))
            self._in_flight.add(task)
            task.add_done_callback(self._ended)
        return len(jobs)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:  # recording the outcome failed
            log.warning("callback delivery: %s; it will be retried when its claim lapses", task.exception())
        self.on_delivered()

    async def _deliver(self, job: Job) -> None:
        with tracing.tracer().start_as_current_span(
            "job callback",
            context=tracing.extract(job.trace_context),
            kind=SpanKind.CLIENT,
            attributes={"llmmesh.job_id": job.job_id},
        ):
            await self._attempt(job)

    async def _attempt(self, job: Job) -> None:
        body = json.dumps(job_json(job), separators=(",", ":")).encode()
        try:
            # A whole-delivery deadline (the DNS lookup included): httpx's timeout is per read,
            # and a receiver that trickles its answer would hold the delivery past its claim.
            async with asyncio.timeout(self.timeout_seconds):
                target = await self.guard.check(job.callback_url)
                response = await self._post(target, job.job_id, body)
            if 200 <= response.status_code < 300:
                CALLBACK_ATTEMPTS.labels("delivered").inc()
                await self.store.callback_delivered(job.job_id)
                log.info("callback for job %s delivered", job.job_id)
                return
            error = f"HTTP {response.status_code}" + (" (redirects are not followed)" if response.is_redirect else "")
        except InvalidArgument as rejected:
            error = rejected.message
        except TimeoutError:
            error = f"no complete answer within {self.timeout_seconds:g} s"
        except Exception as failure:  # noqa: BLE001 - one callback fails alone, whatever httpx raises
            error = f"{type(failure).__name__}: {failure}"
        CALLBACK_ATTEMPTS.labels("failed").inc()
        attempts = job.callback_attempts + 1
        retry = None
        if attempts < self.max_attempts:
            retry = min(self.backoff_seconds * 2 ** (attempts - 1), self.max_backoff_seconds)
        await self.store.callback_failed(job.job_id, error, retry)
        log.warning("callback for job %s failed (attempt %d/%d): %s", job.job_id, attempts, self.max_attempts, error)

    async def _post(self, target: Target, job_id: str, body: bytes) -> httpx.Response:
        parts = urlsplit(target.url)
        address = f"[{target.address}]" if target.address.version == 6 else str(target.address)
        netloc = f"{address}:{parts.port}" if parts.port else address
        pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
        headers = {
            "Host": parts.netloc.rsplit("@", 1)[-1],
            "Content-Type": "application/json",
            "User-Agent": "llmmesh-scheduler",
            JOB_ID_HEADER: job_id,
            SIGNATURE_HEADER: sign(self.secret, int(time.time()), body),
            **tracing.inject(),  # the receiver may continue the job's trace
        }
        return await self._client.post(pinned, content=body, headers=headers, extensions={"sni_hostname": target.host})
