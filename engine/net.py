"""Guarded outbound HTTP: the one way the engine reaches a URL.

Only http/https; every host (the first and each redirect's) must resolve to
public addresses unless private targets are allowed in config; bodies are
streamed with a byte cap.  The check is also made *where the connection is
opened*: the clients from :func:`guarded_client` / :func:`guarded_async_client`
use an httpcore network backend that resolves the host once, refuses it if
any address is not public, and connects to the address it checked — so a
name that resolves to a public address for the check and to a private one a
moment later (DNS rebinding) cannot reach inside.  TLS still verifies the
certificate against the URL's host name (httpcore passes it as SNI).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from engine.errors import DownloadFailed, URLNotAllowed


@dataclass(frozen=True)
class NetPolicy:
    allow_private: bool = False
    timeout_s: float = 30.0
    """Longest wait for any one network step (connect, a read)."""
    max_redirects: int = 5
    fetch_total_s: float = 60.0
    """Longest a whole :func:`fetch_bytes` may take: a server that trickles a byte per read cannot hold a task."""


def _split(url: str, parameter: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URLNotAllowed(f"{parameter}: only http(s) URLs with a host are accepted", parameter=parameter)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise URLNotAllowed(f"{parameter}: the URL's port is not valid", parameter=parameter) from None
    return parts.hostname, port


_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")


def is_public_address(text: str) -> bool:
    """Whether ``text`` (an IP address) is a public one.

    An IPv6 address that carries an IPv4 address (IPv4-mapped ``::ffff:a.b.c.d``,
    IPv4-compatible ``::a.b.c.d``, NAT64 ``64:ff9b::a.b.c.d``, 6to4
    ``2002:AABB:CCDD::``) is judged by that IPv4 address, since a gateway or the
    kernel may deliver it there; NAT64's local-use prefix is never public.
    """
    address = ipaddress.ip_address(text.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and (address in _IPV4_COMPATIBLE or address in _NAT64_WELL_KNOWN):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _NAT64_LOCAL_USE:
            return False
        if embedded is not None:
            return embedded.is_global
    return address.is_global


def _check_addresses(hostname: str, infos: list, parameter: str) -> None:
    for info in infos:
        if not is_public_address(info[4][0]):
            raise URLNotAllowed(
                f"{parameter}: {hostname} resolves to a private or local address, which this server refuses "
                "(its operator can allow them with `wisp serve --allow-private-urls`)",
                parameter=parameter,
            )


async def check_url(url: str, policy: NetPolicy, parameter: str) -> None:
    """Refuse non-http(s) URLs and, unless allowed, hosts with non-public addresses."""
    hostname, port = _split(url, parameter)
    if policy.allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        raise DownloadFailed(f"{parameter}: host {hostname} does not resolve", parameter=parameter) from None
    _check_addresses(hostname, infos, parameter)


def check_url_sync(url: str, policy: NetPolicy, parameter: str) -> None:
    """:func:`check_url` for worker threads."""
    hostname, port = _split(url, parameter)
    if policy.allow_private:
        return
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except OSError:
        raise DownloadFailed(f"{parameter}: host {hostname} does not resolve", parameter=parameter) from None
    _check_addresses(hostname, infos, parameter)


def _pinned_address(hostname: str, infos: list, policy: NetPolicy, parameter: str) -> str:
    """The address to connect to: the first one resolved, after every one was checked."""
    if not infos:
        raise DownloadFailed(f"{parameter}: host {hostname} does not resolve", parameter=parameter)
    if not policy.allow_private:
        _check_addresses(hostname, infos, parameter)
    return str(infos[0][4][0])


class _GuardedBackend(httpcore.NetworkBackend):
    """Sync httpcore backend: resolve, check, connect to the checked address (no second lookup)."""

    def __init__(self, policy: NetPolicy, parameter: str) -> None:
        self.policy, self.parameter = policy, parameter
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: object = None) -> httpcore.NetworkStream:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise httpcore.ConnectError(f"{host} does not resolve") from None
        address = _pinned_address(host, infos, self.policy, self.parameter)
        return self.inner.connect_tcp(address, port, timeout, local_address, socket_options)  # type: ignore[arg-type]

    def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.NetworkStream:
        raise URLNotAllowed(f"{self.parameter}: unix sockets are not reachable", parameter=self.parameter)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The asyncio twin of :class:`_GuardedBackend`."""

    def __init__(self, policy: NetPolicy, parameter: str) -> None:
        self.policy, self.parameter = policy, parameter
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                          socket_options: object = None) -> httpcore.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise httpcore.ConnectError(f"{host} does not resolve") from None
        address = _pinned_address(host, infos, self.policy, self.parameter)
        return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)  # type: ignore[arg-type]

    async def connect_unix_socket(self, *args: object, **kwargs: object) -> httpcore.AsyncNetworkStream:
        raise URLNotAllowed(f"{self.parameter}: unix sockets are not reachable", parameter=self.parameter)

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(policy: NetPolicy, parameter: str, timeout: httpx.Timeout | float) -> httpx.Client:
    """An httpx client whose every connection goes through the address check (no redirects, no env proxies)."""
    transport = httpx.HTTPTransport(trust_env=False)
    transport._pool._network_backend = _GuardedBackend(policy, parameter)  # httpx exposes no backend argument
    return httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


def guarded_async_client(policy: NetPolicy, parameter: str, timeout: httpx.Timeout | float) -> httpx.AsyncClient:
    """The asyncio twin of :func:`guarded_client`."""
    transport = httpx.AsyncHTTPTransport(trust_env=False)
    transport._pool._network_backend = _AsyncGuardedBackend(policy, parameter)
    return httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False)


async def fetch_bytes(url: str, policy: NetPolicy, max_bytes: int, parameter: str) -> bytes:
    """GET ``url`` with the checks above, within ``policy.fetch_total_s``; raises DownloadFailed / URLNotAllowed."""
    try:
        async with asyncio.timeout(policy.fetch_total_s):
            return await _fetch_bytes(url, policy, max_bytes, parameter)
    except TimeoutError:
        raise DownloadFailed(f"{parameter}: the download took longer than {policy.fetch_total_s:g} s", parameter=parameter) from None


async def _fetch_bytes(url: str, policy: NetPolicy, max_bytes: int, parameter: str) -> bytes:
    async with guarded_async_client(policy, parameter, policy.timeout_s) as client:
        for _ in range(policy.max_redirects + 1):
            await check_url(url, policy, parameter)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise DownloadFailed(f"{parameter}: GET answered HTTP {response.status_code}", parameter=parameter)
                    length = response.headers.get("content-length")
                    if length is not None and length.isdigit() and int(length) > max_bytes:
                        raise DownloadFailed(f"{parameter}: {length} bytes is over the {max_bytes} limit", parameter=parameter)
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise DownloadFailed(f"{parameter}: body is over the {max_bytes} limit", parameter=parameter)
                        chunks.append(chunk)
                    return b"".join(chunks)
            except httpx.HTTPError as exc:
                raise DownloadFailed(f"{parameter}: download failed ({type(exc).__name__})", parameter=parameter) from None
        raise DownloadFailed(f"{parameter}: too many redirects", parameter=parameter)
