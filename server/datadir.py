"""Which database an admin command works on, said out loud.

``wisp keys|sources|teams|usage`` act on a data dir's ``wisp.db``: the one
``--data-dir`` names, else ``WISP_DATA_DIR``, else the default.  Each says on
stderr which one it used.  Commands that only read refuse a folder with no
database (a mistyped or forgotten ``--data-dir`` would otherwise show an empty
new one); commands that write create it, and say they did.
"""

from __future__ import annotations

import sys
from pathlib import Path

from engine.registry.db import Database
from server.config import ServerConfig


def admin_database(arg: str | None, *, create: bool) -> Database:
    data_dir = Path(arg) if arg else ServerConfig.from_env().data_dir
    path = data_dir / "wisp.db"
    if not path.exists():
        if not create:
            raise SystemExit(f"wisp: no wisp database in {data_dir}: give --data-dir the folder `wisp serve` uses "
                             "(or set WISP_DATA_DIR)")
        print(f"wisp: data dir {data_dir} (a new database)", file=sys.stderr)
    else:
        print(f"wisp: data dir {data_dir}", file=sys.stderr)
    return Database(path)
