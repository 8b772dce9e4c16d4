"""matplotlib, loaded on demand, and figure saving that never leaves a half-written PNG."""

from __future__ import annotations

import os

from .errors import PopError

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot with a file-only backend; PopError naming the package when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PopError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def save_figure(fig, path: str) -> None:
    """Write `fig` as a PNG through a temporary file and a rename; the figure is closed either way."""
    plt = pyplot()
    tmp = path + ".part.png"
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    except OSError as e:
        raise PopError(f"{path}: cannot write ({e.strerror})") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
