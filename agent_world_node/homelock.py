"""One node per home: an exclusive lock on ``HOME/data/node.lock`` held while a node runs.

``lock_home`` takes a ``flock`` on the file (released by the kernel when the process ends, however
it ends, so a killed node never leaves a stale lock) and writes the process id into it, so a second
``awnode start`` on the same home refuses at once, naming the running node's pid, before it opens
the store or loads the world.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

LOCK_FILE = "node.lock"


class HomeInUseError(RuntimeError):
    """Another process holds the home's lock; the message names its pid and what to do."""


def lock_home(data_dir: Path) -> IO[str]:
    """Take the exclusive lock of the home whose data directory is ``data_dir`` (created if
    missing) and return the open lock file: keep it open for as long as the node runs.

    Raises ``HomeInUseError`` when another process holds it, ``OSError`` when the file cannot be
    created or written."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / LOCK_FILE
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the process's life
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "unknown"
        handle.close()
        raise HomeInUseError(
            f"the home {data_dir.parent} is in use by a running node (pid {pid}); stop it first "
            f"(kill -TERM {pid}), or start this node with another --home") from None
    try:  # the pid is for the message above; the lock holds without it (e.g. on a full disk)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError:
        pass
    return handle
