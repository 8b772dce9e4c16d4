// pop-local public C API: prefill-only pruning (POP) controls for a llama_context.
//
// Compiled into libllama by native/pop.cmake. Python binds these symbols in
// pop_local/runtime/native.py; keep the two in step (POP_LLAMA_ABI_VERSION guards it).
#pragma once

#include "llama.h"

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define POP_LLAMA_ABI_VERSION 3

// How skipped layers are treated. Only PREFILL is the product; the other two exist so that
// `pop-local eval` can measure the baselines of the paper in the same process.
enum pop_llama_stage_mode {
    POP_LLAMA_STAGE_PREFILL             = 0, // non-output tokens skip S (K/V still written); output tokens run full
    POP_LLAMA_STAGE_PREFILL_NO_BOUNDARY = 1, // every multi-token ubatch skips S, outputs included
    POP_LLAMA_STAGE_ALL                 = 2, // S removed in every step (ShortGPT-style); their K/V are still
                                             // written by the shared attention code but never read
};

// Which projections give a pruned layer's K and V. FITTED uses the file's fitted tensors
// (blk.N.attn_k.pop / attn_v.pop, written by `pop-local convert --kv fitted`) for the layers that
// have them, while the skip set is the file's; otherwise, and in OWN mode, the layer's own.
enum pop_llama_kv_mode {
    POP_LLAMA_KV_OWN    = 0,
    POP_LLAMA_KV_FITTED = 1, // default
};

struct pop_llama_stats {
    uint64_t pruned_tokens;   // tokens that ran the pruned graph
    uint64_t full_tokens;     // tokens that ran the full graph (while a decoder graph was built)
    uint64_t pruned_ubatches;
    uint64_t full_ubatches;
};

LLAMA_API int32_t pop_llama_abi_version(void);

// true when this build knows how to run the model's architecture with skipped layers
LLAMA_API bool pop_llama_arch_supported(const struct llama_model * model);

// Replace the context's prefill skip set. Layers must be ascending, unique and < n_layer.
// Returns 0 on success, -1 (set unchanged, error logged) on invalid input.
LLAMA_API int32_t pop_llama_set_skip_layers(struct llama_context * ctx, const int32_t * layers, int32_t n_layers);

// Copies up to `capacity` layer indices into `out`; returns the size of the skip set.
LLAMA_API int32_t pop_llama_get_skip_layers(struct llama_context * ctx, int32_t * out, int32_t capacity);

LLAMA_API void pop_llama_set_enabled(struct llama_context * ctx, bool enabled);
LLAMA_API bool pop_llama_get_enabled(struct llama_context * ctx);

// Exact prefill for KV-sharing models (gemma3n, gemma4): their last layers reuse earlier layers' K/V and
// store none, so tokens without outputs skip them with identical results. On by default, independent of
// pop_llama_set_enabled (which switches POP's approximate skip set).
LLAMA_API void pop_llama_set_exact_prefill(struct llama_context * ctx, bool enabled);
LLAMA_API bool pop_llama_get_exact_prefill(struct llama_context * ctx);

// Copies up to `capacity` indices of the layers skipped exactly into `out`; returns how many there are
// (0 for a model without KV sharing).
LLAMA_API int32_t pop_llama_get_exact_layers(struct llama_context * ctx, int32_t * out, int32_t capacity);

// true when the next prompt will really be pruned: a supported architecture and something to skip
// (POP's set while enabled, or the exact KV-sharing layers)
LLAMA_API bool pop_llama_is_active(struct llama_context * ctx);

// Returns 0 on success, -1 for an unknown mode.
LLAMA_API int32_t pop_llama_set_stage_mode(struct llama_context * ctx, int32_t mode);
LLAMA_API int32_t pop_llama_get_stage_mode(struct llama_context * ctx);

// Returns 0 on success, -1 for an unknown mode.
LLAMA_API int32_t pop_llama_set_kv_mode(struct llama_context * ctx, int32_t mode);
LLAMA_API int32_t pop_llama_get_kv_mode(struct llama_context * ctx);

// Layers of the model with a fitted K or V tensor (0: the file has none).
LLAMA_API int32_t pop_llama_n_fitted_layers(struct llama_context * ctx);

// true when the next pruned prefill will use fitted projections (FITTED mode, the file's skip set, tensors present)
LLAMA_API bool pop_llama_fitted_active(struct llama_context * ctx);

// What each layer keeps between steps, as llama.cpp's state serialisation lays it out (tests read caches
// back per layer with it): a bit set of pop_llama_layer_kind, 0 for a layer that
// stores nothing of its own (a KV-sharing layer), -1 for an invalid layer.
enum pop_llama_layer_kind {
    POP_LLAMA_LAYER_KV        = 1, // stores K (and V, unless K-only) in the attention cache
    POP_LLAMA_LAYER_SWA       = 2, // ... in the sliding-window cache
    POP_LLAMA_LAYER_RECURRENT = 4, // keeps a recurrent state (conv + SSM/delta-net), no K/V
    POP_LLAMA_LAYER_K_ONLY    = 8, // the cache holds K only (MLA: the compressed latent)
    POP_LLAMA_LAYER_CELL_EXT  = 16, // cache cells carry 2-D positions (M-RoPE)
};
LLAMA_API int32_t pop_llama_layer_kind(const struct llama_model * model, int32_t il);

LLAMA_API void pop_llama_get_stats(struct llama_context * ctx, struct pop_llama_stats * out);
LLAMA_API void pop_llama_reset_stats(struct llama_context * ctx);

#ifdef __cplusplus
}
#endif
