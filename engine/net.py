"""Guarded outbound HTTP: the one way the engine reaches a URL.

Only http/https; every host (the first and each redirect's) must resolve to
public addresses unless private targets are allowed in config; bodies are
streamed with a byte cap.  Remaining gap, documented: a host that resolves
differently between the check and the connection (DNS rebinding) is not
pinned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from engine.errors import DownloadFailed, URLNotAllowed


@dataclass(frozen=True)
class NetPolicy:
    allow_private: bool = False
    timeout_s: float = 30.0
    max_redirects: int = 5


def _split(url: str, parameter: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise URLNotAllowed(f"{parameter}: only http(s) URLs with a host are accepted", parameter=parameter)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise URLNotAllowed(f"{parameter}: the URL's port is not valid", parameter=parameter) from None
    return parts.hostname, port


def _check_addresses(hostname: str, infos: list, parameter: str) -> None:
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise URLNotAllowed(
                f"{parameter}: {hostname} resolves to a private or local address, which this server refuses",
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


async def fetch_bytes(url: str, policy: NetPolicy, max_bytes: int, parameter: str) -> bytes:
    """GET ``url`` with the checks above; raises DownloadFailed / URLNotAllowed."""
    async with httpx.AsyncClient(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client:
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
