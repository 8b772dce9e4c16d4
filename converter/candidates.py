"""The quality/speed frontier of candidate skip sets, measured during calibration.

For each candidate the converter measures, on held-out calibration samples that no fit uses,
KL(full || POP) and top-1 agreement over the response tokens, with POP as the runtime runs it:
prompt positions before the last pruned (skipped layers add nothing to the residual but still
write K/V from their input), the last prompt token and the response at full depth. Once with the
layers' own K/V projections, once with K/V fitted for that set (converter/kv_fit.py).

What is shared instead of recomputed:
- The full-model pass is the importance pass (every gate at one): its logits are the reference and
  its activations feed every fit. Layers below a candidate's first skipped layer s run exactly as
  in the full model, so a candidate's POP pass starts at s from the full pass's hidden state h_s
  (the layers below are replayed, not run).
- Tail blocks: every skipped layer l of the block starting at s sees x = norm_l(h_s). With an RMS
  norm, x = z_s * w_l (z_s = h_s / rms(h_s)), so X^T X and X^T Y of every (s, l) pair come from
  z_s^T z_s and z_s^T Y_l of the full pass: no pruned pass per candidate for the fit.
- Other sets (--strategy score) get one pruned pass per fit sample and candidate, starting at s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .kv_fit import LAMBDA_GRID, FittedKV, _Moments, fit_layer

__all__ = ["Candidate", "FrontierCapture", "candidate_sets", "SPEEDUP_TOKENS"]

SPEEDUP_TOKENS = (512, 2048)  # prompt lengths of the FLOP-ideal speedups in the frontier


@dataclass
class Candidate:
    """One skip set and what it costs: held-out KL/top-1 with own and fitted K/V, ideal speedups
    (the budget reads them as pop_local.format.frontier.FrontierRow)."""
    skip: Tuple[int, ...]
    kl_own: float
    top1_own: float
    kl_fitted: float
    top1_fitted: float
    speedup: Dict[int, float] = field(default_factory=dict)  # prompt tokens -> FLOP-ideal speedup
    fitted: Optional[FittedKV] = None  # its fitted projections (only the chosen set's go into the file)


def candidate_sets(n_layer: int, max_ratio: float, strategy: str = "tail",
                   prefill_importance: Optional[Sequence[float]] = None) -> List[Tuple[int, ...]]:
    """k = 1 .. floor(max_ratio * n_layer) layers: tail blocks, or (score) the k least important."""
    from pop_local.format.frontier import max_skipped

    k_max = max_skipped(n_layer, max_ratio)
    if strategy == "tail":
        return [tuple(range(n_layer - k, n_layer)) for k in range(1, k_max + 1)]
    order = sorted(range(n_layer), key=lambda i: (prefill_importance[i], -i))
    return [tuple(sorted(order[:k])) for k in range(1, k_max + 1)]


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _log_softmax(x):
    import torch

    return torch.log_softmax(x.double(), dim=-1)


@dataclass
class _EvalSample:
    ids: object           # torch.LongTensor [1, T]
    n_prompt: int
    hidden: Dict[int, object]  # start layer -> hidden state entering it (full pass) [1, T, d]
    ref: object           # full-model log-probs at the response-predicting positions [R, V] (float64)


class _Replay:
    """Layers below `start` replaced by stand-ins returning the full pass's hidden state entering it."""

    @staticmethod
    @contextlib.contextmanager
    def from_layer(layers, start: int, hidden) -> Iterator[None]:
        import torch

        class Stand(torch.nn.Module):
            def __init__(self, out):
                super().__init__()
                self.out = out

            def forward(self, hidden_states, *args, **kwargs):
                return hidden_states if self.out is None else self.out

        originals = [layers[i] for i in range(start)]
        try:
            for i in range(start):
                layers[i] = Stand(hidden if i == start - 1 else None)
            yield
        finally:
            for i, layer in enumerate(originals):
                layers[i] = layer


def rms_norm_weight(norm, h, layer: int, tolerance: float = 1e-3, to=lambda x: x) -> np.ndarray:
    """norm's weight w (float64), checked on h: norm(h) = h / rms(h) * w, which lets the tail fits
    share one z = h / rms(h) per block start. `to` moves a CPU tensor where the norm runs."""
    import torch

    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    with torch.no_grad():
        w = norm(to(torch.ones(1, h.shape[-1], dtype=h.dtype)))[0].float().cpu().double() * (1 + eps) ** 0.5
        direct = norm(to(h)).float().cpu().double()
    x = h.double()
    z = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    err = float((z * w - direct).norm() / direct.norm().clamp_min(1e-30))
    if err > tolerance:
        raise RuntimeError(f"layer {layer}: its input norm is not an RMS norm with a weight (relative mismatch "
                           f"{err:.2g}); the tail fits cannot share moments")
    return w.numpy()


class FrontierCapture:
    """Collects what the frontier needs during the importance pass, then measures every candidate.

    Use: `with capture.attached(): layer_importance(..., observe=capture.observe)`, then
    `capture.measure(candidates, shape)`. Samples are split by index: `eval_idx` (KL/top-1 only, never fitted
    on), `lam_idx` (choose each fit's ridge strength), the rest (fit).
    """

    def __init__(self, model, spec, n_layer: int, sequences, prompt_lengths, eval_idx: Sequence[int],
                 lam_idx: Sequence[int], tail_k_max: Optional[int]):
        """tail_k_max: candidates are tail blocks of up to that many layers; None: any sets (chosen
        after the importance pass), so every layer's activations are kept."""
        self.model, self.spec, self.n_layer = model, spec, n_layer
        self.layers = _get(model, spec.layers)
        self.seqs, self.lens = sequences, prompt_lengths
        self.eval_idx, self.lam_idx = set(eval_idx), set(lam_idx)
        self.tail = tail_k_max is not None
        first = n_layer - tail_k_max if self.tail else 0
        self.starts = list(range(first, n_layer))
        self.proj_layers = list(range(first, n_layer))
        self.proj = {il: {kv: _get(self.layers[il], getattr(spec, f"{kv}_proj")) for kv in ("k", "v")}
                     for il in self.proj_layers}
        self.w0 = {il: {kv: self.proj[il][kv].weight.detach().double().numpy().T.copy() for kv in ("k", "v")}
                   for il in self.proj_layers}
        self.bias = {il: {kv: (self.proj[il][kv].bias.detach().double().numpy() if self.proj[il][kv].bias is not None
                               else 0.0) for kv in ("k", "v")} for il in self.proj_layers}
        self._pending: Dict[str, Dict[int, object]] = {"h": {}, "k": {}, "v": {}}
        self.eval_samples: List[_EvalSample] = []
        # tail: per sample set ("fit"/"lam"): z^T z and z^T Y per start, Y^T Y per (layer, kv)
        self._zz: Dict[str, Dict[int, np.ndarray]] = {"fit": {}, "lam": {}}
        self._zy: Dict[str, Dict[int, np.ndarray]] = {"fit": {}, "lam": {}}  # per start: z^T [Y_l ...]
        self._cols: Dict[int, Dict[Tuple[int, str], slice]] = {}              # (layer, kv) -> its columns
        self._yy: Dict[str, Dict[Tuple[int, str], float]] = {"fit": {}, "lam": {}}
        self._rows = {"fit": 0, "lam": 0}
        self._norm_w: Dict[int, np.ndarray] = {}
        # other sets: the full pass's targets per fit sample, for pruned passes later
        self._targets: Dict[int, Dict[Tuple[int, str], np.ndarray]] = {}

    # --- during the importance pass ----------------------------------------------------------------

    @contextlib.contextmanager
    def attached(self) -> Iterator["FrontierCapture"]:
        handles = []

        def pre_hook(start):
            def fn(_module, args, kwargs):
                h = args[0] if args else kwargs["hidden_states"]
                self._pending["h"][start] = h.detach()
            return fn

        def proj_hook(il, kv):
            def fn(_module, _inputs, output):
                self._pending[kv][il] = output.detach()
            return fn

        try:
            for s in self.starts:
                handles.append(self.layers[s].register_forward_pre_hook(pre_hook(s), with_kwargs=True))
            for il in self.proj_layers:
                for kv in ("k", "v"):
                    handles.append(self.proj[il][kv].register_forward_hook(proj_hook(il, kv)))
            yield self
        finally:
            for h in handles:
                h.remove()

    def observe(self, i: int, logits, offset: int = 0) -> None:
        """The full pass of sample i has run: keep what the frontier needs from it (`logits` start at
        position `offset` of the sequence)."""
        import torch

        pending, self._pending = self._pending, {"h": {}, "k": {}, "v": {}}
        n_prompt = self.lens[i]
        if i in self.eval_idx:
            ids = torch.tensor([list(self.seqs[i])], dtype=torch.long)
            ref = _log_softmax(logits[0, n_prompt - 1 - offset:-1])
            self.eval_samples.append(_EvalSample(ids, n_prompt, pending["h"], ref))
            return
        # fit rows: every position but the last (POP runs that one in full), as in kv_fit
        y = {(il, kv): pending[kv][il][0, :-1].double().numpy() - self.bias[il][kv]
             for il in self.proj_layers for kv in ("k", "v")}
        if not self.tail:
            self._targets[i] = y
            return
        part = "lam" if i in self.lam_idx else "fit"
        for s in self.starts:
            z = self._z(s, pending["h"][s][0, :-1])
            zz, zy = self._zz[part], self._zy[part]
            zz[s] = zz.get(s, 0) + z.T @ z
            deeper = [(il, kv) for il in self.proj_layers if il > s for kv in ("k", "v")]
            if deeper:  # one product for every deeper layer's K and V: z^T [Y_l ...]
                zy[s] = zy.get(s, 0) + z.T @ np.concatenate([y[key] for key in deeper], axis=1)
                if s not in self._cols:
                    widths = np.cumsum([0] + [y[key].shape[1] for key in deeper])
                    self._cols[s] = {key: slice(int(a), int(b)) for key, a, b in zip(deeper, widths[:-1], widths[1:])}
        for (il, kv), yv in y.items():
            self._yy[part][(il, kv)] = self._yy[part].get((il, kv), 0.0) + float((yv ** 2).sum())
        self._rows[part] += y[(self.proj_layers[0], "k")].shape[0]

    def full_passes(self, indices: Sequence[int]) -> None:
        """Full-model forward passes (no gradients) of samples the importance pass did not run."""
        import torch

        for i in indices:
            if len(self.seqs[i]) <= self.lens[i] or self.lens[i] < 2:
                continue  # no response to measure on
            ids = torch.tensor([list(self.seqs[i])], dtype=torch.long)
            with torch.no_grad():
                logits = self.model(input_ids=ids, use_cache=False,
                                    logits_to_keep=ids.shape[1] - self.lens[i] + 1).logits
            # observe() slices from the last prompt token: hand it logits aligned with the whole sequence
            self.observe(i, logits, offset=self.lens[i] - 1)

    def _z(self, start: int, h) -> np.ndarray:
        """h / rms(h) (float64), checked once against each skipped layer's own norm."""
        import torch

        norm0 = _get(self.layers[start], self.spec.input_norm)
        eps = float(getattr(norm0, "variance_epsilon", getattr(norm0, "eps", 1e-6)))
        h64 = h.double()
        z = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + eps)
        for il in self.proj_layers:
            if il >= start and il not in self._norm_w:
                self._norm_w[il] = rms_norm_weight(_get(self.layers[il], self.spec.input_norm), h, il)
        return z.numpy()

    # --- after it --------------------------------------------------------------------------------

    def _tail_moments(self, start: int, il: int, part: str) -> _Moments:
        w = self._norm_w[il]
        xtx = self._zz[part][start] * w[:, None] * w[None, :]
        xty = {kv: w[:, None] * self._zy[part][start][:, self._cols[start][(il, kv)]] for kv in ("k", "v")}
        return _Moments(xtx, xty, {kv: self._yy[part][(il, kv)] for kv in ("k", "v")}, self._rows[part])

    def _pruned_moments(self, skip: Tuple[int, ...]) -> Dict[str, Dict[int, _Moments]]:
        """Moments of each skipped layer from pruned passes over the fit samples (non-tail sets)."""
        import torch

        from .importance import VirtualGates

        gates = VirtualGates(self.model, self.spec, self.n_layer)
        with torch.no_grad():
            gates.prefill[list(skip)] = 0.0
        d = self.w0[skip[0]]["k"].shape[0]
        out = {part: {il: _Moments.empty(d, self.w0[il]["k"].shape[1], self.w0[il]["v"].shape[1]) for il in skip}
               for part in ("fit", "lam")}
        xs: Dict[int, object] = {}
        # B023 below is a false positive: the outer lambda binds il for each hook
        handles = [self.proj[il]["k"].register_forward_hook(
            (lambda il: lambda _m, inputs, _o: xs.__setitem__(il, inputs[0].detach()))(il))  # noqa: B023
            for il in skip]
        try:
            for i, y in self._targets.items():
                ids = torch.tensor([list(self.seqs[i])], dtype=torch.long)
                gates.boundary = ids.shape[1]  # every position pruned, as in kv_fit
                with torch.no_grad(), gates.attached():
                    self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
                part = "lam" if i in self.lam_idx else "fit"
                for il in skip:
                    out[part][il].add(xs[il][0, :-1].double().numpy(), {kv: y[(il, kv)] for kv in ("k", "v")})
        finally:
            for hd in handles:
                hd.remove()
        return out

    def fit_candidate(self, skip: Tuple[int, ...], grid: Sequence[float] = LAMBDA_GRID) -> FittedKV:
        """Fitted K/V for `skip` (the first skipped layer keeps its own: its input is exact)."""
        moments = None if self.tail else self._pruned_moments(skip)
        weights, alphas, own, fitted = {}, {}, {}, {}
        for il in skip:
            weights[il], alphas[il], own[il], fitted[il] = {}, {}, {}, {}
            if self.tail:
                f = self._tail_moments(skip[0], il, "fit") if il > skip[0] else None
                h = self._tail_moments(skip[0], il, "lam") if il > skip[0] else None
            else:
                f, h = moments["fit"][il], moments["lam"][il]
            if f is None:  # the block's first layer sees its true input: its own projection is exact
                result = {kv: (self.w0[il][kv].T.astype(np.float32), float("inf"), 0.0, 0.0) for kv in ("k", "v")}
            else:
                result = fit_layer(f, h, self.w0[il], grid)
            for kv, (w, alpha, err_own, err_fit) in result.items():
                weights[il][kv], alphas[il][kv], own[il][kv], fitted[il][kv] = w, alpha, err_own, err_fit
        rows = {"fit": self._rows["fit"], "held_out": self._rows["lam"]}
        return FittedKV(weights, alphas, own, fitted, rows)

    def _pop_logprobs(self, sample: _EvalSample, skip: Tuple[int, ...], fitted: Optional[FittedKV]) -> List[object]:
        """Log-probs of the response positions under POP with `skip`: [own K/V] or, with `fitted`,
        [own, fitted], the two as one batch of two (batch row 1 gets the fitted projections)."""
        import torch

        from .importance import VirtualGates

        gates = VirtualGates(self.model, self.spec, self.n_layer)
        with torch.no_grad():
            gates.prefill[list(skip)] = 0.0
        gates.boundary = sample.n_prompt - 1
        batch = 1 if fitted is None else 2
        handles = []
        if fitted is not None:
            for il in skip:
                for kv in ("k", "v"):
                    if np.isfinite(fitted.lam_alpha[il][kv]):
                        handles.append(self.proj[il][kv].register_forward_hook(
                            self._fitted_hook(torch.from_numpy(fitted.weights[il][kv]), self.proj[il][kv].bias,
                                              gates.boundary)))
        start = skip[0]
        ids = sample.ids.expand(batch, -1)
        hidden = sample.hidden[start].expand(batch, -1, -1)
        n_keep = ids.shape[1] - (sample.n_prompt - 1)
        try:
            with torch.no_grad(), gates.attached(), _Replay.from_layer(self.layers, start, hidden):
                logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=n_keep).logits
        finally:
            for h in handles:
                h.remove()
        return [_log_softmax(logits[b, :-1]) for b in range(batch)]

    @staticmethod
    def _fitted_hook(weight, bias, boundary: int):
        """Batch row 1's pruned positions: K or V from the fitted projection instead of the own."""
        def fn(_module, inputs, output):
            x = inputs[0][1, :boundary]
            fitted = x @ weight.to(x.dtype).T
            if bias is not None:
                fitted = fitted + bias
            out = output.clone()
            out[1, :boundary] = fitted
            return out
        return fn

    def measure(self, candidates: Sequence[Tuple[int, ...]], shape,
                progress: Optional[Callable[[int, int], None]] = None) -> List[Candidate]:
        """Every candidate's held-out KL and top-1 (own and fitted K/V) and ideal speedups."""
        from pop_local.measure.flops import ideal_speedup

        if not self.eval_samples:
            raise ValueError("no held-out sample with a response to measure the frontier on")
        result = []
        total = len(candidates)
        for n, skip in enumerate(tuple(c) for c in candidates):
            if self.tail and skip != tuple(range(skip[0], self.n_layer)) or skip[0] < self.starts[0]:
                raise ValueError(f"candidate {skip} was not captured (tail blocks from layer {self.starts[0]})")
            fitted = self.fit_candidate(skip)
            stats = {"own": ([], []), "fitted": ([], [])}
            any_fitted = any(np.isfinite(a) for d in fitted.lam_alpha.values() for a in d.values())
            for sample in self.eval_samples:
                top_ref = sample.ref.argmax(-1)
                p_ref = sample.ref.exp()
                # nothing fitted (every layer kept its own): the fitted variant is the own one
                lps = self._pop_logprobs(sample, skip, fitted if any_fitted else None)
                lp_own, lp_fit = lps[0], lps[-1]
                for mode, lp in (("own", lp_own), ("fitted", lp_fit)):
                    stats[mode][0].extend((p_ref * (sample.ref - lp)).sum(-1).tolist())
                    stats[mode][1].extend((lp.argmax(-1) == top_ref).tolist())
            cand = Candidate(skip, float(np.mean(stats["own"][0])), float(np.mean(stats["own"][1])),
                             float(np.mean(stats["fitted"][0])), float(np.mean(stats["fitted"][1])),
                             {t: float(ideal_speedup(shape, t, skip)) for t in SPEEDUP_TOKENS}, fitted)
            result.append(cand)
            if progress:
                progress(n + 1, total)
        return result

    @property
    def eval_tokens(self) -> int:
        return sum(int(s.ref.shape[0]) for s in self.eval_samples)
