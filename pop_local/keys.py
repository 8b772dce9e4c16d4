"""GGUF metadata keys of pop-local (schema version 1). The one place these names are spelled.

native/pop.cpp mirrors the runtime keys; tests/test_layers_keys.py checks that the two agree.
"""

__all__ = [
    "SCHEMA_VERSION", "VERSION", "SKIP_LAYERS", "ENABLED", "RUNTIME_KEYS", "PREFIX",
    "IMPORTANCE_PREFILL", "IMPORTANCE_DECODE", "STRATEGY", "TOOL_VERSION",
    "CALIB_SOURCE", "CALIB_DATA", "CALIB_SAMPLES", "CALIB_SEQ_LEN", "CALIB_RESPONSE_TOKENS", "CALIB_SEED",
    "KV_INPUT", "KV_K_TENSORS", "KV_V_TENSORS",
]

PREFIX = "pop."

SCHEMA_VERSION = 1

VERSION = "pop.version"                    # u32: schema version of the pop.* keys
SKIP_LAYERS = "pop.prefill.skip_layers"    # string: layers skipped in prefill, "20-29" or "20,21,28"
ENABLED = "pop.prefill.enabled"            # bool: POP on at load (default true)

# keys the native runtime reads at model load
RUNTIME_KEYS = (VERSION, SKIP_LAYERS, ENABLED)

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
