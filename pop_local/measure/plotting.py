"""matplotlib, loaded on demand, and figure saving that never leaves a half-written PNG."""

from __future__ import annotations

from pop_local.errors import PopError

__all__ = ["pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot with a file-only backend; PopError naming the package when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PopError("`plot` needs matplotlib: pip install matplotlib") from None
    return plt


def save_figure(fig, path: str) -> None:
    """Write `fig` as a PNG, atomically (pop_local.format.atomic); the figure is closed either way."""
    from pop_local.format.atomic import atomic_path

    plt = pyplot()
    try:
        with atomic_path(path, ".png") as tmp:
            fig.tight_layout()
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
