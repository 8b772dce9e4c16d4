"""Writing files so that a failure or an interruption never leaves a partial file behind.

Everything pop-local writes (converted models, JSON results, figures) goes to a temporary file in
the destination's folder and is renamed over the destination only once complete; on any error,
Ctrl-C or SIGTERM included, the temporary file is removed and the destination is untouched. The file
is flushed to disk before the rename and the folder after it, so a power cut leaves the old file or
the new one, never an empty one.
(native/patch_upstream.py keeps its own few lines: it runs inside the isolated build, stdlib only.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

from pop_local.errors import PopError

__all__ = ["atomic_path", "write_json", "TEMP_PREFIX"]

TEMP_PREFIX = ".pop-"  # temporary files start with this (hidden; the tests look for leftovers by it)


def _read_umask() -> int:
    """The process umask, read once at import (reading it means setting it for a moment, which would
    race with other threads creating files if done at every write)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _fsync(path: str, directory: bool = False) -> None:
    """Flush `path` (a file, or a folder's entries) to disk; a folder that cannot be opened (Windows) is skipped."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not directory:  # the file's data must be on disk before it replaces anything
            raise


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".part") -> Iterator[str]:
    """A temporary path next to `path` for the block to write; flushed to disk and renamed onto `path`
    when the block ends normally (then the folder is flushed), removed otherwise. The file gets the
    permissions a plain open() would give."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=suffix)
    except OSError as e:
        raise PopError(f"{path}: cannot write ({e.strerror})") from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(folder, directory=True)
    except OSError as e:
        raise PopError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, data: Any) -> None:
    """`data` as indented JSON at `path`, atomically."""
    with atomic_path(path, ".json") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)
