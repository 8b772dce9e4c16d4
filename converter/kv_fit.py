"""Fitted K/V projections for skipped layers: closed-form ridge regression, no training.

POP computes a skipped layer's K and V with the layer's own projections W0 from the hidden state the
pruned prefill has, which never went through the skipped layers before it. For each skipped layer
this module fits

    W = argmin ||X W - Y||^2 + lam ||W - W0||^2  =  (X^T X + lam I)^-1 (X^T Y + lam W0)

with X the layer's normed input in the pruned pass and Y the K (before RoPE and any K norm, bias
removed) or V the full model computes at the same positions. Only sufficient statistics are kept
(X^T X, X^T Y, sum Y^2), in float64, separately for the fit samples and the held-out samples that
choose lam. The result has the shape of the original projection: inference costs nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["KVStats", "collect_kv_stats", "fit_kv", "fit_layer", "FittedKV", "LAMBDA_GRID", "llama_permute_k"]

# lam = alpha * mean(diag(X^T X)): scale-free ridge strengths tried on the held-out samples
LAMBDA_GRID = (1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 100.0)
# a fitted projection is stored only if it cuts the held-out error by at least 1% (the first layer
# of a contiguous skipped block sees its true input, so its own projection is already exact)
MIN_GAIN = 0.99
# the ridge strength used is this multiple of the one with the least held-out error. The held-out
# samples are calibration text, like the fit's; on other text a projection pulled harder towards the
# layer's own mostly does better (16 samples, text the converter never saw, 512-token contexts; KL vs
# full): Gemma-3-270M 11-17 story 0.052 -> 0.047, licence text 0.049 -> 0.054; SmolLM2-135M 17-29
# story 0.101 -> 0.096, licence text 0.197 -> 0.159; x100 loses the gain. It also makes the
# converter's held-out KL a fair prediction of other text (Gemma 0.031 predicted vs 0.052 measured at
# x1; 0.046 vs 0.047 at x10).
ROBUST_RIDGE = 10.0


@dataclass
class _Moments:
    xtx: np.ndarray
    xty: Dict[str, np.ndarray]
    yy: Dict[str, float]
    rows: int = 0

    @classmethod
    def empty(cls, d_in: int, d_k: int, d_v: int) -> "_Moments":
        return cls(np.zeros((d_in, d_in)), {"k": np.zeros((d_in, d_k)), "v": np.zeros((d_in, d_v))}, {"k": 0.0, "v": 0.0})

    def add(self, x: np.ndarray, y: Dict[str, np.ndarray]) -> None:
        self.xtx += x.T @ x
        for kv in ("k", "v"):
            self.xty[kv] += x.T @ y[kv]
            self.yy[kv] += float((y[kv] ** 2).sum())
        self.rows += x.shape[0]

    def error(self, w: np.ndarray, kv: str) -> float:
        """sum ||X W - Y||^2 from the moments alone."""
        return float((w * (self.xtx @ w)).sum() - 2 * (w * self.xty[kv]).sum() + self.yy[kv])


@dataclass
class KVStats:
    """Per skipped layer: moments of the fit samples and of the held-out samples, and W0 (in x out)."""
    layers: List[int]
    fit: Dict[int, _Moments]
    held_out: Dict[int, _Moments]
    w0: Dict[int, Dict[str, np.ndarray]]


@dataclass
class FittedKV:
    """Fitted weights (HF layout, out x in, float32) and what the fit achieved on held-out samples."""
    weights: Dict[int, Dict[str, np.ndarray]]
    lam_alpha: Dict[int, Dict[str, float]]
    rel_error_own: Dict[int, Dict[str, float]]     # held-out ||X W0 - Y||^2 / ||Y||^2
    rel_error_fitted: Dict[int, Dict[str, float]]  # same with the fitted W (fit samples only)
    rows: Dict[str, int] = field(default_factory=dict)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def collect_kv_stats(model, spec, n_layer: int, skip: Sequence[int], sequences: Sequence[Sequence[int]],
                     held_out_every: int = 4, progress: Optional[Callable[[int], None]] = None) -> KVStats:
    """Two forward passes per sequence: the full model (targets Y) and the pruned prefill (inputs X).

    The pruned pass gates the skipped layers' attention and FFN branches to zero at every position,
    which is what POP's prefill does; each skipped layer still runs its projections on the residual
    it receives, and that input (after the layer's norm) is X. The last position of a sequence is
    left out: POP runs it at full depth. Every `held_out_every`-th sequence goes to the held-out set.
    """
    import torch

    from .importance import VirtualGates

    skip = sorted(skip)
    layers = _get(model, spec.layers)
    proj = {il: {kv: _get(layers[il], getattr(spec, f"{kv}_proj")) for kv in ("k", "v")} for il in skip}
    w0 = {il: {kv: proj[il][kv].weight.detach().double().numpy().T.copy() for kv in ("k", "v")} for il in skip}
    bias = {il: {kv: (proj[il][kv].bias.detach().double().numpy() if proj[il][kv].bias is not None else 0.0)
                 for kv in ("k", "v")} for il in skip}
    d_in = next(iter(w0.values()))["k"].shape[0]
    fit = {il: _Moments.empty(d_in, w0[il]["k"].shape[1], w0[il]["v"].shape[1]) for il in skip}
    held = {il: _Moments.empty(d_in, w0[il]["k"].shape[1], w0[il]["v"].shape[1]) for il in skip}

    captured: Dict[int, Dict[str, torch.Tensor]] = {}
    mode = {"pass": "full"}

    def hook(il: int, kv: str):
        def fn(_module, inputs, output):
            slot = captured.setdefault(il, {})
            if mode["pass"] == "full":
                slot[kv] = output[0].detach()
            elif kv == "k":  # X is the same input for both projections
                slot["x"] = inputs[0][0].detach()
        return fn

    gates = VirtualGates(model, spec, n_layer)
    with torch.no_grad():
        gates.prefill[list(skip)] = 0.0
    handles = [proj[il][kv].register_forward_hook(hook(il, kv)) for il in skip for kv in ("k", "v")]
    try:
        with torch.no_grad():
            for i, seq in enumerate(sequences):
                if len(seq) < 3:
                    continue
                ids = torch.tensor([list(seq)], dtype=torch.long)
                captured.clear()
                mode["pass"] = "full"
                model(input_ids=ids, use_cache=False)
                mode["pass"] = "pruned"
                gates.boundary = len(seq)  # every position is a prefill position
                with gates.attached():
                    model(input_ids=ids, use_cache=False)
                target = held if i % held_out_every == held_out_every - 1 else fit
                for il in skip:
                    c = captured[il]
                    x = c["x"][:-1].double().numpy()
                    y = {kv: c[kv][:-1].double().numpy() - bias[il][kv] for kv in ("k", "v")}
                    target[il].add(x, y)
                if progress:
                    progress(i + 1)
    finally:
        for h in handles:
            h.remove()
    return KVStats(list(skip), fit, held, w0)


def _solve(m: _Moments, w0: np.ndarray, kv: str, alpha: float) -> np.ndarray:
    lam = alpha * float(np.mean(np.diag(m.xtx)))
    a = m.xtx + lam * np.eye(m.xtx.shape[0])
    return np.linalg.solve(a, m.xty[kv] + lam * w0)


def fit_layer(fit: _Moments, held_out: _Moments, w0: Dict[str, np.ndarray], grid: Sequence[float] = LAMBDA_GRID,
              exact: bool = False) -> Dict[str, Tuple[np.ndarray, float, float, float]]:
    """One layer's K and V: {kv: (weight out x in float32, alpha (inf = own kept), held-out relative
    error of the own weights, of the result)}. lam is chosen per projection on `held_out` (ROBUST_RIDGE
    times the held-out minimum), then the projection is refit on both sets. One eigendecomposition
    of the fit set's X^T X serves both projections and every lam:
    W(lam) = Q diag(1 / (L + lam)) Q^T (X^T Y + lam W0)."""
    if held_out.rows == 0 or fit.rows == 0:
        raise ValueError("K/V fitting needs both fit and held-out samples (use more calibration samples)")
    out: Dict[str, Tuple[np.ndarray, float, float, float]] = {}
    eig = None
    scale = float(np.mean(np.diag(fit.xtx)))
    for kv in ("k", "v"):
        own_err = held_out.error(w0[kv], kv)
        own_rel = own_err / held_out.yy[kv]
        # the moment formula leaves ~1e-12 of rounding on an exact projection
        if exact or own_err <= 1e-9 * held_out.yy[kv]:
            out[kv] = (w0[kv].T.astype(np.float32), float("inf"), own_rel, own_rel)
            continue
        if eig is None:
            eig = np.linalg.eigh(fit.xtx)
        values, q = eig
        qb, qw = q.T @ fit.xty[kv], q.T @ w0[kv]
        errors = {}
        for a in grid:  # ascending; the held-out error has one minimum over the grid: stop once past it
            lam = a * scale
            errors[a] = held_out.error(q @ ((qb + lam * qw) / (values + lam)[:, None]), kv)
            done = list(errors.values())
            if len(done) >= 3 and done[-1] > done[-2] > done[-3]:
                break
        best = min(errors, key=errors.get) * ROBUST_RIDGE
        lam = best * scale
        error = held_out.error(q @ ((qb + lam * qw) / (values + lam)[:, None]), kv)
        if error >= MIN_GAIN * own_err:  # no real gain on held-out text: keep the own
            out[kv] = (w0[kv].T.astype(np.float32), float("inf"), own_rel, own_rel)
            continue
        both = _Moments(fit.xtx + held_out.xtx, {k: fit.xty[k] + held_out.xty[k] for k in ("k", "v")},
                        {k: fit.yy[k] + held_out.yy[k] for k in ("k", "v")}, fit.rows + held_out.rows)
        out[kv] = (_solve(both, w0[kv], kv, best).T.astype(np.float32), best, own_rel, error / held_out.yy[kv])
    return out


def fit_kv(stats: KVStats, grid: Sequence[float] = LAMBDA_GRID) -> FittedKV:
    """Choose lam per layer and projection on the held-out samples, then refit on all samples."""
    weights, alphas, own, fitted = {}, {}, {}, {}
    for il in stats.layers:
        weights[il], alphas[il], own[il], fitted[il] = {}, {}, {}, {}
        result = fit_layer(stats.fit[il], stats.held_out[il], stats.w0[il], grid)
        for kv, (w, alpha, err_own, err_fit) in result.items():
            weights[il][kv], alphas[il][kv], own[il][kv], fitted[il][kv] = w, alpha, err_own, err_fit
    rows = {"fit": stats.fit[stats.layers[0]].rows, "held_out": stats.held_out[stats.layers[0]].rows}
    return FittedKV(weights, alphas, own, fitted, rows)


def llama_permute_k(w: np.ndarray, n_head_kv: int) -> np.ndarray:
    """HF K projection (out x in) -> the row order llama.cpp's llama GGUFs use (RoPE pairs interleaved)."""
    out = w.shape[0]
    return w.reshape(n_head_kv, 2, out // n_head_kv // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
