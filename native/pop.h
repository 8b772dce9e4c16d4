// pop-local internals shared with the llama.cpp sources that native/patch_upstream.py edits.
//
// Only forward declarations of llama.cpp types here: this header is included from
// llama-graph.h, llama-context.h and llama-batch.h, before those types are defined.
#pragma once

#include "llama-hparams.h" // LLAMA_MAX_LAYERS

#include <array>
#include <bitset>
#include <cstdint>
#include <functional>

struct ggml_tensor;
struct llama_model;
struct llama_model_loader;
struct llm_graph_context;

using pop_layer_set = std::bitset<LLAMA_MAX_LAYERS>;
using pop_layer_tensors = std::array<ggml_tensor *, LLAMA_MAX_LAYERS>;

// What one ubatch's graph does with the skip set. Part of llm_graph_params, so a graph built
// for one plan is never reused for another (see llm_graph_params::allow_reuse).
struct pop_graph_plan {
    enum : uint8_t { FULL = 0, KV_ONLY = 1, REMOVED = 2 };

    uint8_t       mode = FULL;
    pop_layer_set skip;
    // KV_ONLY with fitted projections: per-layer replacement K/V weights (null table or entry: own)
    const pop_layer_tensors * fitted_k = nullptr;
    const pop_layer_tensors * fitted_v = nullptr;

    bool skips(int il) const { return mode != FULL && il >= 0 && il < LLAMA_MAX_LAYERS && skip[il]; }

    bool operator==(const pop_graph_plan & other) const {
        return mode == other.mode && (mode == FULL ||
               (skip == other.skip && fitted_k == other.fitted_k && fitted_v == other.fitted_v));
    }
    bool operator!=(const pop_graph_plan & other) const { return !(*this == other); }
};

// The residual stream while a pruned graph is built, seen through the builders' named tensors
// (llm_graph_context::cb): a member of llm_graph_context, mutable because cb() is const.
struct pop_graph_stream {
    ggml_tensor * current   = nullptr; // the residual stream entering the next layer
    bool          in_layers = false;   // a tensor of some layer has been named
};

// Per-context POP state, a member of llama_context. Filled from the model's metadata on first use.
struct pop_context_state {
    bool          ready   = false;
    bool          enabled = true;
    bool          arch_ok = false;
    int32_t       stage_mode = 0; // enum pop_llama_stage_mode
    int32_t       n_layer    = 0;
    pop_layer_set skip;

    // KV-sharing models (gemma3n, gemma4): the layers from the first one without a K/V cache of its own
    // to the last store nothing, so for tokens without outputs they are skipped exactly (default on)
    bool          exact_enabled = true;
    pop_layer_set exact_skip;

    // fitted K/V projections (tensors blk.N.attn_k.pop / attn_v.pop), used only while the skip set
    // is the one they were fitted for: the file's
    int32_t           kv_mode  = 1; // enum pop_llama_kv_mode
    int32_t           n_fitted = 0; // layers with a fitted K or V tensor
    pop_layer_set     file_skip;
    pop_layer_tensors fitted_k{};
    pop_layer_tensors fitted_v{};

    uint64_t pruned_tokens   = 0;
    uint64_t full_tokens     = 0;
    uint64_t pruned_ubatches = 0;
    uint64_t full_ubatches   = 0;

    // the layers a ubatch without outputs skips: POP's set (when on) and the exact KV-sharing suffix (when on)
    pop_layer_set prefill_skip() const {
        pop_layer_set s;
        if (enabled) { s |= skip; }
        if (exact_enabled) { s |= exact_skip; }
        return s;
    }
    // true when prompts are really pruned (something to skip on a supported architecture)
    bool active() const { return ready && arch_ok && prefill_skip().any(); }
};

// Model load: resolve pop.* keys (file + kv_overrides), validate them and store the canonical
// values in model.gguf_kv. Throws std::runtime_error naming the key on bad values.
void pop_model_load(llama_model & model, const llama_model_loader & ml);

// Model load (llama_model::load_tensors): create the optional fitted K/V tensors of every layer through
// `create` (which returns null for tensors the file lacks), so the loader counts and loads them.
void pop_create_fitted_tensors(const llama_model & model,
                               const std::function<ggml_tensor *(int il, bool is_v, int64_t n_in, int64_t n_out)> & create);

// Context: read the model's POP keys on first use (idempotent).
void pop_context_prepare(pop_context_state & state, const llama_model & model);

// Whether a batch must be cut where the output flag changes (so no ubatch mixes pruned and full tokens).
bool pop_split_by_output(const pop_context_state & state);

// The plan for a ubatch with `n_outputs` outputs and `n_tokens` tokens built as graph type `gtype`.
pop_graph_plan pop_plan_for(const pop_context_state & state, int gtype, uint32_t n_tokens, uint32_t n_outputs);

// Count a processed ubatch.
void pop_count_ubatch(pop_context_state & state, int gtype, uint32_t n_tokens, uint32_t n_outputs);

// Shared graph code (llm_graph_context::build_attn*, build_attn_mha, build_moe_ffn): true when layer `il`
// is pruned in this graph, so the explicit ggml_build_forward_expand() of its query, attention output and
// experts is left out. The K/V cache writes are not: build_attn still stores them exactly as in the full graph.
bool pop_layer_pruned(const llm_graph_context & g, int il);

// llm_graph_context::cb, after the context's callback: tracks the residual stream, and at a pruned layer's
// "l_out" redefines that tensor as a copy of the layer's input (of the rows the builder selected, in the
// last layer), so the layer's attention and FFN are unreachable from the outputs and never run.
// Where the layer's input cannot be found among the output's sources it leaves the layer whole (warned once).
void pop_on_named_tensor(const llm_graph_context & g, ggml_tensor * cur, const char * name, int il);

// llama_context::process_ubatch, after a graph is built: in a pruned graph, every input tensor of `ctx`
// joins the graph, so inputs read only by pruned layers (Llama 4's attention temperature) are allocated
// when llama.cpp sets them.
struct ggml_context;
struct ggml_cgraph;
void pop_graph_built(const pop_graph_plan & plan, ggml_context * ctx, ggml_cgraph * gf);

// build_qkv: the K (is_v false) or V projection of layer `il` for this graph: `proj` (computed with
// the layer's own weights), or the fitted projection of `cur` when the plan prunes the layer and has one.
ggml_tensor * pop_fitted_proj(const llm_graph_context & g, ggml_tensor * cur, ggml_tensor * proj, bool is_v, int il);
