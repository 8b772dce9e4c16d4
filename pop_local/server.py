"""An OpenAI-compatible HTTP server with POP on: llama-cpp-python's server, serving a PopLlama.

llama-cpp-python's app (routes, streaming, chat templates, API key) is used as it is; only the
model loader differs, so /v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models
behave as upstream documents. One route is added: GET /pop/stats (the model's POP counters).
"""

from __future__ import annotations

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


def _pop_proxy_class(LlamaProxy, pop_options: Dict[str, Any]):
    class PopLlamaProxy(LlamaProxy):
        """LlamaProxy whose models are PopLlama instances."""

        def load_llama_from_model_settings(self, s):  # noqa: N805 - overrides upstream's staticmethod
            from .llama import PopLlama

            llm = PopLlama(
                s.model, pop=pop_options.get("pop"), skip_layers=pop_options.get("skip_layers"),
                n_gpu_layers=s.n_gpu_layers, split_mode=s.split_mode, main_gpu=s.main_gpu, tensor_split=s.tensor_split,
                use_mmap=s.use_mmap, use_mlock=s.use_mlock, seed=s.seed, n_ctx=s.n_ctx, n_batch=s.n_batch,
                n_ubatch=s.n_ubatch, n_threads=s.n_threads, n_threads_batch=s.n_threads_batch,
                # logits for every prompt token would make every token an output, which runs at full depth
                logits_all=False, embedding=s.embedding, offload_kqv=s.offload_kqv, flash_attn=s.flash_attn,
                chat_format=s.chat_format, type_k=s.type_k, type_v=s.type_v, verbose=s.verbose)
            pop_options["loaded"] = llm
            return llm

    return PopLlamaProxy


def create_pop_app(model_path: str, *, model_alias: Optional[str] = None, pop: Optional[bool] = None,
                   skip_layers: Optional[str] = None, api_key: Optional[str] = None, host: str = "127.0.0.1",
                   port: int = 8000, **model_settings: Any):
    """The FastAPI app of llama-cpp-python's server with `model_path` loaded as a PopLlama."""
    server_app, LlamaProxy, ModelSettings, ServerSettings = _server_modules()
    from fastapi import Depends

    settings = ModelSettings(model=model_path, model_alias=model_alias or model_path, logits_all=False,
                             **{k: v for k, v in model_settings.items() if v is not None})
    server = ServerSettings(host=host, port=port, api_key=api_key)
    # create_app builds its model proxy from the module-level LlamaProxy name; point it at ours for
    # that one call, so the model is loaded once, as a PopLlama
    options = {"pop": pop, "skip_layers": skip_layers}
    original = server_app.LlamaProxy
    server_app.LlamaProxy = _pop_proxy_class(LlamaProxy, options)
    try:
        app = server_app.create_app(server_settings=server, model_settings=[settings])
    finally:
        server_app.LlamaProxy = original
    app.state.pop_llm = options["loaded"]  # the model loaded at start (for the caller's messages)

    @app.get("/pop/stats", dependencies=[Depends(server_app.authenticate)], tags=["pop-local"])
    async def pop_stats(llama_proxy=Depends(server_app.get_llama_proxy)) -> Dict[str, Any]:
        """POP counters of the loaded model: pruned and full-depth tokens since start."""
        stats = llama_proxy().pop_stats()
        stats["skip_layers"] = list(stats["skip_layers"])
        return stats

    return app


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
