"""Generated and uploaded images on disk, by imageUUID.

Files are ``images/<uuid>.<ext>``; the UUID is random (v4), so an image URL is
an unguessable capability.  Writes go to ``tmp/`` and are renamed into place.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from pathlib import Path

from engine.images.codec import EXT_MIME

_NAME_RE = re.compile(r"^(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(?P<ext>png|jpg|webp)$")


class ImageStore:
    def __init__(self, root: Path, tmp: Path) -> None:
        self.root = Path(root)
        self.tmp = Path(tmp)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, ext: str, image_uuid: str | None = None) -> tuple[str, str]:
        """Store bytes; returns (imageUUID, file name)."""
        image_uuid = image_uuid or str(uuid.uuid4())
        name = f"{image_uuid}.{ext}"
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="img-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp_name, self.root / name)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        return image_uuid, name

    def path_for_name(self, name: str) -> Path | None:
        """The file for a URL name like ``<uuid>.png``; None for anything else (no traversal)."""
        if not _NAME_RE.match(name):
            return None
        path = self.root / name
        return path if path.is_file() else None

    def find(self, image_uuid: str) -> Path | None:
        """The stored file of an imageUUID, whatever its extension."""
        image_uuid = image_uuid.lower()
        for ext in EXT_MIME:
            path = self.path_for_name(f"{image_uuid}.{ext}")
            if path is not None:
                return path
        return None

    @staticmethod
    def mime_for(path: Path) -> str:
        return EXT_MIME.get(path.suffix.lstrip("."), "application/octet-stream")
