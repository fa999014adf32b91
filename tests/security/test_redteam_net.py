"""Red-team findings on outbound URLs (issue 18): the address guard and webhooks.

The address tests use literal IPv6 URLs: ``getaddrinfo`` answers a literal
with itself, so they exercise the real resolver path without DNS.
"""

from __future__ import annotations

import asyncio

import pytest

from engine.errors import URLNotAllowed
from engine.net import NetPolicy, check_url, check_url_sync

STRICT = NetPolicy(allow_private=False)

EMBEDDED_PRIVATE = [
    "http://[::127.0.0.1]/",  # IPv4-compatible loopback
    "http://[::10.0.0.1]/",  # IPv4-compatible private
    "http://[::169.254.169.254]/",  # IPv4-compatible link-local (cloud metadata)
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://[::ffff:192.168.1.1]/",  # IPv4-mapped private
    "http://[64:ff9b::127.0.0.1]/",  # NAT64 well-known prefix
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[64:ff9b:1::a00:1]/",  # NAT64 local-use prefix (RFC 8215)
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
    "http://[2002:c0a8:101::1]:8080/",  # 6to4 of 192.168.1.1
]


@pytest.mark.parametrize("url", EMBEDDED_PRIVATE)
def test_embedded_private_ipv4_is_refused(url: str):
    with pytest.raises(URLNotAllowed):
        asyncio.run(check_url(url, STRICT, "webhookURL"))
    with pytest.raises(URLNotAllowed):
        check_url_sync(url, STRICT, "webhookURL")


@pytest.mark.parametrize(
    "url", ["http://[::8.8.8.8]/", "http://[::ffff:8.8.8.8]/", "http://[64:ff9b::8.8.8.8]/", "http://[2002:808:808::1]/"]
)
def test_embedded_public_ipv4_is_treated_like_the_ipv4(url: str):
    asyncio.run(check_url(url, STRICT, "webhookURL"))
    check_url_sync(url, STRICT, "webhookURL")


def test_allowed_private_still_allows_embedded_forms():
    asyncio.run(check_url("http://[::ffff:127.0.0.1]/", NetPolicy(allow_private=True), "webhookURL"))
