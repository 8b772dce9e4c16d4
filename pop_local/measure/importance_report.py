"""Importance profiles stored in a POP GGUF, as terminal lines or as a PNG figure."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from pop_local.errors import PopError
from pop_local.format import keys
from pop_local.format.metadata import PopMetadata

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
    """Both importance profiles against layer (skipped layers shaded) and, for a budgeted file, the
    quality/speed frontier beside them; written to a temp file and renamed."""
    profiles = importance_profiles(meta)
    if profiles is None and meta.frontier is None:
        raise PopError("no importance profiles in this file (converted with `calibrate=False`)")
    from .plotting import pyplot, save_figure

    plt = pyplot()
    panels = (profiles is not None) + (meta.frontier is not None)
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    axes = list(axes[0])
    if meta.frontier is not None:
        _frontier_panel(axes.pop(), meta)
    if profiles is not None:
        ax = axes.pop()
        pre, dec = profiles
        ax.plot(range(len(pre)), pre, marker="o", label="prefill")
        ax.plot(range(len(dec)), dec, marker="o", label="decode")
        for i in meta.skip_layers:
            ax.axvspan(i - 0.5, i + 0.5, color="grey", alpha=0.15)
        ax.set_xlabel("layer")
        ax.set_ylabel("importance E[(dL/dg)^2]")
        ax.set_title(f"{meta.architecture}, {meta.n_layer} layers (shaded: skipped in prefill)")
        ax.legend()
    save_figure(fig, path)


def _frontier_panel(ax, meta: PopMetadata) -> None:
    """Held-out KL against ideal speedup at 2048 tokens, own and fitted K/V; chosen and paper marked."""
    from pop_local.format.frontier import paper_skip_set

    f = meta.frontier
    speed = [r.speedup_2048 for r in f.rows]
    ax.plot(speed, [r.kl_own for r in f.rows], marker="o", label="own K/V")
    ax.plot(speed, [r.kl_fitted for r in f.rows], marker="s", label="fitted K/V")
    choice = f.choice
    kl = choice.kl_fitted if meta.extra.get(keys.KV_METHOD) == "fitted" else choice.kl_own
    ax.scatter([choice.speedup_2048], [kl], s=180, facecolors="none", edgecolors="red", linewidths=2,
               label=f"chosen ({f.budget})", zorder=3)
    paper = next((r for r in f.rows if r.skip == paper_skip_set(meta.n_layer)), None)
    if paper is not None:
        ax.scatter([paper.speedup_2048], [paper.kl_own], marker="x", s=90, color="black",
                   label="paper (last 1/3, own K/V)", zorder=3)
    ax.set_xlabel("ideal prefill speedup at 2048 tokens")
    ax.set_ylabel("held-out KL(full || POP) per token")
    ax.set_title("quality against speed (one point per skip set)")
    ax.legend()
