"""A training dataset: fetched, checked, cropped, written as PNGs for the training process.

Entries are image references as everywhere in wisp (imageUUID, URL, data URI,
bare base64) or a zip of images, by URL or inline.  Downloads go through the
same guard as every other fetch (no private targets unless allowed, size
cap).  Zips are read in memory with limits on entry count and on each
entry's *declared and actual* uncompressed size, so a zip bomb is refused
before it expands; names inside a zip are never used as paths.  Every image
is decoded with the usual pixel limits, then centre-cropped to a square and
resized to the recipe's resolution.  A bad entry is named in the error
(``images[2]``, ``inputs.dataset: faces.zip/3.png``).
"""

from __future__ import annotations

import asyncio
import io
import zipfile
from pathlib import Path, PurePosixPath

from PIL import Image

from engine.errors import InvalidImage, InvalidInput
from engine.images.codec import MAX_INPUT_BYTES, decode_image
from engine.images.sources import load_image_bytes
from engine.images.store import ImageStore
from engine.net import NetPolicy

MAX_IMAGES = 64
MIN_IMAGES = 1
MAX_ZIP_ENTRY_BYTES = MAX_INPUT_BYTES
MAX_ZIP_TOTAL_BYTES = 256 * 1024 * 1024
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


class BadDataset(InvalidImage):
    """An entry of the dataset is not usable; the message names it."""


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """The largest centred square of ``image``, resized to ``size``×``size``."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def _zip_images(data: bytes, parameter: str) -> list[tuple[str, bytes]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise BadDataset(f"{parameter} is not a readable zip archive", parameter=parameter) from None
    found: list[tuple[str, bytes]] = []
    total = 0
    with archive:
        for info in archive.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            label = f"{parameter}: {name[:120]}"
            if len(found) >= MAX_IMAGES:
                raise BadDataset(f"{parameter}: the zip holds more than {MAX_IMAGES} images", parameter=parameter)
            if info.file_size > MAX_ZIP_ENTRY_BYTES:
                raise BadDataset(f"{label} is {info.file_size} bytes uncompressed; the limit is {MAX_ZIP_ENTRY_BYTES}", parameter=parameter)
            total += info.file_size
            if total > MAX_ZIP_TOTAL_BYTES:
                raise BadDataset(f"{parameter}: the zip expands past {MAX_ZIP_TOTAL_BYTES} bytes", parameter=parameter)
            try:
                with archive.open(info) as member:
                    body = member.read(MAX_ZIP_ENTRY_BYTES + 1)  # never trust the declared size alone
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError):
                raise BadDataset(f"{label} cannot be extracted", parameter=parameter) from None
            if len(body) > MAX_ZIP_ENTRY_BYTES:
                raise BadDataset(f"{label} expands past {MAX_ZIP_ENTRY_BYTES} bytes", parameter=parameter)
            found.append((label, body))
    if not found:
        raise BadDataset(f"{parameter}: the zip holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})", parameter=parameter)
    return found


def _decode_all(blobs: list[tuple[str, str, bytes]], resolution: int) -> list[Image.Image]:
    images = []
    for parameter, label, body in blobs:
        if body[:4] == b"PK\x03\x04":
            for inner_label, inner in _zip_images(body, label):
                images.append(_decode(inner, parameter, inner_label, resolution))
        else:
            images.append(_decode(body, parameter, label, resolution))
        if len(images) > MAX_IMAGES:
            raise BadDataset(f"at most {MAX_IMAGES} images per dataset", parameter=parameter)
    if len(images) < MIN_IMAGES:
        raise InvalidInput("the dataset holds no images", parameter=blobs[0][0] if blobs else "inputs.dataset")
    return images


def _decode(body: bytes, parameter: str, label: str, resolution: int) -> Image.Image:
    try:
        image = decode_image(body, label)
    except InvalidImage as exc:
        raise BadDataset(exc.message, parameter=parameter) from None
    return centre_square(image, resolution)


async def gather(
    refs: tuple[str, ...],
    parameter: str,
    resolution: int,
    store: ImageStore,
    policy: NetPolicy,
    own_hosts: frozenset[str],
    folder: Path,
    team: str | None = None,
) -> list[Path]:
    """Fetch and prepare every entry of ``refs`` (imageUUIDs: ``team``'s own); returns the PNGs written in ``folder``."""
    blobs: list[tuple[str, str, bytes]] = []
    single = len(refs) == 1 and parameter == "inputs.dataset"
    for index, ref in enumerate(refs):
        label = parameter if single else f"{parameter}[{index}]"
        try:
            body = await load_image_bytes(ref, label, store, policy, own_hosts, team)
        except InvalidImage as exc:
            raise BadDataset(exc.message, parameter=parameter) from None
        blobs.append((parameter, label, body))
    images = await asyncio.to_thread(_decode_all, blobs, resolution)

    def write() -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(images):
            path = folder / f"{i:03d}.png"
            image.save(path, format="PNG")
            paths.append(path)
        return paths

    return await asyncio.to_thread(write)
