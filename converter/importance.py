"""Stage-aware layer importance with virtual gates (POP paper, section 3).

One scalar gate per layer and stage multiplies both residual branches (attention and FFN output)
where they are added to the residual stream. Prefill gates act on prompt positions 0..N-2, decode
gates on the last prompt token (N-1) and the response. With responses sampled from the model
itself, E[dL/dg] = 0 and the importance of a gate is E[(dL/dg)^2], one forward-backward per sample.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence

__all__ = ["VirtualGates", "Importance", "layer_importance", "gate_branch"]


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def gate_branch(output, boundary: int, gate_prefill, gate_decode):
    """A branch's output (a tensor, or a tuple led by one) times the prefill gate before position
    `boundary` and the decode gate from it on."""
    import torch

    out = output[0] if isinstance(output, tuple) else output
    pos = torch.arange(out.shape[1], device=out.device)
    gate = torch.where(pos < boundary, gate_prefill, gate_decode).to(out.dtype)
    out = out * gate[None, :, None]
    return (out, *output[1:]) if isinstance(output, tuple) else out


class VirtualGates:
    """Gates on every layer's attention and FFN branch; hooks live only inside `with gates.attached():`."""

    def __init__(self, model, spec, n_layer: int):
        import torch

        self.model = model
        self.spec = spec
        self.layers = _get(model, spec.layers)
        if len(self.layers) != n_layer:
            raise ValueError(f"model has {len(self.layers)} layers, expected {n_layer}")
        dtype = next(model.parameters()).dtype
        self.prefill = torch.ones(n_layer, dtype=dtype, requires_grad=True)
        self.decode = torch.ones(n_layer, dtype=dtype, requires_grad=True)
        self.boundary: Optional[int] = None  # position of the last prompt token

    def _hook(self, layer: int) -> Callable:

        def hook(_module, _inputs, output):
            if self.boundary is None:
                raise RuntimeError("VirtualGates.boundary must be set before a forward pass")
            return gate_branch(output, self.boundary, self.prefill[layer], self.decode[layer])

        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator["VirtualGates"]:
        handles = []
        try:
            for i, layer in enumerate(self.layers):
                for branch in (self.spec.attn_branch, self.spec.ffn_branch):
                    handles.append(_get(layer, branch).register_forward_hook(self._hook(i)))
            yield self
        finally:
            for h in handles:
                h.remove()


@dataclass
class Importance:
    prefill: List[float]
    decode: List[float]
    samples: int


def layer_importance(model, spec, n_layer: int, samples: Sequence[Sequence[int]], prompt_lengths: Sequence[int],
                     progress: Optional[Callable[[int], None]] = None,
                     observe: Optional[Callable[[int, "object"], None]] = None) -> Importance:
    """E[(dL/dg)^2] per layer and stage over (prompt + response) token sequences.

    samples[i] is the full sequence; its first prompt_lengths[i] tokens are the prompt and the rest
    the response the model sampled. Loss: cross-entropy on the response tokens. With every gate at
    one the forward pass is the full model's: `observe(i, logits)` sees its (detached) logits for
    sample i, and forward hooks the caller attached see its activations (converter/frontier.py).
    """
    import torch
    import torch.nn.functional as F

    gates = VirtualGates(model, spec, n_layer)
    acc_p = torch.zeros(n_layer, dtype=torch.float64)
    acc_d = torch.zeros(n_layer, dtype=torch.float64)
    used = 0
    was_training = model.training
    model.eval()
    try:
        with gates.attached():
            for i, (seq, n_prompt) in enumerate(zip(samples, prompt_lengths)):
                if len(seq) <= n_prompt or n_prompt < 2:
                    continue
                ids = torch.tensor([list(seq)], dtype=torch.long)
                gates.boundary = n_prompt - 1
                logits = model(input_ids=ids, use_cache=False).logits
                if observe is not None:
                    observe(i, logits.detach())
                loss = F.cross_entropy(logits[0, n_prompt - 1:-1].float(), ids[0, n_prompt:])
                gp, gd = torch.autograd.grad(loss, [gates.prefill, gates.decode])
                acc_p += gp.double() ** 2
                acc_d += gd.double() ** 2
                used += 1
                if progress:
                    progress(used)
    finally:
        model.train(was_training)
    if used == 0:
        raise ValueError("no usable calibration sample (each needs a prompt of 2+ tokens and a response)")
    return Importance((acc_p / used).tolist(), (acc_d / used).tolist(), used)
