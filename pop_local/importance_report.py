"""Importance profiles stored in a POP GGUF, as terminal lines or as a PNG figure."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from . import keys
from .errors import PopError
from .metadata import PopMetadata

__all__ = ["importance_profiles", "importance_chart", "save_importance_plot"]

_WIDTH = 40


def importance_profiles(meta: PopMetadata) -> Optional[Tuple[Sequence[float], Sequence[float]]]:
    """(prefill, decode) importance per layer, or None for a file converted without calibration."""
    pre, dec = meta.extra.get(keys.IMPORTANCE_PREFILL), meta.extra.get(keys.IMPORTANCE_DECODE)
    return (pre, dec) if pre and dec else None


def _bars(values: Sequence[float]) -> List[str]:
    top = max(values) or 1.0
    return ["#" * max(0, int(round(_WIDTH * v / top))) for v in values]


def importance_chart(meta: PopMetadata) -> List[str]:
    """Two bars per layer (prefill P, decode D), each profile scaled to its own maximum."""
    profiles = importance_profiles(meta)
    if profiles is None:
        return []
    pre, dec = profiles
    lines = ["layer  prefill importance (P) and decode importance (D), each scaled to its maximum"]
    for i, (p, d) in enumerate(zip(_bars(pre), _bars(dec))):
        mark = "skip" if i in meta.skip_layers else "    "
        lines.append(f"{i:5d} {mark} P {p:<{_WIDTH}} {pre[i]:.2e}")
        lines.append(f"           D {d:<{_WIDTH}} {dec[i]:.2e}")
    return lines


def save_importance_plot(meta: PopMetadata, path: str) -> None:
    """Both profiles against layer, skipped layers shaded; written to a temp file and renamed."""
    profiles = importance_profiles(meta)
    if profiles is None:
        raise PopError("no importance profiles in this file (converted with --no-calibrate)")
    from .plotting import pyplot, save_figure

    plt = pyplot()
    pre, dec = profiles
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(len(pre)), pre, marker="o", label="prefill")
    ax.plot(range(len(dec)), dec, marker="o", label="decode")
    for i in meta.skip_layers:
        ax.axvspan(i - 0.5, i + 0.5, color="grey", alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("importance E[(dL/dg)^2]")
    ax.set_title(f"{meta.architecture}, {meta.n_layer} layers (shaded: skipped in prefill)")
    ax.legend()
    save_figure(fig, path)
