"""The callback SSRF guard and signatures, without a network."""

from __future__ import annotations

import ipaddress
import time

import pytest

from services.common.errors import InvalidArgument
from services.scheduler.callbacks import CallbackGuard, sign, verify

LOOPBACK_ALLOWED = CallbackGuard([ipaddress.ip_network("127.0.0.1/32")])


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:8080/hook",
        "http://127.0.0.1/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped IPv6
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/hook",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://100.64.0.1/hook",  # carrier-grade NAT
        "http://0.0.0.0/hook",
        "http://224.0.0.1/hook",
        "file:///etc/passwd",
        "ftp://93.184.216.34/",
        "http://user:secret@93.184.216.34/",
        "http:///no-host",
        "http://93.184.216.34:99999/",
    ],
)
async def test_private_and_odd_urls_are_rejected(url: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        await CallbackGuard().check(url)
    assert error.value.param == "callback_url" and error.value.reason == "CALLBACK_URL_REJECTED"


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/hook",  # decimal 127.0.0.1
        "http://0x7f000001/hook",  # hex
        "http://0177.0.0.1/hook",  # octal
        "http://127.1/hook",  # short form
        "http://0x7f.0.0.1/hook",
    ],
)
async def test_obscure_ip_spellings_are_rejected_even_when_the_address_is_allowed(url: str) -> None:
    with pytest.raises(InvalidArgument, match="dotted-quad"):
        await LOOPBACK_ALLOWED.check(url)


async def test_allow_listed_and_public_addresses_pass() -> None:
    target = await LOOPBACK_ALLOWED.check("http://127.0.0.1:9000/hook?x=1")
    assert str(target.address) == "127.0.0.1" and target.host == "127.0.0.1"
    public = await CallbackGuard().check("https://93.184.216.34/hook")
    assert str(public.address) == "93.184.216.34"


async def test_loopback_stays_rejected_when_only_another_network_is_allowed() -> None:
    guard = CallbackGuard([ipaddress.ip_network("10.0.0.0/8")])
    assert (await guard.check("http://10.1.2.3/")).address == ipaddress.ip_address("10.1.2.3")
    with pytest.raises(InvalidArgument):
        await guard.check("http://localhost/")


async def test_unresolvable_hosts_are_rejected() -> None:
    with pytest.raises(InvalidArgument, match="does not resolve"):
        await CallbackGuard().check("http://no-such-host.invalid/hook")


def test_signatures_verify_and_detect_tampering_and_replays() -> None:
    body = b'{"id":"job-1"}'
    header = sign(b"secret", int(time.time()), body)
    assert verify(b"secret", header, body)
    assert not verify(b"secret", header, body + b" ")
    assert not verify(b"other", header, body)
    assert not verify(b"secret", sign(b"secret", int(time.time()) - 3600, body), body)
    assert not verify(b"secret", "garbage", body)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::127.0.0.1]/hook",  # IPv4-compatible
        "http://[64:ff9b::127.0.0.1]/hook",  # NAT64
        "http://[64:ff9b::169.254.169.254]/latest/meta-data/",
        "http://[64:ff9b:1::7f00:1]/hook",  # NAT64, local-use prefix
        "http://[2002:7f00:1::1]/hook",  # 6to4 of 127.0.0.1
        "http://[::ffff:0:127.0.0.1]/hook",  # SIIT
        "http://[2001:0:4136:e378:8000:63bf:80ff:fffe]/hook",  # Teredo, client 127.0.0.1
        "http://[fec0::1]/hook",  # site-local
        "http://[fd00::1]/hook",  # unique local
        "http://[2001:db8::1]/hook",  # documentation
        "http://[::]/hook",
        "http://[ff02::1]/hook",
    ],
)
async def test_ipv6_spellings_of_internal_addresses_are_rejected(url: str) -> None:
    with pytest.raises(InvalidArgument, match="non-public"):
        await CallbackGuard().check(url)


async def test_ipv6_leading_to_a_public_ipv4_host_passes() -> None:
    assert (await CallbackGuard().check("http://[64:ff9b::93.184.216.34]/hook")).address.version == 6
    assert (await CallbackGuard().check("http://[2606:4700::1111]/hook")).address.version == 6


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/x\x01y", "http://93.184.216.34/a b", "http://93.184.216.34/\x7f"]
)
async def test_control_characters_are_rejected(url: str) -> None:
    url = url.encode().decode("unicode_escape")
    with pytest.raises(InvalidArgument, match="control characters"):
        await CallbackGuard().check(url)
