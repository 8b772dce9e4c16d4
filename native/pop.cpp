// pop-local: prefill-only pruning inside llama.cpp.
//
// The upstream sources get one-line calls into this file (native/patch_upstream.py); all logic
// lives here. Key names mirror pop_local/keys.py (tests/test_keys.py checks that they match).
#include "pop.h"
#include "pop_api.h"

#include "llama-context.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-kv-cache.h"
#include "llama-kv-cache-iswa.h"
#include "llama-model-loader.h"
#include "llama-model.h"

#include "gguf.h"

#include <cctype>
#include <stdexcept>
#include <string>

// --- GGUF keys (schema version 1) ------------------------------------------------------------

static const char * const POP_KEY_VERSION     = "pop.version";
static const char * const POP_KEY_SKIP_LAYERS = "pop.prefill.skip_layers";
static const char * const POP_KEY_ENABLED     = "pop.prefill.enabled";
static const uint32_t     POP_SCHEMA_VERSION  = 1;

// Architectures whose graph builders call pop_kv_only() before build_attn().
static bool pop_arch_supported(llm_arch arch) {
    switch (arch) {
        case LLM_ARCH_LLAMA:
        case LLM_ARCH_QWEN2:
        case LLM_ARCH_QWEN3:
        case LLM_ARCH_GEMMA3:
            return true;
        default:
            return false;
    }
}

// --- skip-set strings: "20-29", "20,21,28", "" -------------------------------------------

static std::string pop_format_layers(const pop_layer_set & set) {
    std::string out;
    for (int i = 0; i < LLAMA_MAX_LAYERS; ++i) {
        if (!set[i]) {
            continue;
        }
        int j = i;
        while (j + 1 < LLAMA_MAX_LAYERS && set[j + 1]) {
            ++j;
        }
        if (!out.empty()) {
            out += ",";
        }
        out += std::to_string(i);
        if (j > i) {
            out += "-" + std::to_string(j);
        }
        i = j;
    }
    return out;
}

static pop_layer_set pop_parse_layers(const std::string & text, int32_t n_layer) {
    pop_layer_set set;
    const std::string where = std::string(POP_KEY_SKIP_LAYERS) + ": ";
    auto fail = [&](const std::string & why) {
        throw std::runtime_error(where + why + " in \"" + text + "\" (expected ascending layer indices such as \"20-29\" or \"20,21,28\")");
    };

    size_t i = 0;
    int last = -1;
    auto skip_ws = [&]() { while (i < text.size() && isspace((unsigned char) text[i])) ++i; };
    auto number  = [&]() -> int {
        skip_ws();
        if (i >= text.size() || !isdigit((unsigned char) text[i])) {
            fail("expected a layer index at position " + std::to_string(i));
        }
        long v = 0;
        while (i < text.size() && isdigit((unsigned char) text[i])) {
            v = v*10 + (text[i++] - '0');
            if (v > 1000000) {
                fail("layer index too large");
            }
        }
        skip_ws();
        return (int) v;
    };

    skip_ws();
    if (i == text.size()) {
        return set; // empty: nothing skipped
    }
    while (true) {
        int a = number();
        int b = a;
        if (i < text.size() && text[i] == '-') {
            ++i;
            b = number();
            if (b < a) {
                fail("range " + std::to_string(a) + "-" + std::to_string(b) + " is descending");
            }
        }
        if (a <= last) {
            fail("layer " + std::to_string(a) + " is not ascending or repeated");
        }
        if (b >= n_layer) {
            fail("layer " + std::to_string(b) + " is out of range (the model has " + std::to_string(n_layer) + " layers, 0-" + std::to_string(n_layer - 1) + ")");
        }
        for (int l = a; l <= b; ++l) {
            set[l] = true;
        }
        last = b;
        if (i == text.size()) {
            break;
        }
        if (text[i] != ',') {
            fail(std::string("unexpected character '") + text[i] + "'");
        }
        ++i;
    }
    return set;
}

// --- model load -------------------------------------------------------------------------------

static const llama_model_kv_override * pop_find_override(const llama_model_loader & ml, const char * key) {
    auto it = ml.kv_overrides.find(key);
    return it == ml.kv_overrides.end() ? nullptr : &it->second;
}

void pop_model_load(llama_model & model, const llama_model_loader & ml) {
    const gguf_context * meta = ml.metadata;
    const int32_t n_layer = (int32_t) model.hparams.n_layer();
    if (n_layer == 0) {
        return; // a vocab_only load: no hyperparameters and no graph; the keys are checked when the model loads
    }

    // pop.version: refuse files written by a newer schema instead of misreading them
    {
        const int64_t id = gguf_find_key(meta, POP_KEY_VERSION);
        if (id >= 0) {
            if (gguf_get_kv_type(meta, id) != GGUF_TYPE_UINT32) {
                throw std::runtime_error(std::string(POP_KEY_VERSION) + ": expected a u32");
            }
            const uint32_t v = gguf_get_val_u32(meta, id);
            if (v == 0 || v > POP_SCHEMA_VERSION) {
                throw std::runtime_error(std::string(POP_KEY_VERSION) + ": schema version " + std::to_string(v) +
                        " is not supported by this build (it reads version " + std::to_string(POP_SCHEMA_VERSION) + "); update pop-local");
            }
        }
    }

    // pop.prefill.skip_layers: string, overridable with a string kv_override
    bool have_skip = false;
    std::string skip_text;
    if (const auto * ov = pop_find_override(ml, POP_KEY_SKIP_LAYERS)) {
        if (ov->tag != LLAMA_KV_OVERRIDE_TYPE_STR) {
            throw std::runtime_error(std::string(POP_KEY_SKIP_LAYERS) + ": the override must be a string such as \"20-29\"");
        }
        skip_text = ov->val_str;
        have_skip = true;
    } else {
        const int64_t id = gguf_find_key(meta, POP_KEY_SKIP_LAYERS);
        if (id >= 0) {
            if (gguf_get_kv_type(meta, id) != GGUF_TYPE_STRING) {
                throw std::runtime_error(std::string(POP_KEY_SKIP_LAYERS) + ": expected a string such as \"20-29\"");
            }
            skip_text = gguf_get_val_str(meta, id);
            have_skip = true;
        }
    }

    // pop.prefill.enabled: bool, overridable with a bool kv_override
    bool enabled = true;
    if (const auto * ov = pop_find_override(ml, POP_KEY_ENABLED)) {
        if (ov->tag != LLAMA_KV_OVERRIDE_TYPE_BOOL) {
            throw std::runtime_error(std::string(POP_KEY_ENABLED) + ": the override must be a bool");
        }
        enabled = ov->val_bool;
    } else {
        const int64_t id = gguf_find_key(meta, POP_KEY_ENABLED);
        if (id >= 0) {
            if (gguf_get_kv_type(meta, id) != GGUF_TYPE_BOOL) {
                throw std::runtime_error(std::string(POP_KEY_ENABLED) + ": expected a bool");
            }
            enabled = gguf_get_val_bool(meta, id);
        }
    }

    // validate now, so a bad file fails at load with the key's name rather than at the first prompt
    const pop_layer_set skip = pop_parse_layers(skip_text, n_layer);

    if (have_skip) {
        model.gguf_kv[POP_KEY_SKIP_LAYERS] = pop_format_layers(skip);
    }
    model.gguf_kv[POP_KEY_ENABLED] = enabled ? "true" : "false";

    if (skip.any()) {
        if (pop_arch_supported(model.arch)) {
            LLAMA_LOG_INFO("%s: prefill-only pruning: skip layers %s (%s)\n", __func__,
                    pop_format_layers(skip).c_str(), enabled ? "on" : "off");
        } else {
            LLAMA_LOG_WARN("%s: prefill-only pruning is not supported for architecture '%s'; "
                    "%s is ignored and the full model runs\n", __func__, llm_arch_name(model.arch), POP_KEY_SKIP_LAYERS);
        }
    }
}

// --- fitted K/V tensors ------------------------------------------------------------------------

// must match LLM_TN(arch)(LLM_TENSOR_ATTN_K / _V, "pop", il) as used at load, and the converter's names
static std::string pop_fitted_name(int il, bool is_v) {
    return "blk." + std::to_string(il) + (is_v ? ".attn_v.pop" : ".attn_k.pop");
}

void pop_create_fitted_tensors(const llama_model & model,
                               const std::function<ggml_tensor *(int, bool, int64_t, int64_t)> & create) {
    const auto & hp = model.hparams;
    int n = 0;
    for (int il = 0; il < (int) hp.n_layer() && il < LLAMA_MAX_LAYERS; ++il) {
        const bool k = create(il, false, hp.n_embd, hp.n_embd_k_gqa(il)) != nullptr;
        const bool v = create(il, true, hp.n_embd, hp.n_embd_v_gqa(il)) != nullptr;
        n += (k || v) ? 1 : 0;
    }
    if (n > 0) {
        LLAMA_LOG_INFO("%s: fitted K/V projections for %d pruned layers\n", __func__, n);
    }
}

// --- context ----------------------------------------------------------------------------------

void pop_context_prepare(pop_context_state & state, const llama_model & model) {
    if (state.ready) {
        return;
    }
    state.n_layer = (int32_t) model.hparams.n_layer();
    state.arch_ok = pop_arch_supported(model.arch);

    auto it = model.gguf_kv.find(POP_KEY_SKIP_LAYERS);
    if (it != model.gguf_kv.end()) {
        state.skip = pop_parse_layers(it->second, state.n_layer); // validated at load
    }
    state.file_skip = state.skip;
    for (int il = 0; il < state.n_layer && il < LLAMA_MAX_LAYERS; ++il) {
        // get_tensor hands out const pointers; these are weights the graph only reads
        state.fitted_k[il] = const_cast<ggml_tensor *>(model.get_tensor(pop_fitted_name(il, false).c_str()));
        state.fitted_v[il] = const_cast<ggml_tensor *>(model.get_tensor(pop_fitted_name(il, true).c_str()));
        state.n_fitted += (state.fitted_k[il] || state.fitted_v[il]) ? 1 : 0;
    }
    auto en = model.gguf_kv.find(POP_KEY_ENABLED);
    state.enabled = en == model.gguf_kv.end() || en->second == "true";
    state.ready = true;
}

bool pop_split_by_output(const pop_context_state & state) {
    return state.active() && state.stage_mode == POP_LLAMA_STAGE_PREFILL;
}

static bool pop_graph_type_eligible(int gtype) {
    return gtype == LLM_GRAPH_TYPE_DEFAULT || gtype == LLM_GRAPH_TYPE_DECODER;
}

static bool pop_fitted_applies(const pop_context_state & state) {
    return state.kv_mode == POP_LLAMA_KV_FITTED && state.n_fitted > 0 && state.skip == state.file_skip;
}

pop_graph_plan pop_plan_for(const pop_context_state & state, int gtype, uint32_t n_tokens, uint32_t n_outputs) {
    pop_graph_plan plan;
    if (!state.active() || !pop_graph_type_eligible(gtype)) {
        return plan;
    }
    switch (state.stage_mode) {
        case POP_LLAMA_STAGE_PREFILL:
            if (n_outputs == 0) {
                plan.mode = pop_graph_plan::KV_ONLY;
            }
            break;
        case POP_LLAMA_STAGE_PREFILL_NO_BOUNDARY:
            if (n_tokens > 1) {
                plan.mode = pop_graph_plan::KV_ONLY;
            }
            break;
        case POP_LLAMA_STAGE_ALL:
            plan.mode = pop_graph_plan::REMOVED;
            break;
    }
    if (plan.mode != pop_graph_plan::FULL) {
        plan.skip = state.skip;
    }
    if (plan.mode == pop_graph_plan::KV_ONLY && pop_fitted_applies(state)) {
        plan.fitted_k = &state.fitted_k;
        plan.fitted_v = &state.fitted_v;
    }
    return plan;
}

void pop_count_ubatch(pop_context_state & state, int gtype, uint32_t n_tokens, uint32_t n_outputs) {
    if (pop_plan_for(state, gtype, n_tokens, n_outputs).mode == pop_graph_plan::FULL) {
        state.full_tokens += n_tokens;
        state.full_ubatches += 1;
    } else {
        state.pruned_tokens += n_tokens;
        state.pruned_ubatches += 1;
    }
}

// --- graph ------------------------------------------------------------------------------------

static bool pop_layer_skipped(const llm_graph_params & params, int il) {
    return params.pop.mode != pop_graph_plan::FULL && il >= 0 && il < LLAMA_MAX_LAYERS && params.pop.skip[il];
}

bool pop_kv_only(llm_graph_context & g, const llm_graph_params & params, llm_graph_input_attn_kv * inp,
                 ggml_tensor * k_cur, ggml_tensor * v_cur, int il) {
    if (!pop_layer_skipped(params, il) || g.cparams.training) {
        return false;
    }
    if (params.pop.mode == pop_graph_plan::REMOVED) {
        return true;
    }
    // exactly what build_attn() stores: the same rotations, the same cache rows
    if (inp->self_k_rot) {
        k_cur = llama_mul_mat_hadamard(g.ctx0, k_cur, inp->self_k_rot);
    }
    if (inp->self_v_rot) {
        v_cur = llama_mul_mat_hadamard(g.ctx0, v_cur, inp->self_v_rot);
    }
    ggml_build_forward_expand(g.gf, v_cur);
    ggml_build_forward_expand(g.gf, k_cur);

    const auto * mctx_cur = inp->mctx;
    ggml_build_forward_expand(g.gf, mctx_cur->cpy_k(g.ctx0, k_cur, inp->get_k_idxs(), il));
    ggml_build_forward_expand(g.gf, mctx_cur->cpy_v(g.ctx0, v_cur, inp->get_v_idxs(), il));
    return true;
}

bool pop_kv_only(llm_graph_context & g, const llm_graph_params & params, llm_graph_input_attn_kv_iswa * inp,
                 ggml_tensor * k_cur, ggml_tensor * v_cur, int il) {
    if (!pop_layer_skipped(params, il) || g.cparams.training) {
        return false;
    }
    if (params.pop.mode == pop_graph_plan::REMOVED) {
        return true;
    }
    const bool is_swa = g.hparams.is_swa(il);
    auto * k_rot = is_swa ? inp->self_k_rot_swa : inp->self_k_rot;
    auto * v_rot = is_swa ? inp->self_v_rot_swa : inp->self_v_rot;
    if (k_rot && k_cur) {
        k_cur = llama_mul_mat_hadamard(g.ctx0, k_cur, k_rot);
    }
    if (v_rot && v_cur) {
        v_cur = llama_mul_mat_hadamard(g.ctx0, v_cur, v_rot);
    }
    const auto * mctx_cur = is_swa ? inp->mctx->get_swa() : inp->mctx->get_base();
    if (k_cur) {
        ggml_build_forward_expand(g.gf, k_cur);
        const auto & k_idxs = is_swa ? inp->get_k_idxs_swa() : inp->get_k_idxs();
        ggml_build_forward_expand(g.gf, mctx_cur->cpy_k(g.ctx0, k_cur, k_idxs, il));
    }
    if (v_cur) {
        ggml_build_forward_expand(g.gf, v_cur);
        const auto & v_idxs = is_swa ? inp->get_v_idxs_swa() : inp->get_v_idxs();
        ggml_build_forward_expand(g.gf, mctx_cur->cpy_v(g.ctx0, v_cur, v_idxs, il));
    }
    return true;
}

bool pop_kv_only(llm_graph_context &, const llm_graph_params &, llm_graph_input_attn_no_cache *,
                 ggml_tensor *, ggml_tensor *, int) {
    return false; // no cache to keep complete: embedding-only graphs always run in full
}

ggml_tensor * pop_fitted_proj(const llm_graph_context & g, ggml_tensor * cur, ggml_tensor * proj, bool is_v, int il) {
    const auto & plan = g.pop_plan;
    if (plan.mode != pop_graph_plan::KV_ONLY || il < 0 || il >= LLAMA_MAX_LAYERS || !plan.skip[il]) {
        return proj;
    }
    const pop_layer_tensors * table = is_v ? plan.fitted_v : plan.fitted_k;
    if (table == nullptr || (*table)[il] == nullptr) {
        return proj;
    }
    // `proj` (the own projection) is left unreferenced, so the graph never computes it
    return ggml_mul_mat(g.ctx0, (*table)[il], cur);
}

ggml_tensor * pop_skip_layer(llm_graph_context & g, ggml_tensor * inp, int il, ggml_tensor * inp_out_ids) {
    if (il == g.n_layer - 1 && inp_out_ids) {
        return ggml_get_rows(g.ctx0, inp, inp_out_ids);
    }
    return inp;
}

// --- C API --------------------------------------------------------------------------------------

static pop_context_state & pop_state(llama_context * ctx) {
    pop_context_prepare(ctx->pop, ctx->get_model());
    return ctx->pop;
}

int32_t pop_llama_abi_version(void) {
    return POP_LLAMA_ABI_VERSION;
}

bool pop_llama_arch_supported(const llama_model * model) {
    return model != nullptr && pop_arch_supported(model->arch);
}

int32_t pop_llama_set_skip_layers(llama_context * ctx, const int32_t * layers, int32_t n_layers) {
    auto & st = pop_state(ctx);
    if (n_layers < 0 || (n_layers > 0 && layers == nullptr)) {
        LLAMA_LOG_ERROR("%s: invalid arguments\n", __func__);
        return -1;
    }
    pop_layer_set set;
    int32_t last = -1;
    for (int32_t i = 0; i < n_layers; ++i) {
        const int32_t l = layers[i];
        if (l < 0 || l >= st.n_layer) {
            LLAMA_LOG_ERROR("%s: layer %d is out of range (the model has %d layers)\n", __func__, l, st.n_layer);
            return -1;
        }
        if (l <= last) {
            LLAMA_LOG_ERROR("%s: layers must be ascending and unique (got %d after %d)\n", __func__, l, last);
            return -1;
        }
        set[l] = true;
        last = l;
    }
    if (set.any() && !st.arch_ok) {
        LLAMA_LOG_WARN("%s: prefill-only pruning is not supported for architecture '%s'; the full model runs\n",
                __func__, llm_arch_name(ctx->get_model().arch));
    }
    st.skip = set;
    return 0;
}

int32_t pop_llama_get_skip_layers(llama_context * ctx, int32_t * out, int32_t capacity) {
    const auto & st = pop_state(ctx);
    int32_t n = 0;
    for (int32_t l = 0; l < st.n_layer; ++l) {
        if (st.skip[l]) {
            if (out != nullptr && n < capacity) {
                out[n] = l;
            }
            ++n;
        }
    }
    return n;
}

void pop_llama_set_enabled(llama_context * ctx, bool enabled) {
    pop_state(ctx).enabled = enabled;
}

bool pop_llama_get_enabled(llama_context * ctx) {
    return pop_state(ctx).enabled;
}

bool pop_llama_is_active(llama_context * ctx) {
    return pop_state(ctx).active();
}

int32_t pop_llama_set_stage_mode(llama_context * ctx, int32_t mode) {
    if (mode != POP_LLAMA_STAGE_PREFILL && mode != POP_LLAMA_STAGE_PREFILL_NO_BOUNDARY && mode != POP_LLAMA_STAGE_ALL) {
        LLAMA_LOG_ERROR("%s: unknown stage mode %d\n", __func__, mode);
        return -1;
    }
    pop_state(ctx).stage_mode = mode;
    return 0;
}

int32_t pop_llama_get_stage_mode(llama_context * ctx) {
    return pop_state(ctx).stage_mode;
}

int32_t pop_llama_set_kv_mode(llama_context * ctx, int32_t mode) {
    if (mode != POP_LLAMA_KV_OWN && mode != POP_LLAMA_KV_FITTED) {
        LLAMA_LOG_ERROR("%s: unknown K/V mode %d\n", __func__, mode);
        return -1;
    }
    pop_state(ctx).kv_mode = mode;
    return 0;
}

int32_t pop_llama_get_kv_mode(llama_context * ctx) {
    return pop_state(ctx).kv_mode;
}

int32_t pop_llama_n_fitted_layers(llama_context * ctx) {
    return pop_state(ctx).n_fitted;
}

bool pop_llama_fitted_active(llama_context * ctx) {
    const auto & st = pop_state(ctx);
    return st.active() && pop_fitted_applies(st);
}

void pop_llama_get_stats(llama_context * ctx, pop_llama_stats * out) {
    const auto & st = pop_state(ctx);
    out->pruned_tokens   = st.pruned_tokens;
    out->full_tokens     = st.full_tokens;
    out->pruned_ubatches = st.pruned_ubatches;
    out->full_ubatches   = st.full_ubatches;
}

void pop_llama_reset_stats(llama_context * ctx) {
    auto & st = pop_state(ctx);
    st.pruned_tokens = st.full_tokens = st.pruned_ubatches = st.full_ubatches = 0;
}
