"""FLOP model of prefill with and without POP: the ideal speedup a skip set can give.

Counts multiply-accumulates of the per-token matrix products and of attention over the causal
prefix; norms, RoPE and the output head of the single boundary token are ignored (under 1%). A MoE
layer counts its router, the experts a token is routed to (expert_used_count of expert_count) and its
shared expert; layers the exact KV-sharing skip removes (`removed`) cost nothing.
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
    n_expert: int = 0         # MoE: experts per layer (0: dense)
    n_expert_used: int = 0    # experts each token is routed to
    n_ff_exp: int = 0         # one expert's FFN width
    n_ff_shexp: int = 0       # the shared expert's width (0: none)


def model_shape(path: str) -> ModelShape:
    """Shape of a GGUF model from its metadata."""
    from pop_local.format.metadata import read_header

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
    n_expert = get(f"{arch}.expert_count", 0)
    n_ff_exp = get(f"{arch}.expert_feed_forward_length", 0) if n_expert else 0
    n_shared = get(f"{arch}.expert_shared_count", 0) if n_expert else 0
    return ModelShape(
        n_layer=get(f"{arch}.block_count"),
        n_embd=n_embd,
        n_ff=get(f"{arch}.feed_forward_length"),
        n_head=n_head,
        n_head_kv=get(f"{arch}.attention.head_count_kv", n_head),
        head_dim=get(f"{arch}.attention.key_length", n_embd // n_head),
        n_expert=n_expert,
        n_expert_used=get(f"{arch}.expert_used_count", 0) if n_expert else 0,
        n_ff_exp=n_ff_exp,
        n_ff_shexp=(get(f"{arch}.expert_shared_feed_forward_length", 0) or n_shared * n_ff_exp) if n_expert else 0,
    )


def prefill_macs(shape: ModelShape, n_tokens: int, skip: Iterable[int] = (), removed: Iterable[int] = ()) -> float:
    """Multiply-accumulates of a prefill of n_tokens, with `skip` layers reduced to their K/V projections
    and `removed` layers (the exact KV-sharing skip: no K/V of their own) costing nothing."""
    s = shape
    d_q = s.n_head * s.head_dim
    d_kv = s.n_head_kv * s.head_dim
    kv_proj = 2 * s.n_embd * d_kv
    proj = s.n_embd * d_q * 2 + kv_proj               # Q, O, K, V
    if s.n_expert:                                    # router + routed experts + shared expert
        ffn = s.n_embd * s.n_expert + 3 * s.n_embd * (s.n_expert_used * s.n_ff_exp + s.n_ff_shexp)
    else:
        ffn = 3 * s.n_embd * s.n_ff                   # gate, up, down
    attn = 2 * d_q * (n_tokens + 1) / 2               # QK^T and AV over the causal prefix, per token
    full_layer = n_tokens * (proj + ffn + attn)
    skipped, gone = set(skip), set(removed)
    return sum(0.0 if il in gone else n_tokens * kv_proj if il in skipped else full_layer for il in range(s.n_layer))


def ideal_speedup(shape: ModelShape, n_tokens: int, skip: Iterable[int], removed: Iterable[int] = (),
                  full_tail: int = 1) -> float:
    """Prefill FLOP ratio full / POP (the last token runs in full either way and is not counted; the
    other full_tail - 1 tokens at the prompt's end cost what they cost the full model)."""
    full = prefill_macs(shape, n_tokens)
    head = n_tokens - min(max(full_tail - 1, 0), n_tokens)
    return full / (prefill_macs(shape, head, skip, removed) + full - prefill_macs(shape, head))
