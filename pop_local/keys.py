"""GGUF metadata keys of pop-local (schema version 1). The one place these names are spelled.

native/pop.cpp mirrors the runtime keys; tests/test_keys.py checks that the two agree.
"""

__all__ = ["SCHEMA_VERSION", "VERSION", "SKIP_LAYERS", "ENABLED", "RUNTIME_KEYS", "PREFIX"]

PREFIX = "pop."

SCHEMA_VERSION = 1

VERSION = "pop.version"                    # u32: schema version of the pop.* keys
SKIP_LAYERS = "pop.prefill.skip_layers"    # string: layers skipped in prefill, "20-29" or "20,21,28"
ENABLED = "pop.prefill.enabled"            # bool: POP on at load (default true)

# keys the native runtime reads at model load
RUNTIME_KEYS = (VERSION, SKIP_LAYERS, ENABLED)
