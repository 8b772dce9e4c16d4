"""Where a measurement comes from: the commit, the machine, the date and the command, recorded in every
results file so that a table made from it can say so (benchmarks/tables.py)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Dict, Optional

__all__ = ["provenance", "machine"]

_SOURCE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _commit() -> str:
    """The source checkout's commit (+changes when files differ from it); the version outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", _SOURCE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            raise OSError(head.stderr)
        dirty = subprocess.run(["git", "-C", _SOURCE, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from pop_local import __version__

        return f"pop-local {__version__}"


def machine() -> str:
    """e.g. "x86_64, 2 cores, 24 GB, Linux 6.1"."""
    try:
        mem = f", {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GB"
    except (ValueError, OSError, AttributeError):  # not POSIX
        mem = ""
    return f"{platform.machine()}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}"


def provenance(command: Optional[str] = None) -> Dict[str, str]:
    """{"commit", "machine", "date", "command"} for a results file; `command` defaults to this process's."""
    if command is None:
        name = os.path.basename(sys.argv[0])
        command = " ".join(["pop-local" if name in ("pop-local", "__main__.py", "cli.py") else name] + sys.argv[1:])
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {"commit": _commit(), "machine": machine(), "date": date, "command": command}
