"""Generated and uploaded images on disk, by imageUUID.

Files are ``images/<uuid>.<ext>``; the UUID is random (v4), so an image URL is
an unguessable capability.  Writes go to ``tmp/`` and are renamed into place.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from engine.images.codec import EXT_MIME

if TYPE_CHECKING:
    from engine.registry.db import Database

_NAME_RE = re.compile(r"^(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(?P<ext>png|jpg|webp)$")


class ImageStore:
    def __init__(self, root: Path, tmp: Path, db: "Database | None" = None) -> None:
        """``db``: where each image's team is recorded, so an imageUUID works as an input for its own team only."""
        self.root = Path(root)
        self.tmp = Path(tmp)
        self.db = db
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes, ext: str, image_uuid: str | None = None, team: str | None = None) -> tuple[str, str]:
        """Store bytes (for ``team``, when given); returns (imageUUID, file name).  Worker threads only: it writes a file."""
        image_uuid = image_uuid or str(uuid.uuid4())
        if team is not None and self.db is not None:
            self.db.connect().execute(
                "INSERT OR REPLACE INTO image_owners(image_uuid, team, created_at) VALUES (?, ?, ?)", (image_uuid, team, time.time())
            )
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

    def find(self, image_uuid: str, team: str | None = None) -> Path | None:
        """The stored file of an imageUUID, whatever its extension.

        With ``team``: None as well when the image was made or uploaded by
        another team (a stranger's imageUUID looks missing; its URL stays a
        capability).  Images from before owners were recorded have none and
        stay usable by anyone who knows their UUID.
        """
        image_uuid = image_uuid.lower()
        if team is not None and self.db is not None:
            row = self.db.connect().execute("SELECT team FROM image_owners WHERE image_uuid=?", (image_uuid,)).fetchone()
            if row is not None and row[0] != team:
                return None
        for ext in EXT_MIME:
            path = self.path_for_name(f"{image_uuid}.{ext}")
            if path is not None:
                return path
        return None

    @staticmethod
    def mime_for(path: Path) -> str:
        return EXT_MIME.get(path.suffix.lstrip("."), "application/octet-stream")
