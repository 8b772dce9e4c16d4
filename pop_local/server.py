"""An OpenAI-compatible HTTP server with POP on: llama-cpp-python's server, serving a PopLlama.

llama-cpp-python's app (routes, streaming, chat templates, API key) is used as it is; only the
model loader differs, so /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models
behave as upstream documents. One route is added: GET /pop/stats (the model's POP counters).
"""

from __future__ import annotations

import types
from typing import Any, Dict, Optional

from .errors import PopError

__all__ = ["create_pop_app", "serve"]


def _server_modules():
    try:
        import llama_cpp.server.app as server_app
        from llama_cpp.server.model import LlamaProxy
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise PopError(f"serve needs llama-cpp-python's server extras ({e.name} is missing): "
                       "pip install 'pop-local[serve]'") from None
    return server_app, LlamaProxy, ModelSettings, ServerSettings


# ModelSettings fields pop-local cannot honour, and why (an error at start-up, never silence)
UNSUPPORTED_SETTINGS = {
    "logits_all": "logits for every prompt token make every token an output, which runs at full depth",
}


def check_model_settings(settings) -> None:
    """PopError for a setting the POP server cannot honour (see UNSUPPORTED_SETTINGS)."""
    for name, why in UNSUPPORTED_SETTINGS.items():
        if getattr(settings, name, None):
            raise PopError(f"serve: {name} is not supported with POP ({why})")


def _pop_proxy_class(LlamaProxy, pop_options: Dict[str, Any]):
    """pop_options: the PopLlama arguments upstream's ModelSettings has no field for (pop, skip_layers,
    kv_mode, reuse_cache_across_settings, metadata); "loaded" receives the model."""
    import llama_cpp
    import llama_cpp.server.model as server_model

    from .llama import PopLlama

    class ServedPopLlama(PopLlama):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **{k: v for k, v in pop_options.items() if k != "loaded"}, **kwargs)
            pop_options["loaded"] = self

    class PopLlamaProxy(LlamaProxy):
        """LlamaProxy whose models are PopLlama instances, loaded by upstream's own loader, so every
        setting upstream honours (kv_overrides, rope scaling, LoRA, draft model, chat handler, cache,
        ...) is honoured here too."""

        def load_llama_from_model_settings(self, s):  # noqa: N805 - overrides upstream's staticmethod
            # upstream's loader calls `llama_cpp.Llama(...)` (or its from_pretrained) through the name
            # llama_cpp in its module: for this one call, that name is llama_cpp with Llama = ours
            with_pop = types.SimpleNamespace(**vars(llama_cpp))
            with_pop.Llama = ServedPopLlama
            original = server_model.llama_cpp
            server_model.llama_cpp = with_pop
            try:
                return LlamaProxy.load_llama_from_model_settings(s)
            finally:
                server_model.llama_cpp = original

    return PopLlamaProxy


def create_pop_app(meta, load=None, pop=None, *, model_alias: Optional[str] = None, api_key: Optional[str] = None,
                   host: str = "127.0.0.1", port: int = 8000, **upstream_settings: Any):
    """The FastAPI app of llama-cpp-python's server with the model (its PopMetadata, or a path) loaded
    as a PopLlama.

    `load` / `pop`: pop_local.settings LoadSettings / PopSettings (the same settings every entry point
    takes). `upstream_settings`: further llama-cpp-python ModelSettings fields (rope scaling, LoRA,
    draft model, ...), honoured as upstream honours them; one pop-local cannot honour is an error.
    """
    from pydantic import ValidationError

    from .settings import LoadSettings, PopSettings, settings_error

    server_app, LlamaProxy, ModelSettings, ServerSettings = _server_modules()
    from fastapi import Depends

    if not hasattr(meta, "path"):  # a file path
        from .metadata import read_pop_metadata

        meta = read_pop_metadata(meta)
    load = load or LoadSettings()
    pop = pop or PopSettings()
    # upstream's default logits_all=True would run every prompt token at full depth
    given = {"logits_all": False, **load.upstream_model_settings(),
             **{k: v for k, v in upstream_settings.items() if v is not None}}
    try:
        settings = ModelSettings(model=meta.path, model_alias=model_alias or meta.path, **given)
    except ValidationError as e:  # the first problem, in one line
        raise PopError(f"serve: {settings_error(e).args[0]}") from None
    check_model_settings(settings)
    # interrupt_requests off: upstream ends a running stream whenever another request waits for the
    # model; here requests queue and every stream runs to its end
    server = ServerSettings(host=host, port=port, api_key=api_key, interrupt_requests=False)
    # create_app builds its model proxy from the module-level LlamaProxy name; point it at ours for
    # that one call, so the model is loaded once, as a PopLlama
    options = {"pop": pop.pop, "skip_layers": pop.skip_layers, "kv_mode": pop.kv_mode, "metadata": meta,
               "reuse_cache_across_settings": load.reuse_cache_across_settings, "rpc_timeout": load.rpc_timeout}
    original = server_app.LlamaProxy
    server_app.LlamaProxy = _pop_proxy_class(LlamaProxy, options)
    try:
        app = server_app.create_app(server_settings=server, model_settings=[settings])
    finally:
        server_app.LlamaProxy = original
    llm = app.state.pop_llm = options["loaded"]  # the model loaded at start (for the caller's messages)

    # not through upstream's model lock (get_llama_proxy): waiting there would interrupt or delay the
    # running request; the snapshot is what the request thread last recorded
    @app.get("/pop/stats", dependencies=[Depends(server_app.authenticate)], tags=["pop-local"])
    async def pop_stats() -> Dict[str, Any]:
        """POP counters of the loaded model: pruned and full-depth tokens since start."""
        stats = llm.pop_stats_snapshot()
        stats["skip_layers"] = list(stats["skip_layers"])
        return stats

    return app


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
