"""GGUF metadata keys of pop-local (schema version 1). The one place these names are spelled.

native/pop.cpp mirrors the runtime keys; tests/test_layers_keys.py checks that the two agree.
"""

__all__ = [
    "SCHEMA_VERSION", "VERSION", "SKIP_LAYERS", "ENABLED", "MIN_TOKENS", "DEFAULT_MIN_TOKENS", "MAX_MIN_TOKENS",
    "FULL_TAIL", "DEFAULT_FULL_TAIL",
    "RUNTIME_KEYS", "PYTHON_RUNTIME_KEYS", "PREFIX",
    "IMPORTANCE_PREFILL", "IMPORTANCE_DECODE", "STRATEGY", "TOOL_VERSION",
    "CALIB_SOURCE", "CALIB_DATA", "CALIB_SAMPLES", "CALIB_SEQ_LEN", "CALIB_RESPONSE_TOKENS", "CALIB_SEED",
    "KV_INPUT", "KV_K_TENSORS", "KV_V_TENSORS", "KV_METHOD", "KV_FIT_ALPHA_K", "KV_FIT_ALPHA_V",
    "KV_FIT_ERR_OWN_K", "KV_FIT_ERR_OWN_V", "KV_FIT_ERR_K", "KV_FIT_ERR_V", "KV_FIT_ROWS", "POP_TENSOR_SUFFIX",
    "fitted_tensor_name", "BUDGET", "FRONTIER_SKIP_LAYERS", "FRONTIER_KL_OWN", "FRONTIER_KL_FITTED",
    "FRONTIER_TOP1_OWN", "FRONTIER_TOP1_FITTED", "FRONTIER_SPEEDUP_512", "FRONTIER_SPEEDUP_2048", "FRONTIER_CHOSEN",
    "FRONTIER_PAPER_KL", "FRONTIER_HELD_OUT", "FRONTIER_ARRAYS", "FRONTIER_CHECK", "FRONTIER_CHECK_SCORED_OWN",
    "FRONTIER_CHECK_SCORED_FITTED", "FRONTIER_CHECK_LOST_OWN", "FRONTIER_CHECK_LOST_FITTED",
    "FRONTIER_CHECK_LOW_OWN",
    "FRONTIER_CHECK_LOW_FITTED", "FRONTIER_CHECK_ARRAYS",
]

PREFIX = "pop."

SCHEMA_VERSION = 1

VERSION = "pop.version"                    # u32: schema version of the pop.* keys
SKIP_LAYERS = "pop.prefill.skip_layers"    # string: layers skipped in prefill, "20-29" or "20,21,28"
ENABLED = "pop.prefill.enabled"            # bool: POP on at load (default true)

# u32: a prompt evaluation of fewer new tokens than this runs the full model (pruning a short prompt saves
# almost nothing and is where answers change most; docs/measurements.md has the numbers behind the default)
MIN_TOKENS = "pop.prefill.min_tokens"
DEFAULT_MIN_TOKENS = 128  # when the file has no MIN_TOKENS key
MAX_MIN_TOKENS = 1 << 24

# u32: the last N tokens of each pruned prompt run the full model (the question of a long prompt, at full
# depth; 0 or 1: only the last token, as in the paper). docs/answers-suite.md measures what it keeps.
FULL_TAIL = "pop.prefill.full_tail"
DEFAULT_FULL_TAIL = 1  # when the file has no FULL_TAIL key

# keys the native runtime reads at model load
RUNTIME_KEYS = (VERSION, SKIP_LAYERS, ENABLED)
# keys the Python runtime (PopLlama) reads: the prompt-length rule is applied per evaluation call, where
# the length of a prompt is known (native sees micro-batches)
PYTHON_RUNTIME_KEYS = (MIN_TOKENS, FULL_TAIL)

# written by the converter (informational; the runtime does not read them)
IMPORTANCE_PREFILL = "pop.importance.prefill"  # f32 array [n_layer]: E[(dL/dg)^2] of the prefill gates
IMPORTANCE_DECODE = "pop.importance.decode"    # f32 array [n_layer]: same for the decode gates
STRATEGY = "pop.prefill.strategy"              # string: tail | score | explicit
TOOL_VERSION = "pop.tool_version"              # string: pop-local version that wrote the keys
CALIB_SOURCE = "pop.calibration.source"        # string: weights calibrated on (the GGUF or --hf-model)
CALIB_DATA = "pop.calibration.data"            # string: "builtin" or the --data file name
CALIB_SAMPLES = "pop.calibration.samples"      # u32
CALIB_SEQ_LEN = "pop.calibration.seq_len"      # u32: longest prompt, in tokens
CALIB_RESPONSE_TOKENS = "pop.calibration.response_tokens"  # u32: sampled response length
CALIB_SEED = "pop.calibration.seed"            # u32

# per skipped layer (arrays aligned with the skip set): which tensors give its K and V, and from what
KV_INPUT = "pop.prefill.kv_input"              # string: "layer_input" = the layer's own input, after attn_norm
KV_K_TENSORS = "pop.prefill.kv_k_tensors"      # string array: K projection tensor of each skipped layer
KV_V_TENSORS = "pop.prefill.kv_v_tensors"      # string array: V projection tensor of each skipped layer
KV_METHOD = "pop.prefill.kv_method"          # string: "own" (the paper's) or "fitted"

# --kv fitted: per skipped layer (aligned with the skip set), what the ridge fit chose and achieved
KV_FIT_ALPHA_K = "pop.kv_fit.alpha_k"          # f32 array: ridge strength / mean(diag X^T X); inf = own kept
KV_FIT_ALPHA_V = "pop.kv_fit.alpha_v"
KV_FIT_ERR_OWN_K = "pop.kv_fit.rel_error_own_k"  # f32 array: held-out ||X W0 - Y||^2 / ||Y||^2
KV_FIT_ERR_OWN_V = "pop.kv_fit.rel_error_own_v"
KV_FIT_ERR_K = "pop.kv_fit.rel_error_k"          # f32 array: the same for the fitted W (fit samples only)
KV_FIT_ERR_V = "pop.kv_fit.rel_error_v"
KV_FIT_ROWS = "pop.kv_fit.rows"                  # u32 array [2]: token rows fitted on, held out

# quality-budgeted conversion: the measured frontier (arrays aligned, one entry per candidate skip set,
# measured on held-out calibration samples no fit used), the budget and the choice
BUDGET = "pop.budget"                                # string: "max_kl=paper", "max_kl=0.1" or "target_speedup=1.6"
FRONTIER_SKIP_LAYERS = "pop.frontier.skip_layers"    # string array: each candidate's skip set, "25-29"
FRONTIER_KL_OWN = "pop.frontier.kl_own"              # f32 array: mean KL(full || POP) per response token, own K/V
FRONTIER_KL_FITTED = "pop.frontier.kl_fitted"        # f32 array: the same with K/V fitted for that set
FRONTIER_TOP1_OWN = "pop.frontier.top1_own"          # f32 array: top-1 agreement with the full model, own K/V
FRONTIER_TOP1_FITTED = "pop.frontier.top1_fitted"    # f32 array: the same, fitted K/V
FRONTIER_SPEEDUP_512 = "pop.frontier.speedup_512"    # f32 array: FLOP-ideal prefill speedup at 512 tokens
FRONTIER_SPEEDUP_2048 = "pop.frontier.speedup_2048"  # f32 array: the same at 2048 tokens
FRONTIER_CHOSEN = "pop.frontier.chosen"              # u32: index of the candidate written as the skip set
FRONTIER_PAPER_KL = "pop.frontier.paper_kl"          # f32: held-out KL of the paper's set (last 1/3, own K/V)
FRONTIER_HELD_OUT = "pop.frontier.held_out"          # u32 array [2]: held-out samples, response tokens
# the default budget's answer check (converter/answer_check.py): generated needle and document questions
# at one prompt length, answered greedily in llama.cpp by the full model; those it answers right, by each
# candidate the rule reached (fastest first, each stopped once it can no longer pass); per candidate and
# K/V, aligned with the frontier (0 items answered: not measured)
FRONTIER_CHECK = "pop.frontier.check"                  # u32 array [3]: items, prompt tokens, full model's right answers
FRONTIER_CHECK_SCORED_OWN = "pop.frontier.check_scored_own"      # u32 array: of those, items answered, own K/V
FRONTIER_CHECK_SCORED_FITTED = "pop.frontier.check_scored_fitted"
FRONTIER_CHECK_LOST_OWN = "pop.frontier.check_lost_own"          # u32 array: of those, answered wrong
FRONTIER_CHECK_LOST_FITTED = "pop.frontier.check_lost_fitted"
FRONTIER_CHECK_LOW_OWN = "pop.frontier.check_low_own"            # f32 array: paired 95% interval's lower end of
FRONTIER_CHECK_LOW_FITTED = "pop.frontier.check_low_fitted"      # POP - full (a share; NaN: not all items answered)
FRONTIER_CHECK_ARRAYS = (FRONTIER_CHECK_SCORED_OWN, FRONTIER_CHECK_SCORED_FITTED, FRONTIER_CHECK_LOST_OWN,
                         FRONTIER_CHECK_LOST_FITTED, FRONTIER_CHECK_LOW_OWN, FRONTIER_CHECK_LOW_FITTED)
# Files converted before this check (pop-local 0.x until 2026-12) carry the replaced check's keys
# (pop.frontier.answers_*, agree_*, passkeys_*, found_*, paper_answers, answer_prompts): they load, and
# those keys are shown as plain metadata.
FRONTIER_ARRAYS = (FRONTIER_SKIP_LAYERS, FRONTIER_KL_OWN, FRONTIER_KL_FITTED, FRONTIER_TOP1_OWN, FRONTIER_TOP1_FITTED,
                   FRONTIER_SPEEDUP_512, FRONTIER_SPEEDUP_2048)


POP_TENSOR_SUFFIX = ".pop"  # tensors pop-local adds to a GGUF end with this


def fitted_tensor_name(layer: int, kv: str) -> str:
    """Tensor holding layer's fitted K ("k") or V ("v") projection; native/pop.cpp builds the same name."""
    return f"blk.{layer}.attn_{kv}.pop"
