"""Calibration one decoder layer at a time, straight from the GGUF (memory bounded by the file).

The in-memory path (calibrate.py with importance.py, frontier.py, kv_fit.py) holds the whole model
dequantized in float32 and runs sample by sample. This one turns the loops around, as GPTQ-style
tools and llm-compressor's sequential pipeline do: every layer is dequantized once per sweep and
runs all samples, and the hidden states between layers go to a scratch folder on disk.

1. Forward sweep: the full model on every sample; each layer's input (all samples) is written to
   disk, and for the tail layers the K/V projections' outputs and own weights (what the fits need).
2. Output head, in row chunks: the held-out samples' reference log-probs, and the gradient of each
   training sample's response loss with respect to the last hidden state.
3. Backward sweep, last layer first: each layer re-runs its saved input with the virtual gates
   (importance.py's definition) and back-propagates the gradient from above; (dL/dg)^2 per sample
   and stage is the importance, the input gradient goes down to the next layer.
4. K/V fits for tail blocks, from moments of the saved inputs (frontier.py's z-trick: one RMS
   normalisation per block start serves every layer of the block).
5. Frontier sweep over the tail layers: per candidate start s, the held-out samples' prompt
   positions keep the hidden state h_s (skipped layers add nothing) and only write K/V (own, and
   fitted in a second batch row); the last prompt token and the response run every layer at full
   depth against that cache. Only those few positions are computed, not the whole prompt.

The results are the in-memory path's (same samples, splits, definitions); the test compares them.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .candidates import FrontierCapture, rms_norm_weight
from .importance import Importance, gate_branch
from .kv_fit import LAMBDA_GRID, FittedKV, _Moments, fit_layer, fit_layer_rows

__all__ = ["StreamedCalibration", "release_memory", "keep_large_blocks_mapped"]

Progress = Optional[Callable[[int, int], None]]


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class _Levels:
    """Per-layer arrays of every sample's rows ([sum of T_i, width] float32), one .npy file each."""

    def __init__(self, folder: str, name: str, lengths: Sequence[int]):
        self.folder, self.name = folder, name
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def _path(self, level: int) -> str:
        return os.path.join(self.folder, f"{self.name}{level}.npy")

    def put(self, level: int, rows: Sequence[np.ndarray]) -> None:
        np.save(self._path(level), np.concatenate(rows, axis=0).astype(np.float32, copy=False))

    def get(self, level: int, samples: Sequence[int]) -> Dict[int, np.ndarray]:
        """{sample: its rows}, copied out of a memory map (the map is gone when this returns)."""
        data = np.load(self._path(level), mmap_mode="r")
        out = {i: np.array(data[self.offsets[i]:self.offsets[i + 1]]) for i in samples}
        del data
        return out


class _DiskWeights(Mapping):
    """{layer: {"k"/"v": weight (out x in, float32)}} of one candidate, read from disk when asked."""

    def __init__(self, paths: Dict[int, str], keep: object):
        self._paths, self._keep = paths, keep  # keep: the scratch folder lives as long as this

    def __getitem__(self, il: int) -> Dict[str, np.ndarray]:
        with np.load(self._paths[il]) as f:
            return {"k": f["k"], "v": f["v"]}

    def __iter__(self):
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


class _FillCache:
    """Stands in for a transformers Cache: remembers the K/V the attention computes (post-RoPE)."""

    def __init__(self, prefix=None):
        self.prefix = prefix
        self.kv = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        import torch

        if self.prefix is not None:
            key_states = torch.cat([self.prefix[0], key_states], dim=-2)
            value_states = torch.cat([self.prefix[1], value_states], dim=-2)
        self.kv = (key_states, value_states)
        return key_states, value_states


def _slice_kwargs(kwargs: Dict[str, object], rows: slice, cols: slice, cache) -> Dict[str, object]:
    """A layer's recorded arguments for query positions `rows` attending to key positions `cols`."""
    import torch

    out = {}
    for key, value in kwargs.items():
        if key == "attention_mask":
            if value is None:
                raise RuntimeError("the decoder layers got no attention mask (eager attention expected)")
            out[key] = value[..., rows, cols]
        elif key == "position_embeddings":
            out[key] = tuple(t[:, rows] for t in value)
        elif key == "position_ids":
            out[key] = value[..., rows]
        elif key == "cache_position":
            out[key] = value[rows]
        elif key in ("cache", "past_key_values", "past_key_value"):
            out[key] = cache
        elif key == "use_cache":
            out[key] = cache is not None
        elif isinstance(value, torch.Tensor):
            raise RuntimeError(f"decoder layer argument {key!r} is a tensor the streamed calibration cannot slice")
        else:
            out[key] = value
    if cache is not None and not any(k in out for k in ("cache", "past_key_values", "past_key_value")):
        out["cache"] = cache
    return out


@contextlib.contextmanager
def _gated(layer, spec, gate_prefill, gate_decode, boundary: int) -> Iterator[None]:
    """importance.VirtualGates for one layer: both branch outputs times the stage's gate."""
    def hook(_module, _inputs, output):
        return gate_branch(output, boundary, gate_prefill, gate_decode)

    handles = [_get(layer, branch).register_forward_hook(hook) for branch in (spec.attn_branch, spec.ffn_branch)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class StreamedCalibration:
    """Importance, K/V fits and the tail frontier from a GGUFModel, one layer in memory at a time.

    `sequences[i]` = prompt + sampled response, `prompt_lengths[i]` its prompt; `eval_idx` are held
    out (frontier only), `lam_idx` choose each fit's ridge strength, the other training samples fit.
    `fit_from`: the first layer whose K/V statistics are kept (None: no fits, no frontier).
    """

    def __init__(self, gm, spec, sequences, prompt_lengths, eval_idx: Sequence[int] = (),
                 lam_idx: Sequence[int] = (), fit_from: Optional[int] = None, workdir: Optional[str] = None,
                 device: str = "cpu", dtype: str = "float32"):
        import torch

        self.gm, self.spec = gm, spec
        self.device = torch.device(device)
        self.dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        gm.to(self.device, self.dtype)
        self.n_layer = len(gm.layers)
        self.seqs = [list(s) for s in sequences]
        self.lens = list(prompt_lengths)
        self.eval_idx = [i for i in eval_idx if self._usable(i)]
        held = set(eval_idx)
        self.train = [i for i in range(len(self.seqs)) if i not in held]
        self.lam_idx = set(lam_idx)
        self.fit_from = fit_from
        self._tmp = tempfile.TemporaryDirectory(prefix="pop-local-calib-", dir=workdir)
        self.dir = self._tmp.name
        lengths = [len(s) for s in self.seqs]
        self.hidden = _Levels(self.dir, "h", lengths)
        fit_lengths = [len(s) - 1 if i in self.train else 0 for i, s in enumerate(self.seqs)]
        self.kv_out = {kv: _Levels(self.dir, kv, fit_lengths) for kv in ("k", "v")}
        self.norm_w: Dict[int, np.ndarray] = {}
        self.norm_eps: Dict[int, float] = {}
        self.refs: Dict[int, np.ndarray] = {}  # held-out sample -> reference log-probs [R, V] float32
        self._grad_top: Dict[int, object] = {}
        self._kwargs: Dict[int, List[Dict[str, object]]] = {}

    def _usable(self, i: int) -> bool:
        return len(self.seqs[i]) > self.lens[i] >= 2

    def _kw(self, i: int, il: int):
        if i not in self._kwargs:
            self._kwargs[i] = [self._moved(kw) for kw in self.gm.layer_kwargs(len(self.seqs[i]))]
        return self._kwargs[i][il]

    def _moved(self, kwargs: Dict[str, object]) -> Dict[str, object]:
        import torch

        def move(v):
            if isinstance(v, torch.Tensor):
                return v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            if isinstance(v, tuple):
                return tuple(move(x) for x in v)
            return v
        return {k: move(v) for k, v in kwargs.items()}

    def _dev(self, x):
        """A CPU tensor or array onto the compute device and dtype."""
        import torch

        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        return x.to(self.device, self.dtype)

    # --- 1. forward sweep ------------------------------------------------------------------------

    def forward(self, progress: Progress = None) -> None:
        import torch

        everyone = list(range(len(self.seqs)))
        h = {i: self.gm.embed(self.seqs[i])[0] for i in everyone}
        self.hidden.put(0, [h[i].numpy() for i in everyone])
        for il in range(self.n_layer):
            with self.gm.layer(il) as layer, torch.no_grad():
                capture = self.fit_from is not None and il >= self.fit_from
                outs: Dict[str, Dict[int, np.ndarray]] = {"k": {}, "v": {}}
                current = {"i": None}
                handles = []
                if capture:
                    self._keep_layer_weights(il, layer, h[self.train[0]])
                    for kv in ("k", "v"):
                        proj = _get(layer, getattr(self.spec, f"{kv}_proj"))
                        bias = proj.bias

                        def hook(_m, _inp, out, kv=kv, bias=bias):
                            i = current["i"]  # noqa: B023 - hooks are removed before the next layer
                            if i in self.train:
                                y = out[0, :-1] - (bias if bias is not None else 0)
                                outs[kv][i] = y.float().cpu().numpy()  # noqa: B023 - hooks are removed before the next layer
                        handles.append(proj.register_forward_hook(hook))
                try:
                    for i in everyone:
                        current["i"] = i
                        out = layer(self._dev(h[i][None]), **self._kw(i, il))
                        h[i] = (out[0] if isinstance(out, tuple) else out)[0].float().cpu()
                finally:
                    for hd in handles:
                        hd.remove()
            self.hidden.put(il + 1, [h[i].numpy() for i in everyone])
            if capture:
                for kv in ("k", "v"):
                    width = outs[kv][self.train[0]].shape[1]
                    self.kv_out[kv].put(il, [outs[kv].get(i, np.zeros((0, width), np.float32)) for i in everyone])
            if progress:
                progress(il + 1, self.n_layer)
        self._head(h)

    def _keep_layer_weights(self, il: int, layer, h_sample) -> None:
        """Layer il's own K/V weights (in x out, float64) to disk, and its input norm's weight,
        checked to be an RMS norm with a weight (what the shared z-moments need)."""
        import torch

        norm = _get(layer, self.spec.input_norm)
        self.norm_w[il] = rms_norm_weight(norm, h_sample[:-1], il, 1e-3 if self.dtype == torch.float32 else 2e-2,
                                          self._dev)
        self.norm_eps[il] = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        w0 = {}
        for kv in ("k", "v"):
            proj = _get(layer, getattr(self.spec, f"{kv}_proj"))
            w0[kv] = proj.weight.detach().float().cpu().double().numpy().T
        np.savez(os.path.join(self.dir, f"w0_{il}.npz"), **w0)

    def _w0(self, il: int) -> Dict[str, np.ndarray]:
        with np.load(os.path.join(self.dir, f"w0_{il}.npz")) as f:
            return {"k": f["k"], "v": f["v"]}

    # --- 2. output head --------------------------------------------------------------------------

    def _logits(self, z, w):
        logits = z @ w.T
        cap = self.gm.softcap
        return torch_softcap(logits, cap) if cap else logits

    def _head(self, h: Dict[int, object]) -> None:
        """Reference log-probs of the held-out samples and dL/dh_L of the training samples."""
        import torch

        rows = {i: slice(self.lens[i] - 1, len(self.seqs[i]) - 1) for i in range(len(self.seqs)) if self._usable(i)}
        train = [i for i in self.train if i in rows]
        with torch.no_grad():
            z = {i: self.gm.final_norm(self._dev(h[i][None]))[0, rows[i]].float() for i in rows}
        order = list(rows)
        zall = torch.cat([z[i] for i in order])
        starts = np.concatenate([[0], np.cumsum([z[i].shape[0] for i in order])])
        span = {i: slice(int(starts[n]), int(starts[n + 1])) for n, i in enumerate(order)}
        vocab = self.gm.vocab_size
        keep_rows = torch.cat([torch.arange(span[i].start, span[i].stop) for i in self.eval_idx]) \
            if self.eval_idx else torch.zeros(0, dtype=torch.long)
        kept = torch.empty(len(keep_rows), vocab)  # the held-out rows' logits, then their log-probs (in place)
        lse = torch.full((zall.shape[0],), -float("inf"), dtype=torch.float64)
        for a, w in self.gm.head_chunks():
            with torch.no_grad():
                lc = self._logits(zall, w).cpu()  # float32 on the device, the rest on the CPU in float64
            lse = torch.logaddexp(lse, torch.logsumexp(lc.double(), dim=-1))
            kept[:, a:a + w.shape[0]] = lc[keep_rows]
        off = 0
        for i in self.eval_idx:
            n = span[i].stop - span[i].start
            rows_i = kept[off:off + n]
            rows_i -= lse[span[i]][:, None].float()  # float32, as stored; one copy of the rows, not two
            self.refs[i] = rows_i.numpy()
            off += n
        if not train:
            return
        targets = torch.cat([torch.tensor(self.seqs[i][self.lens[i]:], dtype=torch.long) for i in train])
        train_rows = torch.cat([torch.arange(span[i].start, span[i].stop) for i in train])
        scale = torch.cat([torch.full((span[i].stop - span[i].start,), 1.0 / (span[i].stop - span[i].start))
                           for i in train])
        zt, lse_t = zall[train_rows.to(zall.device)], lse[train_rows]
        gz = torch.zeros_like(zt)
        for a, w in self.gm.head_chunks():
            with torch.no_grad():
                raw = (zt @ w.T).cpu()
                lc = torch_softcap(raw, self.gm.softcap) if self.gm.softcap else raw
                g = torch.exp(lc.double() - lse_t[:, None])
                inside = (targets >= a) & (targets < a + w.shape[0])
                g[inside.nonzero()[:, 0], (targets[inside] - a)] -= 1.0
                g *= scale[:, None].double()
                if self.gm.softcap:
                    g *= 1 - torch.tanh(raw.double() / self.gm.softcap) ** 2
                gz += g.float().to(w.device) @ w
        off = 0
        for i in train:
            n = span[i].stop - span[i].start
            x = self._dev(h[i]).requires_grad_(True)
            zi = self.gm.final_norm(x[None])[0, rows[i]]
            (gx,) = torch.autograd.grad(zi, [x], grad_outputs=gz[off:off + n].to(zi.dtype))
            self._grad_top[i] = gx.float().cpu()
            off += n

    # --- 3. backward sweep: importance ------------------------------------------------------------

    def importance(self, progress: Progress = None) -> Importance:
        import torch

        train = [i for i in self.train if self._usable(i)]
        if not train:
            raise ValueError("no usable calibration sample (each needs a prompt of 2+ tokens and a response)")
        grad = dict(self._grad_top)
        acc_p = np.zeros(self.n_layer)
        acc_d = np.zeros(self.n_layer)
        for step, il in enumerate(reversed(range(self.n_layer))):
            inputs = self.hidden.get(il, train)
            with self.gm.layer(il) as layer:
                for i in train:
                    x = self._dev(inputs[i][None]).requires_grad_(True)
                    gp = torch.ones((), device=self.device, dtype=self.dtype, requires_grad=True)
                    gd = torch.ones((), device=self.device, dtype=self.dtype, requires_grad=True)
                    with _gated(layer, self.spec, gp, gd, self.lens[i] - 1):
                        out = layer(x, **self._kw(i, il))
                    out = out[0] if isinstance(out, tuple) else out
                    gx, ggp, ggd = torch.autograd.grad(out, [x, gp, gd], grad_outputs=self._dev(grad[i][None]))
                    acc_p[il] += float(ggp) ** 2
                    acc_d[il] += float(ggd) ** 2
                    grad[i] = gx[0].detach().float().cpu()
            if progress:
                progress(step + 1, self.n_layer)
        self._grad_top.clear()
        return Importance((acc_p / len(train)).tolist(), (acc_d / len(train)).tolist(), len(train))

    # --- 4. K/V fits for tail blocks ---------------------------------------------------------------

    def _parts(self) -> Dict[str, List[int]]:
        fit = [i for i in self.train if i not in self.lam_idx and self._usable(i)]
        lam = [i for i in self.train if i in self.lam_idx and self._usable(i)]
        return {"fit": fit, "lam": lam}

    def fit_blocks(self, starts: Sequence[int], end: int, grid: Sequence[float] = LAMBDA_GRID,
                   progress: Progress = None) -> Dict[int, FittedKV]:
        """FittedKV of every block starts[j] .. end-1 (the block's first layer keeps its own)."""
        if self.fit_from is None or min(starts) < self.fit_from:
            raise ValueError("K/V statistics were not kept for these layers")
        parts = self._parts()

        def targets(il: int) -> Dict[str, Dict[str, np.ndarray]]:  # part -> kv -> layer il's K/V rows
            got = {kv: self.kv_out[kv].get(il, parts["fit"] + parts["lam"]) for kv in ("k", "v")}
            return {p: {kv: np.concatenate([got[kv][i] for i in idx]).astype(np.float64) for kv in ("k", "v")}
                    for p, idx in parts.items()}

        result: Dict[int, FittedKV] = {}
        done, total = 0, sum(end - s for s in starts)
        for s in starts:
            hs = self.hidden.get(s, parts["fit"] + parts["lam"])
            eps = self.norm_eps[s]
            zz, zs = {}, {}
            for p, idx in parts.items():
                x = np.concatenate([hs[i][:-1] for i in idx]).astype(np.float64)
                zs[p] = x / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
            dual = zs["fit"].shape[0] < zs["fit"].shape[1]
            if not dual:
                zz = {p: z.T @ z for p, z in zs.items()}
            del hs
            alphas, own, fitted = {}, {}, {}
            paths: Dict[int, str] = {}
            for il in range(s, end):
                w0 = self._w0(il)
                if il == s:  # sees its true input: its own projection is exact
                    res = {kv: (w0[kv].T.astype(np.float32), float("inf"), 0.0, 0.0) for kv in ("k", "v")}
                else:
                    w, y = self.norm_w[il], targets(il)
                    if dual:  # fewer fit rows than inputs: the rows themselves (kv_fit._Dual)
                        res = fit_layer_rows(zs["fit"] * w, y["fit"], zs["lam"] * w, y["lam"], w0, grid)
                    else:  # one z^T z per block start serves every layer: X^T X = w z^T z w
                        mom = {p: _Moments(zz[p] * w[:, None] * w[None, :],
                                           {kv: w[:, None] * (zs[p].T @ y[p][kv]) for kv in ("k", "v")},
                                           {kv: float((y[p][kv] ** 2).sum()) for kv in ("k", "v")},
                                           zs[p].shape[0]) for p in parts}
                        res = fit_layer(mom["fit"], mom["lam"], w0, grid)
                path = os.path.join(self.dir, f"fit_{s}_{il}.npz")
                np.savez(path, k=res["k"][0], v=res["v"][0])
                paths[il] = path
                alphas[il] = {kv: res[kv][1] for kv in ("k", "v")}
                own[il] = {kv: res[kv][2] for kv in ("k", "v")}
                fitted[il] = {kv: res[kv][3] for kv in ("k", "v")}
                done += 1
                if progress:
                    progress(done, total)
            rows = {"fit": zs["fit"].shape[0], "held_out": zs["lam"].shape[0]}
            result[s] = FittedKV(_DiskWeights(paths, self._tmp), alphas, own, fitted, rows)
        return result

    # --- 5. frontier sweep ---------------------------------------------------------------------------

    def frontier(self, starts: Sequence[int], fits: Dict[int, FittedKV], progress: Progress = None):
        """{start: (KL own, top-1 own, KL fitted, top-1 fitted)} on the held-out samples for the
        tail blocks starts[j] .. n_layer-1."""
        import torch

        if not self.eval_idx:
            raise ValueError("no held-out sample with a response to measure the frontier on")
        attn_path = self.spec.k_proj.rsplit(".", 1)[0]
        first = min(starts)
        state: Dict[Tuple[int, int], object] = {}
        for step, il in enumerate(range(first, self.n_layer)):
            here = self.hidden.get(il, self.eval_idx)
            with self.gm.layer(il) as layer, torch.no_grad():
                attn, norm = _get(layer, attn_path), _get(layer, self.spec.input_norm)
                for s in (s for s in starts if s <= il):
                    prefix_src = here if s == il else self.hidden.get(s, self.eval_idx)
                    fw = fits[s].weights[il] if il > s else None
                    for e in self.eval_idx:
                        p, t = self.lens[e] - 1, len(self.seqs[e])
                        if s == il:
                            state[(s, e)] = self._dev(here[e][p:])[None].expand(2, -1, -1).contiguous()
                        kw = self._kw(e, il)
                        fill = _FillCache()
                        x = norm(self._dev(prefix_src[e][:p])[None]).expand(2, -1, -1)
                        with self._fitted_row(layer, fits[s], il, fw, p):
                            attn(hidden_states=x, **_slice_kwargs(kw, slice(0, p), slice(0, p), fill))
                        ext = _FillCache(fill.kv)
                        out = layer(state[(s, e)], **_slice_kwargs(kw, slice(p, t), slice(0, t), ext))
                        state[(s, e)] = out[0] if isinstance(out, tuple) else out
                del prefix_src
            if progress:
                progress(step + 1, self.n_layer - first)
        return self._score(starts, state)

    @contextlib.contextmanager
    def _fitted_row(self, layer, fit: FittedKV, il: int, weights, n_prefix: int) -> Iterator[None]:
        """Batch row 1 gets layer il's fitted K and V (where the fit kept one)."""
        handles = []
        if weights is not None:
            for kv in ("k", "v"):
                if np.isfinite(fit.lam_alpha[il][kv]):
                    proj = _get(layer, getattr(self.spec, f"{kv}_proj"))
                    hook = FrontierCapture._fitted_hook(self._dev(weights[kv]), proj.bias, n_prefix)
                    handles.append(proj.register_forward_hook(hook))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _score(self, starts, state):
        import torch

        keys_ = [(s, e) for s in starts for e in self.eval_idx]
        with torch.no_grad():
            z = {k: self.gm.final_norm(state[k])[:, :-1].float() for k in keys_}  # [2, R, d]
        # the reference log-probs stay float32 (held-out rows x vocab); each head chunk's slice is taken
        # to float64 when used, never the whole (Gemma's 262k vocab: 3.2 GB more at 64 samples)
        refs = {e: torch.from_numpy(self.refs[e]) for e in self.eval_idx}
        neg_ent = {e: torch.zeros(refs[e].shape[0], dtype=torch.float64) for e in self.eval_idx}
        top_ref = {e: refs[e].argmax(-1) for e in self.eval_idx}
        lse = {k: torch.full(z[k].shape[:2], -float("inf"), dtype=torch.float64) for k in keys_}
        cross = {k: torch.zeros(z[k].shape[:2], dtype=torch.float64) for k in keys_}
        best = {k: torch.full(z[k].shape[:2], -float("inf"), dtype=torch.float64) for k in keys_}
        arg = {k: torch.zeros(z[k].shape[:2], dtype=torch.long) for k in keys_}
        for a, w in self.gm.head_chunks():
            n = w.shape[0]
            for e in self.eval_idx:
                ref = refs[e][:, a:a + n].double()
                p_ref = ref.exp()
                neg_ent[e] += (p_ref * ref).sum(-1)
                for s in starts:
                    k = (s, e)
                    lc = self._logits(z[k], w).double().cpu()  # [2, R, n]
                    lse[k] = torch.logaddexp(lse[k], torch.logsumexp(lc, -1))
                    cross[k] += (lc * p_ref[None]).sum(-1)
                    m, idx = lc.max(-1)
                    better = m > best[k]
                    best[k] = torch.where(better, m, best[k])
                    arg[k] = torch.where(better, idx + a, arg[k])
        out = {}
        for s in starts:
            kl = {0: [], 1: []}
            top = {0: [], 1: []}
            for e in self.eval_idx:
                k = (s, e)
                for row in (0, 1):
                    # KL >= 0; summed from three terms it can come out at -1e-8 when POP is exact
                    kl[row].extend((neg_ent[e] - cross[k][row] + lse[k][row]).clamp_min(0.0).tolist())
                    top[row].extend((arg[k][row] == top_ref[e]).tolist())
            out[s] = (float(np.mean(kl[0])), float(np.mean(top[0])), float(np.mean(kl[1])), float(np.mean(top[1])))
        return out

    @property
    def eval_tokens(self) -> int:
        return int(sum(self.refs[e].shape[0] for e in self.eval_idx))

    def close(self) -> None:
        self._kwargs.clear()
        self.refs.clear()


def keep_large_blocks_mapped() -> None:
    """Serve allocations of 1 MiB and more by mmap, given back to the system when freed. glibc does so by
    default but raises that threshold to the largest block freed; after that the head loops' 10-100 MB
    temporaries come from the heap and fragment it (Gemma-3-270M's frontier scoring: +2 GB; a loop of
    such temporaries alone: 8.8 GB against 0.3 GB). A fixed threshold turns the raising off."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to set
        pass


def release_memory() -> None:
    """Give freed heap back to the system between stages: glibc keeps it otherwise, and the next
    stage's peak would stack on the last one's (SmolLM2: 1.4 GB retained after the frontier)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def torch_softcap(logits, cap: float):
    import torch

    return torch.tanh(logits / cap) * cap
