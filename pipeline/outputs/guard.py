"""Which result URLs a download may fetch, and the address it then connects to.

A result URL comes from a provider's answer, so it is untrusted input: it could point at
a cloud metadata service or a private network (SSRF). Each hop, redirects included, is
checked before any connection: http(s) only, no userinfo, and every address its host
resolves to must be public. The request then goes to the checked address itself (the
URL's host replaced by it, the name kept in ``Host`` and TLS SNI), so a second lookup
cannot hand the connection to another address (DNS rebinding).

Exceptions: the exact host and port a provider's API is configured on (the emulators
on 127.0.0.1, a self-hosted gateway), and ``allow_private_downloads`` in the spec, which
admits loopback and private ranges; link-local, metadata, multicast and reserved
addresses are never fetched.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from pipeline.errors import DownloadError
from pipeline.models import DEFAULT_MAX_DOWNLOAD_BYTES, ProviderSettings

__all__ = [
    "DEFAULT_POLICY",
    "DownloadPolicy",
    "Hop",
    "IPAddress",
    "Resolver",
    "address_refusal",
    "check_hop",
    "policy_for",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) → the addresses it resolves to, as text."""

_METADATA = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, DigitalOcean, OpenStack
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?", re.IGNORECASE)  # IDNA: ASCII


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's answer for ``host``."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """What one provider's downloads may fetch (``policy_for`` builds it from the spec)."""

    max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    allow_private: bool = False  # loopback and private ranges (never metadata/link-local)
    trusted: frozenset[tuple[str, int]] = frozenset()  # (host, port) of the provider's API
    resolver: Resolver = field(default=system_resolver, compare=False)
    max_redirects: int = 5


DEFAULT_POLICY = DownloadPolicy()


@dataclass(frozen=True, slots=True)
class Hop:
    """One checked request target: ``connects`` is ``url`` with its host replaced by each
    checked address in the resolver's order (tried in turn while a connection fails);
    ``host`` goes into the Host header, ``sni`` into TLS."""

    url: httpx.URL
    connects: tuple[str, ...]
    host: str
    sni: str | None

    @property
    def connect(self) -> str:
        return self.connects[0]


def policy_for(settings: ProviderSettings, resolver: Resolver | None = None) -> DownloadPolicy:
    """The download policy of one provider entry: its caps, its private-range switch, and
    its own configured API origin as a trusted host."""
    return DownloadPolicy(
        max_bytes=settings.max_download_bytes,
        allow_private=settings.allow_private_downloads,
        trusted=_trusted_origin(settings.base_url) if settings.base_url else frozenset(),
        resolver=resolver or system_resolver,
    )


@functools.lru_cache(maxsize=64)
def _trusted_origin(base_url: str) -> frozenset[tuple[str, int]]:
    """The (host, port) of a provider's API origin; parsed once per base URL, as the
    policy is asked for on every download."""
    try:
        base = httpx.URL(base_url)
    except httpx.InvalidURL:
        return frozenset()
    return frozenset({(base.host.lower(), _port(base))}) if base.host else frozenset()


def address_refusal(  # noqa: PLR0911 (one answer per kind of address reads best)
    address: IPAddress, policy: DownloadPolicy
) -> str | None:
    """Why ``address`` may not be fetched from under ``policy``; None when it may."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return address_refusal(embedded, policy)
    if address in _METADATA:
        return "a cloud metadata address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a multicast, unspecified or reserved address"
    if address.is_global:
        return None
    if policy.allow_private:
        return None
    if address.is_loopback:
        return "a loopback address (allowed only where the provider's API is configured)"
    return "a private address (set allow_private_downloads for this provider to allow it)"


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


async def check_hop(url: httpx.URL, policy: DownloadPolicy) -> Hop:
    """Check one request target and pin it to a checked address; raises a final
    ``DownloadError`` saying why when it may not be fetched."""
    if url.scheme not in ("http", "https"):
        raise _refused(f"only http(s) result URLs are fetched, not {url.scheme or 'no scheme'!r}")
    if url.userinfo:
        raise _refused("a result URL with a user name or password is refused")
    host = url.host
    if not host:
        raise _refused("the result URL has no host")
    port = _port(url)
    if not 0 < port < 65536:
        raise _refused(f"result URL port {port} is out of range")
    literal = _ip_or_none(host)
    name = url.raw_host.decode("ascii", "replace")
    if literal is None and (
        not _HOST_NAME.fullmatch(name)
        or _NUMERIC_LABEL.fullmatch(name.rstrip(".").rpartition(".")[2])
    ):
        raise _refused(f"result URL host {host!r} is not a valid name nor a plain IP address")
    addresses = [literal] if literal is not None else await _resolve(host, port, policy)
    if (host.lower(), port) not in policy.trusted:
        for address in addresses:
            reason = address_refusal(address, policy)
            if reason is not None:
                raise _refused(f"result URL host {host} ({address}) refused: {reason}")
    if literal is not None:
        return Hop(url, (str(url),), host, None)
    unique = dict.fromkeys(addresses)  # getaddrinfo repeats an address per protocol
    pinned = tuple(str(url.copy_with(host=str(address))) for address in unique)
    return Hop(url, pinned, url.netloc.decode("ascii"), host if url.scheme == "https" else None)


async def _resolve(host: str, port: int, policy: DownloadPolicy) -> list[IPAddress]:
    try:
        answers = await policy.resolver(host, port)
    except OSError as exc:
        raise DownloadError(f"cannot resolve result URL host {host}: {exc}") from exc
    addresses = [_ip_or_none(answer.partition("%")[0]) for answer in answers]
    found = [address for address in addresses if address is not None]
    if not found or len(found) != len(addresses):
        raise DownloadError(f"result URL host {host} resolved to no usable address")
    return found


def _ip_or_none(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _refused(message: str) -> DownloadError:
    return DownloadError(message, transient=False)
