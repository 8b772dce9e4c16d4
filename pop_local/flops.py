"""FLOP model of prefill with and without POP: the ideal speedup a skip set can give.

Counts multiply-accumulates of the per-token matrix products and of attention over the causal
prefix; norms, RoPE and the output head of the single boundary token are ignored (under 1%).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

__all__ = ["ModelShape", "model_shape", "prefill_macs", "ideal_speedup"]


@dataclass(frozen=True)
class ModelShape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int


def model_shape(path: str) -> ModelShape:
    """Shape of a GGUF model from its metadata."""
    from .metadata import read_header

    header = read_header(path)

    def get(key, default=None):
        v = header.get(key)
        if v is None:
            if default is None:
                raise KeyError(key)
            return default
        return v[0] if isinstance(v, list) else v  # per-layer arrays: the first layer's value

    arch = get("general.architecture")
    n_embd = get(f"{arch}.embedding_length")
    n_head = get(f"{arch}.attention.head_count")
    return ModelShape(
        n_layer=get(f"{arch}.block_count"),
        n_embd=n_embd,
        n_ff=get(f"{arch}.feed_forward_length"),
        n_head=n_head,
        n_head_kv=get(f"{arch}.attention.head_count_kv", n_head),
        head_dim=get(f"{arch}.attention.key_length", n_embd // n_head),
    )


def prefill_macs(shape: ModelShape, n_tokens: int, skip: Iterable[int] = ()) -> float:
    """Multiply-accumulates of a prefill of n_tokens, with `skip` layers reduced to their K/V projections."""
    s = shape
    d_q = s.n_head * s.head_dim
    d_kv = s.n_head_kv * s.head_dim
    kv_proj = 2 * s.n_embd * d_kv
    proj = s.n_embd * d_q * 2 + kv_proj               # Q, O, K, V
    ffn = 3 * s.n_embd * s.n_ff                       # gate, up, down
    attn = 2 * d_q * (n_tokens + 1) / 2               # QK^T and AV over the causal prefix, per token
    full_layer = n_tokens * (proj + ffn + attn)
    skipped = set(skip)
    return sum(n_tokens * kv_proj if il in skipped else full_layer for il in range(s.n_layer))


def ideal_speedup(shape: ModelShape, n_tokens: int, skip: Iterable[int]) -> float:
    """Prefill FLOP ratio full / POP (the last token runs in full either way and is not counted)."""
    return prefill_macs(shape, n_tokens) / prefill_macs(shape, n_tokens, skip)
