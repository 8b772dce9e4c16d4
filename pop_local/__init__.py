"""pop-local: prefill-only pruning (POP) for llama.cpp, from Python.

    from pop_local import PopLlama
    llm = PopLlama("model.pop.gguf", n_ctx=4096)
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])
    llm.pop_stats()

Heavy modules (llama_cpp, gguf) load on first use, not at import. The layers, bottom up (docs/architecture.md):
errors; format/ (GGUF keys, skip sets, metadata: no llama_cpp, no torch); runtime/ (PopLlama, native
bindings, llama-cpp-python's internals, settings, devices, RPC); measure/ (bench, eval, FLOP model);
converter/ (calibration, writing POP GGUFs); apps/ and integrations/ (CLI, chat, server; LangChain,
LlamaIndex).
"""

from importlib import import_module
from typing import Any

from .errors import PopError, PopMetadataError, PopModelNotFound, PopNativeError, PopSettingError

__version__ = "0.1.0"

__all__ = [
    "PopLlama",
    "read_pop_metadata",
    "PopMetadata",
    "PopError",
    "PopMetadataError",
    "PopModelNotFound",
    "PopNativeError",
    "PopSettingError",
    "LoadSettings",
    "PopSettings",
    "run_bench",
    "run_eval",
    "create_pop_app",
    "convert",
    "keys",
    "__version__",
]

_LAZY = {
    "PopLlama": ".runtime.llama",
    "read_pop_metadata": ".format.metadata",
    "PopMetadata": ".format.metadata",
    "LoadSettings": ".runtime.settings",
    "PopSettings": ".runtime.settings",
    "run_bench": ".measure.bench",
    "run_eval": ".measure.evaluate",
    "create_pop_app": ".apps.server",
    "convert": ".converter",
}
_MODULES = {"keys": ".format.keys"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return import_module(_MODULES[name], __name__)
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'pop_local' has no attribute {name!r}")
