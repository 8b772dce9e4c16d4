"""Per-architecture knowledge for calibration, as data.

For each transformers `model_type`: where the decoder layers live, and which submodule's output is
what gets added to the residual stream for the attention and for the FFN branch. The virtual gate
multiplies exactly that output. For Gemma 3 that is the output of the post-norms: a gate placed
before a norm would be normalised away and always read as zero importance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

from pop_local.errors import PopError

__all__ = ["ArchSpec", "ARCHITECTURES", "UnsupportedArchitecture", "arch_spec", "check_gguf_architecture",
           "calibrated_architectures"]


class UnsupportedArchitecture(PopError):
    """The model's architecture has no calibration mapping."""


@dataclass(frozen=True)
class ArchSpec:
    layers: str        # attribute path from the CausalLM to the list of decoder layers
    attn_branch: str   # submodule (relative to a layer) whose output is the attention branch
    ffn_branch: str    # submodule whose output is the FFN branch
    gguf_arch: str     # general.architecture in GGUF
    k_proj: str = "self_attn.k_proj"  # K and V projections (relative to a layer), for fitted K/V
    v_proj: str = "self_attn.v_proj"
    input_norm: str = "input_layernorm"  # the norm whose output feeds Q/K/V (an RMS norm with a weight)
    permute_k: bool = False  # the GGUF stores K rows permuted (llama.cpp's convert script does this for llama)


ARCHITECTURES: Dict[str, ArchSpec] = {
    "llama": ArchSpec("model.layers", "self_attn", "mlp", "llama", permute_k=True),
    "qwen2": ArchSpec("model.layers", "self_attn", "mlp", "qwen2"),
    "qwen3": ArchSpec("model.layers", "self_attn", "mlp", "qwen3"),
    "gemma3_text": ArchSpec("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "gemma3"),
    "gemma3": ArchSpec("model.language_model.layers", "post_attention_layernorm", "post_feedforward_layernorm",
                       "gemma3"),
    "gemma2": ArchSpec("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "gemma2"),
    "qwen3_moe": ArchSpec("model.layers", "self_attn", "mlp", "qwen3moe"),  # the gate scales the whole MoE block
}


def arch_spec(model_type: str) -> ArchSpec:
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise UnsupportedArchitecture(
            f"architecture '{model_type}' is not supported for calibration "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})") from None


def check_gguf_architecture(gguf_arch: str) -> None:
    """Fail before any model is loaded when a GGUF's architecture cannot be calibrated."""
    supported = sorted({spec.gguf_arch for spec in ARCHITECTURES.values()})
    if gguf_arch not in supported:
        raise UnsupportedArchitecture(
            f"GGUF architecture '{gguf_arch}' cannot be calibrated from the GGUF (calibration reads: "
            f"{', '.join(supported)}): calibrate a transformers checkpoint of the same model with `hf_model`, "
            f"or give the skip set with `layers=...` `calibrate=False`")


def calibrated_architectures() -> "frozenset[str]":
    """GGUF architectures the converter can calibrate from the GGUF itself."""
    return frozenset(spec.gguf_arch for spec in ARCHITECTURES.values())
