"""pop-local: prefill-only pruning (POP) for llama.cpp, from Python.

    from pop_local import PopLlama
    llm = PopLlama("model.pop.gguf", n_ctx=4096)
    llm.create_chat_completion(messages=[{"role": "user", "content": "Hi"}])
    llm.pop_stats()

Heavy modules (llama_cpp, gguf) load on first use, not at import.
"""

from importlib import import_module
from typing import Any

from .errors import PopError, PopMetadataError, PopModelNotFound, PopNativeError

__version__ = "0.1.0"

__all__ = [
    "PopLlama",
    "read_pop_metadata",
    "PopMetadata",
    "PopError",
    "PopMetadataError",
    "PopModelNotFound",
    "PopNativeError",
    "__version__",
]

_LAZY = {
    "PopLlama": ".llama",
    "read_pop_metadata": ".metadata",
    "PopMetadata": ".metadata",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'pop_local' has no attribute {name!r}")
