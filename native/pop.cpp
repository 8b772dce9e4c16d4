// pop-local: prefill-only pruning inside llama.cpp.
//
// The upstream sources get one-line calls into this file (native/patch_upstream.py); all logic
// lives here. Key names mirror pop_local/format/keys.py (tests/test_layers_keys.py checks that they match).
#include "pop.h"
#include "pop_api.h"

#include "llama-context.h"
#include "llama-graph.h"
#include "llama-impl.h"
#include "llama-model-loader.h"
#include "llama-model.h"

#include "gguf.h"

#include <cctype>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <vector>
#include <stdexcept>
#include <string>

// --- GGUF keys (schema version 1) ------------------------------------------------------------

static const char * const POP_KEY_VERSION     = "pop.version";
static const char * const POP_KEY_SKIP_LAYERS = "pop.prefill.skip_layers";
static const char * const POP_KEY_ENABLED     = "pop.prefill.enabled";
static const uint32_t     POP_SCHEMA_VERSION  = 1;

// The architectures POP is enabled for: generated at build time from pop_local/format/architectures.py (the one
// list; an architecture is on it only when its tests pass), by native/patch_upstream.py.
#include "pop_architectures.inc"

static bool pop_arch_supported(llm_arch arch) {
    const std::string name = llm_arch_name(arch);
    for (const char * supported : POP_ARCHITECTURES) {
        if (name == supported) {
            return true;
        }
    }
    return false;
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
    // KV-sharing models: from the first layer without a cache of its own, no layer stores K/V (has_kv is
    // false for every layer from n_layer_kv_from_start on), so skipping them for tokens without outputs is exact
    const auto & hp = model.hparams;
    if (hp.n_layer_kv_from_start >= 0) {
        for (int il = hp.n_layer_kv_from_start; il < state.n_layer && il < LLAMA_MAX_LAYERS; ++il) {
            state.exact_skip[il] = !hp.has_kv(il);
        }
    }
    auto en = model.gguf_kv.find(POP_KEY_ENABLED);
    state.enabled = en == model.gguf_kv.end() || en->second == "true";
    state.ready = true;
}

bool pop_split_by_output(const pop_context_state & state) {
    return state.active() && state.stage_mode == POP_LLAMA_STAGE_PREFILL;
}

// the skip set of the baseline stage modes: POP's own set only (the exact suffix is exact only without outputs)
static pop_layer_set pop_stage_skip(const pop_context_state & state) {
    return state.stage_mode == POP_LLAMA_STAGE_PREFILL ? state.prefill_skip()
                                                       : (state.enabled ? state.skip : pop_layer_set());
}

static bool pop_graph_type_eligible(int gtype) {
    return gtype == LLM_GRAPH_TYPE_DEFAULT || gtype == LLM_GRAPH_TYPE_DECODER;
}

static bool pop_fitted_applies(const pop_context_state & state) {
    return state.kv_mode == POP_LLAMA_KV_FITTED && state.n_fitted > 0 && state.skip == state.file_skip;
}

pop_graph_plan pop_plan_for(const pop_context_state & state, int gtype, uint32_t n_tokens, uint32_t n_outputs) {
    pop_graph_plan plan;
    if (!state.active() || !pop_graph_type_eligible(gtype) || pop_stage_skip(state).none()) {
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
        plan.skip = pop_stage_skip(state);
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

bool pop_layer_pruned(const llm_graph_context & g, int il) {
    return g.pop_plan.skips(il) && !g.cparams.training;
}

// true when `input` is among the sources of `out` (searched back from `out`, not past `input`)
static bool pop_reaches(ggml_tensor * out, ggml_tensor * input, ggml_tensor ** rows_of_input) {
    std::vector<ggml_tensor *> todo = {out};
    std::unordered_set<ggml_tensor *> seen = {out};
    bool found = false;
    while (!todo.empty()) {
        ggml_tensor * t = todo.back();
        todo.pop_back();
        if (t == input) {
            found = true;
            continue;
        }
        // the last layer of most builders keeps only the output rows: get_rows(input, inp_out_ids)
        if (t->op == GGML_OP_GET_ROWS && t->src[0] == input && rows_of_input && !*rows_of_input) {
            *rows_of_input = t;
        }
        for (ggml_tensor * s : t->src) {
            if (s && seen.insert(s).second) {
                todo.push_back(s);
            }
        }
    }
    return found;
}

static void pop_warn_once(const llm_graph_context & g, const char * what, int il) {
    static std::mutex mutex;
    static std::unordered_set<int> warned; // per architecture
    std::lock_guard<std::mutex> lock(mutex);
    if (warned.insert((int) g.arch).second) {
        LLAMA_LOG_WARN("pop-local: layer %d of '%s' %s; that layer runs in full\n", il, llm_arch_name(g.arch), what);
    }
}

// Redefine `out` in place as `like` (same op, sources and shape): every node that reads `out` then reads
// what `like` computes, and what `out` was computed from is left unreachable (never allocated or computed).
static void pop_redefine(ggml_tensor * out, const ggml_tensor * like) {
    out->type = like->type;
    std::memcpy(out->ne, like->ne, sizeof(out->ne));
    std::memcpy(out->nb, like->nb, sizeof(out->nb));
    out->op = like->op;
    std::memcpy(out->op_params, like->op_params, sizeof(out->op_params));
    out->flags = 0;
    std::memcpy(out->src, like->src, sizeof(out->src));
    out->view_src  = like->view_src;
    out->view_offs = like->view_offs;
}

static bool pop_same_shape(const ggml_tensor * a, const ggml_tensor * b) {
    return a->type == b->type && std::memcmp(a->ne, b->ne, sizeof(a->ne)) == 0;
}

void pop_on_named_tensor(const llm_graph_context & g, ggml_tensor * cur, const char * name, int il) {
    if (g.pop_plan.mode == pop_graph_plan::FULL || cur == nullptr) {
        return;
    }
    auto & stream = g.pop_stream;
    if (il < 0) {
        // before the first layer: the last named tensor shaped like the residual stream is layer 0's input
        // (the embeddings, or their scaled/normed form: inp_embd, inp_scaled, ...)
        if (!stream.in_layers && cur->type == GGML_TYPE_F32 && cur->ne[0] == g.n_embd &&
                cur->ne[1] == (int64_t) g.n_tokens && cur->ne[2] == 1 && cur->ne[3] == 1) {
            stream.current = cur;
        }
        return;
    }
    stream.in_layers = true;
    if (std::strcmp(name, "l_out") != 0) {
        return;
    }
    ggml_tensor * input = stream.current;
    stream.current = cur; // the next layer's input, whatever happens to this one
    if (!pop_layer_pruned(g, il)) {
        return;
    }
    if (input == nullptr) {
        pop_warn_once(g, "has no residual stream named before it", il);
        return;
    }
    if (cur->data != nullptr || cur->buffer != nullptr) {
        pop_warn_once(g, "names an allocated tensor as its output", il);
        return;
    }
    ggml_tensor * rows = nullptr;
    if (!pop_reaches(cur, input, &rows)) {
        pop_warn_once(g, "has an output that does not depend on its input", il);
        return;
    }
    if (pop_same_shape(cur, input)) {
        // copies, not a view of the input or a twin of the builder's get_rows: with a view, chunked prompts
        // lost rows of the input to a later buffer; with a twin, ggml's allocator crashed on the next graph
        // (both measured, causes not traced). A copy costs one pass over n_embd x n_tokens.
        pop_redefine(cur, ggml_cont(g.ctx0, input));
    } else if (rows != nullptr && pop_same_shape(cur, rows)) {
        pop_redefine(cur, ggml_cont(g.ctx0, rows)); // the input's output rows, selected as the builder selects them
    } else {
        pop_warn_once(g, "has an output shaped unlike its input", il);
        return;
    }
    ggml_format_name(cur, "pop_pass-%d", il); // the layer passes its input through: nothing of it is computed
}

void pop_graph_built(const pop_graph_plan & plan, ggml_context * ctx, ggml_cgraph * gf) {
    if (plan.mode == pop_graph_plan::FULL || ctx == nullptr || gf == nullptr) {
        return;
    }
    for (ggml_tensor * t = ggml_get_first_tensor(ctx); t != nullptr; t = ggml_get_next_tensor(ctx, t)) {
        if (t->flags & GGML_TENSOR_FLAG_INPUT) {
            ggml_build_forward_expand(gf, t); // a no-op for inputs already in the graph
        }
    }
}

ggml_tensor * pop_fitted_proj(const llm_graph_context & g, ggml_tensor * cur, ggml_tensor * proj, bool is_v, int il) {
    const auto & plan = g.pop_plan;
    if (plan.mode != pop_graph_plan::KV_ONLY || !plan.skips(il)) {
        return proj;
    }
    const pop_layer_tensors * table = is_v ? plan.fitted_v : plan.fitted_k;
    if (table == nullptr || (*table)[il] == nullptr) {
        return proj;
    }
    // `proj` (the own projection) is left unreferenced, so the graph never computes it
    return ggml_mul_mat(g.ctx0, (*table)[il], cur);
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

int32_t pop_llama_layer_kind(const llama_model * model, int32_t il) {
    if (model == nullptr || il < 0 || il >= (int32_t) model->hparams.n_layer()) {
        return -1;
    }
    const auto & hp = model->hparams;
    if (hp.is_recr(il)) {
        return POP_LLAMA_LAYER_RECURRENT;
    }
    if (!hp.has_kv(il)) {
        return 0;
    }
    int32_t kind = POP_LLAMA_LAYER_KV;
    kind |= hp.is_swa(il) ? POP_LLAMA_LAYER_SWA : 0;
    kind |= hp.is_mla() ? POP_LLAMA_LAYER_K_ONLY : 0;
    kind |= hp.n_pos_per_embd() > 1 ? POP_LLAMA_LAYER_CELL_EXT : 0;
    return kind;
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

// the layers of `set` (ascending) into out[0..capacity); returns how many there are
static int32_t pop_copy_layers(const pop_layer_set & set, int32_t n_layer, int32_t * out, int32_t capacity) {
    int32_t n = 0;
    for (int32_t l = 0; l < n_layer; ++l) {
        if (set[l]) {
            if (out != nullptr && n < capacity) {
                out[n] = l;
            }
            ++n;
        }
    }
    return n;
}

int32_t pop_llama_get_skip_layers(llama_context * ctx, int32_t * out, int32_t capacity) {
    const auto & st = pop_state(ctx);
    return pop_copy_layers(st.skip, st.n_layer, out, capacity);
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

void pop_llama_set_exact_prefill(llama_context * ctx, bool enabled) {
    pop_state(ctx).exact_enabled = enabled;
}

bool pop_llama_get_exact_prefill(llama_context * ctx) {
    return pop_state(ctx).exact_enabled;
}

int32_t pop_llama_get_exact_layers(llama_context * ctx, int32_t * out, int32_t capacity) {
    const auto & st = pop_state(ctx);
    return pop_copy_layers(st.exact_skip, st.n_layer, out, capacity);
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
