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

__all__ = ["KVStats", "collect_kv_stats", "fit_kv", "fit_layer", "fit_layer_rows", "FittedKV", "LAMBDA_GRID",
           "llama_permute_k"]

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
        return cls(np.zeros((d_in, d_in)), {"k": np.zeros((d_in, d_k)), "v": np.zeros((d_in, d_v))},
                   {"k": 0.0, "v": 0.0})

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


class _Primal:
    """Ridge towards W0 from moments: one eigendecomposition of the fit set's X^T X serves both
    projections and every lam: W(lam) = Q diag(1 / (L + lam)) Q^T (X^T Y + lam W0)."""

    def __init__(self, fit: _Moments, held_out: _Moments, w0: Dict[str, np.ndarray]):
        self.fit, self.held, self.w0 = fit, held_out, w0
        self.scale = float(np.mean(np.diag(fit.xtx)))
        self._eig = None
        self._proj: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    def own_error(self, kv: str) -> float:
        return self.held.error(self.w0[kv], kv)

    def held_out_yy(self, kv: str) -> float:
        return self.held.yy[kv]

    def _weights(self, kv: str, lam: float) -> np.ndarray:
        if self._eig is None:
            self._eig = np.linalg.eigh(self.fit.xtx)
        values, q = self._eig
        if kv not in self._proj:
            self._proj[kv] = (q.T @ self.fit.xty[kv], q.T @ self.w0[kv])
        qb, qw = self._proj[kv]
        return q @ ((qb + lam * qw) / (values + lam)[:, None])

    def held_out_error(self, kv: str, alpha: float) -> float:
        return self.held.error(self._weights(kv, alpha * self.scale), kv)

    def refit(self, kv: str, alpha: float) -> np.ndarray:
        both = _Moments(self.fit.xtx + self.held.xtx, {k: self.fit.xty[k] + self.held.xty[k] for k in ("k", "v")},
                        {k: self.fit.yy[k] + self.held.yy[k] for k in ("k", "v")}, self.fit.rows + self.held.rows)
        return _solve(both, self.w0[kv], kv, alpha)


class _Dual:
    """The same ridge from the rows themselves, for fewer rows than inputs (a wide model, few
    samples): W(lam) = W0 + X^T (X X^T + lam I)^-1 (Y - X W0), one n x n eigendecomposition instead
    of a d x d one (Llama-8B's d = 4096: 7 s each; n = 750 rows: 0.1 s). Same minimiser, same lam."""

    def __init__(self, xf: np.ndarray, yf: Dict[str, np.ndarray], xh: np.ndarray, yh: Dict[str, np.ndarray],
                 w0: Dict[str, np.ndarray]):
        self.xf, self.yf, self.xh, self.yh, self.w0 = xf, yf, xh, yh, w0
        d = xf.shape[1]
        self.scale = float((xf ** 2).sum()) / d  # mean(diag(X^T X))
        s, u = np.linalg.eigh(xf @ xf.T)
        self.s, self.u = np.clip(s, 0.0, None), u
        self.hu = (xh @ xf.T) @ u  # held-out rows against the fit rows, in the eigenbasis
        self._ur: Dict[str, np.ndarray] = {}

    def own_error(self, kv: str) -> float:
        return float(((self.xh @ self.w0[kv] - self.yh[kv]) ** 2).sum())

    def held_out_yy(self, kv: str) -> float:
        return float((self.yh[kv] ** 2).sum())

    def _ur_kv(self, kv: str) -> np.ndarray:
        if kv not in self._ur:
            self._ur[kv] = self.u.T @ (self.yf[kv] - self.xf @ self.w0[kv])
        return self._ur[kv]

    def held_out_error(self, kv: str, alpha: float) -> float:
        lam = alpha * self.scale
        pred = self.xh @ self.w0[kv] + self.hu @ (self._ur_kv(kv) / (self.s + lam)[:, None])
        return float(((pred - self.yh[kv]) ** 2).sum())

    def refit(self, kv: str, alpha: float) -> np.ndarray:
        x = np.concatenate([self.xf, self.xh])
        y = np.concatenate([self.yf[kv], self.yh[kv]])
        lam = alpha * float((x ** 2).sum()) / x.shape[1]
        g = x @ x.T
        g[np.diag_indices_from(g)] += lam
        return self.w0[kv] + x.T @ np.linalg.solve(g, y - x @ self.w0[kv])


def fit_layer(fit: _Moments, held_out: _Moments, w0: Dict[str, np.ndarray], grid: Sequence[float] = LAMBDA_GRID,
              exact: bool = False) -> Dict[str, Tuple[np.ndarray, float, float, float]]:
    """One layer's K and V: {kv: (weight out x in float32, alpha (inf = own kept), held-out relative
    error of the own weights, of the result)}. lam is chosen per projection on `held_out` (ROBUST_RIDGE
    times the held-out minimum), then the projection is refit on both sets."""
    if held_out.rows == 0 or fit.rows == 0:
        raise ValueError("K/V fitting needs both fit and held-out samples (use more calibration samples)")
    return _select(_Primal(fit, held_out, w0), w0, grid, exact)


def fit_layer_rows(xf: np.ndarray, yf: Dict[str, np.ndarray], xh: np.ndarray, yh: Dict[str, np.ndarray],
                   w0: Dict[str, np.ndarray], grid: Sequence[float] = LAMBDA_GRID):
    """fit_layer from the rows (X: inputs, Y: targets per projection) of the fit and held-out sets:
    the dual form when there are fewer fit rows than inputs, else the moments."""
    if len(xf) == 0 or len(xh) == 0:
        raise ValueError("K/V fitting needs both fit and held-out samples (use more calibration samples)")
    if xf.shape[0] < xf.shape[1]:
        return _select(_Dual(xf, yf, xh, yh, w0), w0, grid, False)
    moments = {}
    for part, (x, y) in (("fit", (xf, yf)), ("held", (xh, yh))):
        moments[part] = _Moments(x.T @ x, {kv: x.T @ y[kv] for kv in ("k", "v")},
                                 {kv: float((y[kv] ** 2).sum()) for kv in ("k", "v")}, x.shape[0])
    return fit_layer(moments["fit"], moments["held"], w0, grid)


def _select(problem, w0: Dict[str, np.ndarray], grid: Sequence[float], exact: bool):
    out: Dict[str, Tuple[np.ndarray, float, float, float]] = {}
    for kv in ("k", "v"):
        own_err = problem.own_error(kv)
        yy = problem.held_out_yy(kv)
        own_rel = own_err / yy
        # the moment formula leaves ~1e-12 of rounding on an exact projection
        if exact or own_err <= 1e-9 * yy:
            out[kv] = (w0[kv].T.astype(np.float32), float("inf"), own_rel, own_rel)
            continue
        errors = {}
        for a in grid:  # ascending; the held-out error has one minimum over the grid: stop once past it
            errors[a] = problem.held_out_error(kv, a)
            done = list(errors.values())
            if len(done) >= 3 and done[-1] > done[-2] > done[-3]:
                break
        best = min(errors, key=errors.get) * ROBUST_RIDGE
        error = problem.held_out_error(kv, best)
        if error >= MIN_GAIN * own_err:  # no real gain on held-out text: keep the own
            out[kv] = (w0[kv].T.astype(np.float32), float("inf"), own_rel, own_rel)
            continue
        out[kv] = (problem.refit(kv, best).T.astype(np.float32), best, own_rel, error / yy)
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
