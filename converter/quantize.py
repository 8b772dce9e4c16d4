"""Re-quantizing a GGUF with llama.cpp's own quantizer (llama_model_quantize): benchmarks/weight_types.py
measures the embedded default's weight types with it."""

from __future__ import annotations

import ctypes
import os

from pop_local.errors import PopError

__all__ = ["requantize", "WEIGHT_TYPES"]

# names as llama.cpp's quantize tool spells them -> llama_cpp's LLAMA_FTYPE_* constant
WEIGHT_TYPES = {"q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
                "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q5_1": "LLAMA_FTYPE_MOSTLY_Q5_1",
                "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
                "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


def requantize(src: str, out: str, kind: str) -> str:
    """`src` written to `out` with weights of type `kind` (requantizing allowed: a quantized source is
    dequantized first, so the result holds no more precision than the source). PopError if it fails.
    llama.cpp's per-tensor log is shown only at debug level (it prints a line per tensor)."""
    import logging

    import llama_cpp
    import llama_cpp._logger as logs

    if kind not in WEIGHT_TYPES:
        raise PopError(f"unknown weight type {kind!r} (known: {', '.join(WEIGHT_TYPES)})")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, WEIGHT_TYPES[kind])
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    level = logs.logger.level
    logs.logger.setLevel(max(level, logging.ERROR))
    try:
        failed = llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params)) != 0
    finally:
        logs.logger.setLevel(level)
    if failed:
        raise PopError(f"llama.cpp could not write {src} as {kind}")
    return out
