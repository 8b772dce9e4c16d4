"""ctypes bindings for the POP symbols that native/pop.cpp adds to libllama (see native/pop_api.h).

They are not part of upstream llama.cpp: `lib()` fails loudly, with the rebuild command, when the
loaded libllama lacks them. Nothing is loaded at import time.
"""

from __future__ import annotations

import ctypes
import functools

from pop_local.errors import PopNativeError
from pop_local.format.architectures import NAMES

from .upstream import REBUILD_HINT, libllama

__all__ = ["ABI_VERSION", "ARCHITECTURES", "STAGE_PREFILL", "STAGE_PREFILL_NO_BOUNDARY", "STAGE_ALL", "KV_OWN",
           "KV_FITTED", "LAYER_KV", "LAYER_SWA", "LAYER_RECURRENT", "LAYER_K_ONLY", "LAYER_CELL_EXT",
           "PopStats", "lib"]

ABI_VERSION = 3

# GGUF architectures POP runs on (compiled into libllama from the same table)
ARCHITECTURES = NAMES

# enum pop_llama_stage_mode
STAGE_PREFILL = 0
STAGE_PREFILL_NO_BOUNDARY = 1
STAGE_ALL = 2

# enum pop_llama_layer_kind (bits)
LAYER_KV = 1
LAYER_SWA = 2
LAYER_RECURRENT = 4
LAYER_K_ONLY = 8
LAYER_CELL_EXT = 16

# enum pop_llama_kv_mode
KV_OWN = 0
KV_FITTED = 1



class PopStats(ctypes.Structure):
    # struct pop_llama_stats
    _fields_ = [
        ("pruned_tokens", ctypes.c_uint64),
        ("full_tokens", ctypes.c_uint64),
        ("pruned_ubatches", ctypes.c_uint64),
        ("full_ubatches", ctypes.c_uint64),
    ]


_c_ctx = ctypes.c_void_p    # struct llama_context *
_c_model = ctypes.c_void_p  # const struct llama_model *

# name: (restype, argtypes), each with its C prototype
_PROTOTYPES = {
    # int32_t pop_llama_abi_version(void);
    "pop_llama_abi_version": (ctypes.c_int32, []),
    # bool pop_llama_arch_supported(const struct llama_model * model);
    "pop_llama_arch_supported": (ctypes.c_bool, [_c_model]),
    # int32_t pop_llama_set_skip_layers(struct llama_context * ctx, const int32_t * layers, int32_t n_layers);
    "pop_llama_set_skip_layers": (ctypes.c_int32, [_c_ctx, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
    # int32_t pop_llama_get_skip_layers(struct llama_context * ctx, int32_t * out, int32_t capacity);
    "pop_llama_get_skip_layers": (ctypes.c_int32, [_c_ctx, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
    # void pop_llama_set_enabled(struct llama_context * ctx, bool enabled);
    "pop_llama_set_enabled": (None, [_c_ctx, ctypes.c_bool]),
    # bool pop_llama_get_enabled(struct llama_context * ctx);
    "pop_llama_get_enabled": (ctypes.c_bool, [_c_ctx]),
    # bool pop_llama_is_active(struct llama_context * ctx);
    "pop_llama_is_active": (ctypes.c_bool, [_c_ctx]),
    # int32_t pop_llama_set_stage_mode(struct llama_context * ctx, int32_t mode);
    "pop_llama_set_stage_mode": (ctypes.c_int32, [_c_ctx, ctypes.c_int32]),
    # int32_t pop_llama_get_stage_mode(struct llama_context * ctx);
    "pop_llama_get_stage_mode": (ctypes.c_int32, [_c_ctx]),
    # int32_t pop_llama_set_kv_mode(struct llama_context * ctx, int32_t mode);
    "pop_llama_set_kv_mode": (ctypes.c_int32, [_c_ctx, ctypes.c_int32]),
    # int32_t pop_llama_get_kv_mode(struct llama_context * ctx);
    "pop_llama_get_kv_mode": (ctypes.c_int32, [_c_ctx]),
    # void pop_llama_set_exact_prefill(struct llama_context * ctx, bool enabled);
    "pop_llama_set_exact_prefill": (None, [_c_ctx, ctypes.c_bool]),
    # bool pop_llama_get_exact_prefill(struct llama_context * ctx);
    "pop_llama_get_exact_prefill": (ctypes.c_bool, [_c_ctx]),
    # int32_t pop_llama_get_exact_layers(struct llama_context * ctx, int32_t * out, int32_t capacity);
    "pop_llama_get_exact_layers": (ctypes.c_int32, [_c_ctx, ctypes.POINTER(ctypes.c_int32), ctypes.c_int32]),
    # int32_t pop_llama_n_fitted_layers(struct llama_context * ctx);
    "pop_llama_n_fitted_layers": (ctypes.c_int32, [_c_ctx]),
    # bool pop_llama_fitted_active(struct llama_context * ctx);
    "pop_llama_fitted_active": (ctypes.c_bool, [_c_ctx]),
    # int32_t pop_llama_layer_kind(const struct llama_model * model, int32_t il);
    "pop_llama_layer_kind": (ctypes.c_int32, [_c_model, ctypes.c_int32]),
    # void pop_llama_get_stats(struct llama_context * ctx, struct pop_llama_stats * out);
    "pop_llama_get_stats": (None, [_c_ctx, ctypes.POINTER(PopStats)]),
    # void pop_llama_reset_stats(struct llama_context * ctx);
    "pop_llama_reset_stats": (None, [_c_ctx]),
}


class _Lib:
    """The POP functions of the loaded libllama, with their ctypes signatures."""

    def __init__(self, cdll: ctypes.CDLL):
        for name, (restype, argtypes) in _PROTOTYPES.items():
            fn = getattr(cdll, name)
            fn.restype = restype
            fn.argtypes = argtypes
            setattr(self, name, fn)


@functools.lru_cache(maxsize=1)
def lib() -> _Lib:
    """Bind the POP symbols of llama_cpp's libllama; PopNativeError if they are missing or mismatched."""
    cdll = libllama()
    missing = [name for name in _PROTOTYPES if not hasattr(cdll, name)]
    if missing:
        raise PopNativeError(
            f"the loaded libllama ({getattr(cdll, '_name', '?')}) has no prefill-only pruning support "
            f"(missing {missing[0]}); {REBUILD_HINT}")
    bound = _Lib(cdll)
    abi = bound.pop_llama_abi_version()
    if abi != ABI_VERSION:
        raise PopNativeError(f"libllama has POP ABI {abi}, this pop-local expects {ABI_VERSION}; {REBUILD_HINT}")
    return bound
