"""Generated and uploaded images on disk, by imageUUID.

Files are ``images/<uuid>.<ext>``; the UUID is random (v4), so an image URL is
an unguessable capability.  Writes go to ``tmp/`` and are renamed into place.

Images do not live forever: each is kept for its request's ``ttl`` (Runware's
field, at least 60 s) or else the server's default retention
(``WISP_IMAGE_TTL``, 30 days; 0 keeps them until deleted by hand), and
:meth:`ImageStore.sweep` deletes what has expired.  A request's ttl is stored
as the ``expires_at`` of the image's ``image_owners`` row; a row without one
goes by its ``created_at`` and the default as it is *now* (an operator who
shortens the retention shortens it for what is already stored).  An image
stored without a team (engine tests, older versions) has no row, and goes by
its file's age.
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


OWNER_SQL = "INSERT OR REPLACE INTO image_owners(image_uuid, team, created_at, expires_at) VALUES (?, ?, ?, ?)"
"""The row that makes a stored image its team's (image_uuid, team, created_at, expires_at): written by :class:`ImageStore`,
and by bench/floor.py's least server to pay what wisp pays per image."""

DEFAULT_TTL_S = 30 * 86400.0
"""How long an image is kept when its request names no ``ttl``."""


class ImageStore:
    def __init__(
        self, root: Path, tmp: Path, db: "Database | None" = None, default_ttl_s: float = DEFAULT_TTL_S, write_behind: bool = False,
    ) -> None:
        """``db``: where each image's team and expiry are recorded, so an imageUUID works as an input for its own team only.

        ``default_ttl_s``: how long an image without a ``ttl`` of its own is kept (0: until deleted by hand).
        ``write_behind``: record owners through the database's write-behind queue (engine.registry.writer) instead
        of an INSERT on the storing thread (~0.3 ms of a device thread per image); until its row is committed an
        owner is known from memory, so it is enforced from the moment the image is stored.  A kill -9 in those
        50 ms leaves the file without a row: an image "from before owners", usable by whoever has its UUID and
        kept for the default retention.
        """
        self.root = Path(root)
        self.tmp = Path(tmp)
        self.db = db
        self.default_ttl_s = default_ttl_s
        self.write_behind = write_behind and db is not None
        self._unwritten: dict[str, tuple[str, object]] = {}
        """imageUUID → (team, token) of owners queued and not yet committed (the token tells a later put of the same UUID)."""
        self.transient = False
        """Name images without keeping them (a fleet replica: its results travel in their events and the front end stores them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def put(
        self, data: bytes, ext: str, image_uuid: str | None = None, team: str | None = None, ttl_s: float | None = None,
    ) -> tuple[str, str]:
        """Store bytes (for ``team``, when given, kept ``ttl_s`` or the default); returns (imageUUID, file name).

        Worker threads only: it writes a file.
        """
        image_uuid = image_uuid or str(uuid.uuid4())
        if self.transient:
            return image_uuid, f"{image_uuid}.{ext}"
        if team is not None and self.db is not None:
            now = time.time()
            row = (image_uuid, team, now, now + ttl_s if ttl_s else None)
            if self.write_behind:
                token = object()
                self._unwritten[image_uuid] = (team, token)
                self.db.writer.put(OWNER_SQL, row, after_commit=lambda: self._written(image_uuid, token))
            else:
                self.db.connect().execute(OWNER_SQL, row)
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
            owner = self._owner(image_uuid)
            if owner is not None and owner != team:
                return None
        for ext in EXT_MIME:
            path = self.path_for_name(f"{image_uuid}.{ext}")
            if path is not None:
                return path
        return None

    def delete(self, image_uuid: str, team: str) -> bool:
        """Worker thread: delete ``team``'s own image (mediaStorage delete); False when it has none by that UUID."""
        image_uuid = image_uuid.lower()
        if self.db is not None and self._owner(image_uuid) != team:
            return False  # another team's (or an unowned) image looks missing
        removed = self._remove(image_uuid)
        if self.db is not None:
            if image_uuid in self._unwritten:
                self.db.sync_writes()  # its queued INSERT must not land after this DELETE
            self.db.connect().execute("DELETE FROM image_owners WHERE image_uuid=?", (image_uuid,))
        return removed

    def _written(self, image_uuid: str, token: object) -> None:
        """The writer committed an owner row: forget the queued one (unless the UUID was stored again since)."""
        queued = self._unwritten.get(image_uuid)
        if queued is not None and queued[1] is token:
            del self._unwritten[image_uuid]

    def _owner(self, image_uuid: str) -> str | None:
        """The team that made or uploaded an image (None: no owner recorded).  Needs ``self.db``."""
        assert self.db is not None
        queued = self._unwritten.get(image_uuid)
        if queued is not None:
            return queued[0]
        row = self.db.connect().execute("SELECT team FROM image_owners WHERE image_uuid=?", (image_uuid,)).fetchone()
        return None if row is None else str(row[0])

    def _remove(self, image_uuid: str) -> bool:
        removed = False
        for ext in EXT_MIME:
            try:
                (self.root / f"{image_uuid}.{ext}").unlink()
                removed = True
            except FileNotFoundError:
                pass
        return removed

    def sweep(self, now: float | None = None, unowned: bool = False) -> int:
        """Delete every image whose time is up; returns how many files went.  Worker threads only.

        ``unowned``: also look at files with no row (stored without a team,
        or before expiry existed) and delete those older than the default
        retention by their modification time; that lists the folder, so the
        server does it at start and once a day, not every sweep.
        """
        now = time.time() if now is None else now
        removed = 0
        if self.db is not None:
            conn = self.db.connect()
            cutoff = now - self.default_ttl_s if self.default_ttl_s > 0 else float("-inf")
            while True:
                rows = conn.execute(
                    "SELECT image_uuid FROM image_owners WHERE expires_at <= ? "
                    "UNION SELECT image_uuid FROM image_owners WHERE expires_at IS NULL AND created_at <= ? LIMIT 500",
                    (now, cutoff),
                ).fetchall()
                if not rows:
                    break
                for (image_uuid,) in rows:
                    removed += self._remove(image_uuid)
                conn.executemany("DELETE FROM image_owners WHERE image_uuid=?", [(r[0],) for r in rows])
        if unowned and self.default_ttl_s > 0:
            cutoff = now - self.default_ttl_s
            for entry in os.scandir(self.root):
                match = _NAME_RE.match(entry.name)
                if match is None or entry.stat().st_mtime > cutoff:
                    continue
                if self.db is not None and self.db.connect().execute(
                    "SELECT 1 FROM image_owners WHERE image_uuid=?", (match["uuid"],)
                ).fetchone() is not None:
                    continue  # it has a row: the row's expiry decides
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    pass
        return removed

    @staticmethod
    def mime_for(path: Path) -> str:
        return EXT_MIME.get(path.suffix.lstrip("."), "application/octet-stream")
