"""An OpenAI-compatible HTTP server with POP on: llama-cpp-python's server, serving a PopLlama.

llama-cpp-python's app (routes, streaming, chat templates) is used with a PopLlama loader, so
/v1/chat/completions, /v1/completions, /v1/embeddings and /v1/models behave as upstream documents;
each app runs over its own copy of upstream's state (runtime/upstream.py), behind the access guard
(apps/server_access.py: origins, hosts, keys, sizes, token ids, grammars, images). One route is added:
GET /pop/stats (the model's POP counters).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Any, Dict, Optional, Sequence

from pop_local.errors import PopError

from .server_access import ORIGINS_ENV

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
    "hf_model_repo_id": "the model is a local file here (give a hub reference org/repo/file.gguf as the model)",
}


def check_model_settings(settings) -> None:
    """PopError for a setting the POP server cannot honour (see UNSUPPORTED_SETTINGS)."""
    for name, why in UNSUPPORTED_SETTINGS.items():
        if getattr(settings, name, None):
            raise PopError(f"serve: {name} is not supported with POP ({why})")


def create_pop_app(meta, load=None, pop=None, *, model_alias: Optional[str] = None, api_key: Optional[str] = None,
                   host: str = "127.0.0.1", port: int = 8000, allowed_origins: "str | Sequence[str] | None" = None,
                   insecure_no_key: bool = False, fetch_image_urls: bool = False, **upstream_settings: Any):
    """The FastAPI app of llama-cpp-python's server with the model (its PopMetadata, or a path) loaded
    as a PopLlama.

    `load` / `pop`: runtime.settings LoadSettings / PopSettings (the same settings every entry point
    takes), handed to PopLlama as they are. `upstream_settings`: further llama-cpp-python ModelSettings
    fields (rope scaling, LoRA, draft model, ...), honoured as upstream honours them; one pop-local
    cannot honour is an error.

    Access (pop_local/apps/server_access.py): web pages from local origins only, plus `allowed_origins`
    (comma separated, or a list; POP_LOCAL_ORIGINS adds to them); a `host` beyond loopback needs an
    `api_key` unless `insecure_no_key`; chat images as data: URIs, http(s) URLs fetched by the server
    only with `fetch_image_urls`. Each app has its own settings, model and key (several may share a process);
    CONFIG_FILE, which upstream's app reads, is ignored with a warning.
    """
    from pydantic import ValidationError

    from pop_local.format.metadata import PopMetadata, read_pop_metadata
    from pop_local.runtime.settings import LoadSettings, PopSettings, settings_error

    server_app, LlamaProxy, ModelSettings, ServerSettings = _server_modules()
    from fastapi import Depends

    from .server_access import key_check

    access = _access_policy(host, api_key, insecure_no_key, fetch_image_urls, allowed_origins)

    if not isinstance(meta, PopMetadata):  # a file path
        meta = read_pop_metadata(meta)
    load = load or LoadSettings()
    pop = pop or PopSettings()
    # upstream's settings model carries what its loader reads (context, threads, chat format, ...);
    # its default logits_all=True would run every prompt token at full depth
    params = {"logits_all": False,
              **{k: v for k, v in load.llama_params().items() if v is not None and k != "kv_overrides"},
              **{k: v for k, v in upstream_settings.items() if v is not None}}
    if load.mmproj:  # upstream's loader builds the multimodal handler a --chat-format names from it
        params["clip_model_path"] = load.mmproj
    try:
        settings = ModelSettings(model=meta.path, model_alias=model_alias or meta.path, **params)
    except ValidationError as e:  # the first problem, in one line
        raise PopError(f"serve: {settings_error(e)}") from None
    check_model_settings(settings)

    from pop_local.runtime.llama import PopLlama
    from pop_local.runtime.upstream import server_app_with_llama

    def pop_llama(*, model_path, kv_overrides=None, rpc_servers=None, **kwargs):
        """The model as upstream's loader builds it, a PopLlama with the settings as they are: upstream's
        kv_overrides and rpc_servers stay unset, so they never become strings and back."""
        return PopLlama(model_path, metadata=meta, settings=(load, pop),
                        kv_overrides=load.llama_params()["kv_overrides"], **kwargs)

    # interrupt_requests off: upstream ends a running stream whenever another request waits for the
    # model; here requests queue and every stream runs to its end
    server = ServerSettings(host=host, port=port, api_key=api_key, interrupt_requests=False)
    authenticate = key_check(api_key)
    app, llm = server_app_with_llama(server, settings, pop_llama, authenticate=authenticate)
    app.state.pop_llm = llm  # the model loaded at start (for the caller's messages)
    _guard(app, dataclasses.replace(access, check=_request_check(llm)))
    if hasattr(getattr(llm, "chat_handler", None), "_load_image"):  # checked before; never read a URL here
        from .server_images import data_uri_loader

        llm.chat_handler._load_image = data_uri_loader

    # not through upstream's model lock (get_llama_proxy): waiting there would interrupt or delay the
    # running request; the snapshot is what the request thread last recorded
    @app.get("/pop/stats", dependencies=[Depends(authenticate)], tags=["pop-local"])
    async def pop_stats() -> Dict[str, Any]:
        """POP counters of the loaded model: pruned and full-depth tokens since start."""
        stats = llm.pop_stats_snapshot()
        stats["skip_layers"] = list(stats["skip_layers"])
        return stats

    return app


def _access_policy(host, api_key, insecure_no_key, fetch_image_urls, allowed_origins):
    """The access settings checked where they enter (binding, origins), and a warning for CONFIG_FILE."""
    from .server_access import AccessPolicy, check_binding, parse_origins
    from .server_images import ImagePolicy

    check_binding(host, api_key, insecure_no_key)
    if os.environ.get("CONFIG_FILE"):
        warnings.warn("CONFIG_FILE is set: pop-local's server ignores it (its settings are the options given)",
                      stacklevel=3)
    return AccessPolicy(host=host, images=ImagePolicy(fetch_urls=fetch_image_urls),
                        origins=parse_origins(os.environ.get(ORIGINS_ENV)) + parse_origins(allowed_origins))


def _request_check(llm):
    """What the model cannot run, found before the request waits for it: a token id outside the vocabulary
    (llama.cpp aborts the process), a grammar llama.cpp cannot parse (upstream would sample with a null
    sampler), an empty completion prompt (nothing to sample after)."""
    from pop_local.runtime.upstream import grammar_parses

    from .server_access import token_id_problem

    n_vocab = llm.n_vocab()

    def check(path: str, payload: Any) -> Optional[str]:
        if not isinstance(payload, dict):
            return None
        problem = token_id_problem(path, payload, n_vocab)
        grammar = payload.get("grammar")
        if not problem and isinstance(grammar, str) and not grammar_parses(llm, grammar):
            problem = "grammar: llama.cpp cannot parse it (GBNF with a root rule)"
        prompt = payload.get("prompt", "")
        completion = path.rstrip("/").endswith("/completions") and not path.rstrip("/").endswith("/chat/completions")
        if not problem and completion and prompt in ("", [], [""]):
            problem = "prompt: empty (a completion continues a prompt of at least one token)"
        return problem

    return check


def _guard(app, access) -> None:
    """Upstream's CORS (any origin, with credentials) replaced: CORS headers for local and allowed origins
    only, behind the RequestGuard that turns every other origin away."""
    from fastapi.middleware.cors import CORSMiddleware

    from .server_access import RequestGuard

    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.add_middleware(CORSMiddleware, allow_origins=["*"] if "*" in access.origins else list(access.origins),
                       allow_origin_regex=r"https?://(localhost|127\.0\.0\.1|\[::1\])(:\d+)?",
                       allow_methods=["*"], allow_headers=["*"], allow_credentials=False)
    app.add_middleware(RequestGuard, policy=access)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
