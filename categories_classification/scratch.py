"""Files a machine keeps between commands (the model cache, Spark's scratch folder): removed once unused for a week.

A file is "used" when its modification time is recent: what a command reads again, it marks
(:func:`mark_used`); logs are written, so they age from their last line.
"""
import fnmatch
import logging
import os
import time
from pathlib import Path

LOGGER = logging.getLogger(__name__)
MAX_AGE_SECONDS = 7 * 24 * 3600.0


def mark_used(path: Path) -> None:
    """Keep ``path`` from the next :func:`prune` (a read-only file is left to age)."""
    try:
        os.utime(path)
    except OSError as exc:
        LOGGER.debug("%s not marked used (%s)", path, exc)


def prune(folder: Path, pattern: str = "*", max_age: float = MAX_AGE_SECONDS) -> None:
    """Remove the files of ``folder`` named like ``pattern`` (not its subfolders) unused for ``max_age`` seconds."""
    limit = time.time() - max_age
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return  # no folder yet, or not readable: nothing of ours to remove
    for entry in entries:
        try:
            if (fnmatch.fnmatchcase(entry.name, pattern) and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < limit):
                os.unlink(entry.path)
        except OSError as exc:  # another process pruned it first, or a read-only folder
            LOGGER.debug("%s not pruned (%s)", entry.path, exc)
