"""Waiting on a thread with a deadline, for tests where a hang is the failure."""

import threading


def finishes(fn, seconds=300):
    """fn() runs to its end on a thread within `seconds` (a held model lock would block it)."""
    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the next request waited for a lock an abandoned stream kept"
    return out["value"]
