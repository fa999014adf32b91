"""Give a long-lived thread its Python name in the operating system too.

Python 3.11 leaves every thread's OS name as the process's (``python``), so
``top -H``, ``ps -L``, ``/proc/PID/task/*/comm`` and ``bench/inference.py``'s
per-thread CPU split cannot tell the device thread from the write-behind
writer.  Linux keeps up to 15 bytes (``prctl(PR_SET_NAME)``); elsewhere this
does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

_PR_SET_NAME = 15
_libc: ctypes.CDLL | None = None


def name_os_thread(name: str | None = None) -> None:
    """Set the calling thread's OS name to ``name`` (default: its ``threading`` name), cut to 15 bytes; never raises."""
    global _libc
    if not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        text = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(text), 0, 0, 0)
    except (OSError, AttributeError):  # no libc to load, or no prctl: names are a convenience
        pass
