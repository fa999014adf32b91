"""Resolve an image reference: imageUUID, URL, data URI or bare base64."""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from urllib.parse import urlsplit

from engine.errors import ImageNotFound, InvalidImage
from engine.images.codec import MAX_INPUT_BYTES
from engine.images.store import ImageStore
from engine.net import NetPolicy, fetch_bytes

_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DATA_URI_RE = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)
_OWN_IMAGE_PATH_RE = re.compile(r"^/images/(?P<name>[0-9a-f-]{36}\.(png|jpg|webp))$")


def _b64(text: str, parameter: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{parameter} is neither an imageUUID, a URL, a data URI nor base64", parameter=parameter) from None


async def load_image_bytes(
    ref: str,
    parameter: str,
    store: ImageStore,
    policy: NetPolicy,
    own_hosts: frozenset[str] = frozenset(),
    team: str | None = None,
) -> bytes:
    """Bytes of the image ``ref`` points at.

    ``own_hosts`` are the ``host:port`` spellings of this server: a URL of one
    of its own ``/images/`` files is read from the store instead of fetched.
    """
    ref = ref.strip()
    if _UUID_RE.match(ref):
        path = await asyncio.to_thread(store.find, ref, team)  # file I/O never on the event loop; another team's looks missing
        if path is None:
            raise ImageNotFound(f"{parameter}: no image with imageUUID {ref}", parameter=parameter)
        return await asyncio.to_thread(path.read_bytes)
    if ref.startswith(("http://", "https://")):
        parts = urlsplit(ref)
        own = _OWN_IMAGE_PATH_RE.match(parts.path)
        if own and parts.netloc in own_hosts:
            path = await asyncio.to_thread(store.path_for_name, own.group("name"))
            if path is None:
                raise ImageNotFound(f"{parameter}: no such image on this server", parameter=parameter)
            return await asyncio.to_thread(path.read_bytes)
        return await fetch_bytes(ref, policy, MAX_INPUT_BYTES, parameter)
    if ref.startswith("data:"):
        match = _DATA_URI_RE.match(ref)
        if not match:
            raise InvalidImage(f"{parameter} is a data URI but not a base64 one", parameter=parameter)
        return _b64(match.group("data"), parameter)
    return _b64(ref, parameter)
