"""Fitted K/V weights -> GGUF tensors (llama.cpp layout and type) and their pop.* metadata."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np

from pop_local.format import keys

from .kv_fit import FittedKV, llama_permute_k

__all__ = ["fitted_kv_tensors", "encode_tensor"]


def _writable():
    from gguf import GGMLQuantizationType as T

    return (T.F32, T.F16, T.BF16, T.Q8_0, T.Q5_1, T.Q5_0, T.Q4_1, T.Q4_0)




def encode_tensor(w: np.ndarray, qtype) -> np.ndarray:
    """w (out x in, float32) as the bytes or values GGUFWriter stores for `qtype`."""
    from gguf import GGMLQuantizationType as T, quants

    if qtype == T.F32:
        return np.ascontiguousarray(w, dtype=np.float32)
    if qtype == T.F16:
        return np.ascontiguousarray(w, dtype=np.float16)
    return quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qtype)


def fitted_kv_tensors(src: str, meta, skip: Sequence[int], fit: FittedKV,
                      qtype=None) -> Tuple[Dict[str, Tuple[np.ndarray, Any]], Dict[str, Any]]:
    """Tensors to add ({name: (data, type)}) and the pop.* keys that describe them.

    qtype None ("auto"): each projection gets the type of the layer's own projection when the gguf
    package can write it, else Q8_0 (K-quants need rows that are multiples of 256 and a quantizer
    the gguf package does not have). A layer whose fit did not beat its own projection on held-out
    samples keeps the own projection and gets no tensor.
    """
    from gguf import GGMLQuantizationType as T

    from pop_local.format.gguf_file import read_gguf
    from pop_local.format.metadata import read_header

    from .arch import ARCHITECTURES

    header = read_header(src)
    n_head_kv = header.get(f"{meta.architecture}.attention.head_count_kv")
    n_head_kv = n_head_kv[0] if isinstance(n_head_kv, list) else n_head_kv
    permute = any(s.permute_k for s in ARCHITECTURES.values() if s.gguf_arch == meta.architecture)
    own_types = {t.name: t.tensor_type for t in read_gguf(src).tensors}
    writable = _writable()

    tensors: Dict[str, Tuple[np.ndarray, Any]] = {}
    names = {"k": [], "v": []}
    for il in skip:
        for kv in ("k", "v"):
            if not np.isfinite(fit.lam_alpha[il][kv]):
                names[kv].append(f"blk.{il}.attn_{kv}.weight")
                continue
            w = fit.weights[il][kv]
            if kv == "k" and permute:
                w = llama_permute_k(w, int(n_head_kv))
            target = qtype or own_types.get(f"blk.{il}.attn_{kv}.weight", T.Q8_0)
            if target not in writable:
                target = T.Q8_0
            try:
                data = encode_tensor(w, target)
            except Exception:  # a row length the block size does not divide
                target = T.F16
                data = encode_tensor(w, target)
            name = keys.fitted_tensor_name(il, kv)
            tensors[name] = (data, target)
            names[kv].append(name)

    def arr(d: Dict[int, Dict[str, float]], kv: str):
        return [float(d[il][kv]) for il in skip]

    extra = {
        keys.KV_METHOD: "fitted",
        keys.KV_K_TENSORS: names["k"],
        keys.KV_V_TENSORS: names["v"],
        keys.KV_FIT_ALPHA_K: arr(fit.lam_alpha, "k"),
        keys.KV_FIT_ALPHA_V: arr(fit.lam_alpha, "v"),
        keys.KV_FIT_ERR_OWN_K: arr(fit.rel_error_own, "k"),
        keys.KV_FIT_ERR_OWN_V: arr(fit.rel_error_own, "v"),
        keys.KV_FIT_ERR_K: arr(fit.rel_error_fitted, "k"),
        keys.KV_FIT_ERR_V: arr(fit.rel_error_fitted, "v"),
        keys.KV_FIT_ROWS: [int(fit.rows["fit"]), int(fit.rows["held_out"])],
    }
    return tensors, extra
