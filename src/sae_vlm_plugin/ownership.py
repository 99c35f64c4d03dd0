"""One run at a time per output directory.

A run that writes a directory (an activation cache, a training run, a dashboard) holds an
exclusive ``flock`` on the directory itself while it works; a second run on the same directory
is refused at once instead of mixing its files with the first one's. The operating system
releases the lock when the process ends, however it ends (``kill -9`` included), so a lock never
outlives its run, and nothing is written into the directory for it.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class DirectoryInUseError(ValueError):
    """Another live run holds the directory."""


@contextmanager
def owned_directory(directory: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold ``directory`` (created if missing) for this run; ``DirectoryInUseError`` if another
    run holds it. ``what`` names the kind of run in the message (``"extraction"``). A directory
    created here and still empty at the end is removed again: a run refused before it wrote
    anything leaves no trace."""
    path = Path(directory)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryInUseError(
                f"{path} is in use by another {what} that is still running; wait for it to "
                "finish, or choose another directory"
            ) from None
        try:
            yield path
        finally:
            if created and not any(path.iterdir()):
                path.rmdir()
    finally:
        os.close(handle)  # releases the lock
