"""Crash points for fault-injection tests: `VISIONLOOP_FAILPOINT=<name>[,<name>...]` makes the process SIGKILL itself there.

Names: `before_fsync`, `after_seal`, `after_ship_before_delete`, and `enospc_on_write` (raises
ENOSPC at the spool write instead of killing). With `VISIONLOOP_FAILPOINT_MARK=<dir>` each name
fires once (a marker file `<dir>/<name>` is created first) and only the first name without a
marker is armed, so a respawned worker moves on to the next point. Read once at import: free
when unset.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

_NAMES = tuple(n.strip() for n in os.environ.get("VISIONLOOP_FAILPOINT", "").split(",") if n.strip())
_MARK = os.environ.get("VISIONLOOP_FAILPOINT_MARK", "")


def _armed(name: str) -> bool:
    if name not in _NAMES:
        return False
    if not _MARK:
        return True
    for candidate in _NAMES:  # the first name that has not fired yet is the armed one
        if not (Path(_MARK) / candidate).exists():
            break
    else:
        return False
    if candidate != name:
        return False
    try:
        os.close(os.open(Path(_MARK) / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:  # another thread fired it first
        return False


def hit(name: str) -> None:
    """Crash (or fail a write) here when the environment asks for it."""
    if not _NAMES or not _armed(name):
        return
    if name == "enospc_on_write":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    os.kill(os.getpid(), signal.SIGKILL)
