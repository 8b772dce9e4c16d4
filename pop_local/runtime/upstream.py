"""Every touch of llama-cpp-python's internals, and every ggml function pop-local declares, in one module.

PopLlama subclasses llama_cpp.Llama and needs a few of its private members: the context and model
pointers (`_ctx.ctx`, `_model.model`), the batch it decodes through (`_batch`), whether every token is
an output (`_logits_all`), how far __init__ got (`_stack`), and the loaded libllama (`_lib`). Their
meaning can change between releases, so they are read only here, for the release pop-local pins and
builds (`check_version`, called before any model loads). The ggml libraries are the very copies
libllama mapped (a second copy would have its own device registry).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
import threading
import traceback
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence

from pop_local.errors import PopNativeError

__all__ = ["VERSION", "check_version", "libllama", "ggml", "ggml_base", "ggml_rpc", "context_pointer", "model_pointer",
           "initialised", "logits_all", "forget_after", "decode", "output_logits", "model_devices", "grammar_parses",
           "server_app_with_llama", "MULTIMODAL_CHAT_FORMATS", "multimodal_chat_handler", "observe_mtmd",
           "load_projector"]

VERSION = "0.3.36"  # setup.py and native/build.py pin the same release
REBUILD_HINT = ("rebuild llama-cpp-python with pop-local's patch: `python native/build.py` from the pop-local "
                "source tree (add your CMAKE_ARGS, e.g. CMAKE_ARGS=\"-DGGML_CUDA=on\")")


@lru_cache(maxsize=1)
def check_version() -> None:
    """PopNativeError unless the installed llama-cpp-python is the release whose internals this module reads."""
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise PopNativeError(f"llama-cpp-python is not installed ({e}); {REBUILD_HINT}") from e
    if llama_cpp.__version__ != VERSION:
        raise PopNativeError(f"llama-cpp-python {llama_cpp.__version__} is installed; pop-local needs {VERSION} "
                             f"built with its patch: {REBUILD_HINT}")


def libllama() -> ctypes.CDLL:
    """The libllama llama-cpp-python loaded."""
    check_version()
    import llama_cpp.llama_cpp as bindings

    return bindings._lib


# --- the ggml libraries beside libllama, and the ggml functions used by pop-local ----------------------

def _library_names(stem: str) -> list:
    if sys.platform == "win32":
        return [f"{stem}.dll", f"lib{stem}.dll"]
    if sys.platform == "darwin":
        return [f"lib{stem}.dylib", f"lib{stem}.so"]
    return [f"lib{stem}.so"]


def _already_loaded(folder: Path, stem: str) -> Optional[Path]:
    """The file of lib`stem` this process has mapped from `folder` (Linux). Wheels hold copies, not
    links (libggml.so, libggml.so.0, ...): libllama loads the one its SONAME names, and opening
    another copy would load a second ggml with its own device registry."""
    try:
        with open("/proc/self/maps") as maps:
            fields = (line.split(None, 5) for line in maps)  # address perms offset dev inode path
            paths = {f[5].strip() for f in fields if len(f) == 6}
    except OSError:
        return None
    for path in sorted(paths):
        p = Path(path)
        if p.parent == folder and (p.name == f"lib{stem}.so" or p.name.startswith(f"lib{stem}.so.")):
            return p
    return None


def _load_beside_llama(stem: str) -> ctypes.CDLL:
    """lib`stem` as libllama uses it: the very copy it mapped."""
    lib_path = libllama()._name
    folder = Path(lib_path).resolve().parent
    loaded = _already_loaded(folder, stem)
    if loaded is not None:
        return ctypes.CDLL(str(loaded))
    for name in _library_names(stem):
        if (folder / name).exists():
            return ctypes.CDLL(str(folder / name))
    raise RuntimeError(f"lib{stem} not found next to {lib_path}")


def _declare(lib: ctypes.CDLL, prototypes) -> ctypes.CDLL:
    for name, restype, argtypes in prototypes:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


_p = ctypes.c_void_p
_size = ctypes.c_size_t
# ggml_abort_callback_t: ggml calls it with the message, then abort()s
ABORT_CALLBACK_T = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


@lru_cache(maxsize=1)
def ggml() -> ctypes.CDLL:
    """libggml: the device registry."""
    return _declare(_load_beside_llama("ggml"), [
        ("ggml_backend_reg_count", _size, []),
        ("ggml_backend_reg_get", _p, [_size]),
        ("ggml_backend_reg_name", ctypes.c_char_p, [_p]),
        ("ggml_backend_dev_count", _size, []),
        ("ggml_backend_dev_get", _p, [_size]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [_p]),
        ("ggml_backend_dev_description", ctypes.c_char_p, [_p]),
        ("ggml_backend_dev_type", ctypes.c_int, [_p]),
        ("ggml_backend_dev_memory", None, [_p, ctypes.POINTER(_size), ctypes.POINTER(_size)]),
        ("ggml_backend_dev_backend_reg", _p, [_p]),
        ("ggml_backend_dev_by_name", _p, [ctypes.c_char_p]),
        ("ggml_backend_register", None, [_p]),  # a server's devices (rpc.py)
    ])


@lru_cache(maxsize=1)
def ggml_base() -> ctypes.CDLL:
    """libggml-base: tensor and buffer names (where graph nodes ran), the abort callback."""
    return _declare(_load_beside_llama("ggml-base"), [
        ("ggml_get_name", ctypes.c_char_p, [_p]),
        ("ggml_backend_buffer_name", ctypes.c_char_p, [_p]),
        ("ggml_set_abort_callback", _p, [ABORT_CALLBACK_T]),
    ])


@lru_cache(maxsize=1)
def ggml_rpc() -> ctypes.CDLL:
    """libggml-rpc: RPC client and server (RuntimeError when the build has no RPC backend)."""
    return _declare(_load_beside_llama("ggml-rpc"), [
        ("ggml_backend_rpc_add_server", _p, [ctypes.c_char_p]),
        ("ggml_backend_rpc_start_server", None, [ctypes.c_char_p, ctypes.c_char_p, _size, _size, ctypes.POINTER(_p)]),
    ])


# --- llama_cpp.Llama's private members ---------------------------------------------------------------

def context_pointer(llm) -> ctypes.c_void_p:
    """struct llama_context * of a loaded Llama."""
    return llm._ctx.ctx


def model_pointer(llm) -> ctypes.c_void_p:
    """struct llama_model * of a loaded Llama."""
    return llm._model.model


def initialised(llm) -> bool:
    """Whether llama_cpp.Llama.__init__ got far enough to have something to close."""
    return hasattr(llm, "_stack")


def logits_all(llm) -> bool:
    """Whether the Llama was created with logits_all (every token an output)."""
    return bool(llm._logits_all)


def forget_after(llm, n_tokens: int) -> None:
    """Drop the KV cache after the first n_tokens positions (what Llama.eval does before a prompt)."""
    llm._ctx.kv_cache_seq_rm(-1, n_tokens, -1)


def decode(llm, tokens: Sequence[int], n_past: int, *, outputs: str) -> None:
    """llama_decode `tokens` at positions n_past.. through the Llama's own batch; outputs: "all", "last"
    or "none" (llama-cpp-python's set_batch marks only the last token, or all with logits_all)."""
    batch = llm._batch
    batch.set_batch(batch=tokens, n_past=n_past, logits_all=outputs == "all")
    if outputs == "none":
        batch.batch.logits[len(tokens) - 1] = False
    llm._ctx.decode(batch)
    llm._requires_eval = False  # the logits in hand are this batch's


def invalidate_logits(llm) -> None:
    """The logits in hand belong to tokens that were dropped: the next generate evaluates again."""
    llm._requires_eval = True


def output_logits(llm, rows: Optional[int] = None) -> Any:
    """A copy of the latest decode's logits: `rows` outputs [rows, n_vocab], or the last one [n_vocab]."""
    import llama_cpp
    import numpy as np

    n_vocab = llm.n_vocab()
    if rows is None:
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).copy()
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(rows, n_vocab)).copy()


_load_lock = threading.Lock()


@contextlib.contextmanager
def model_devices(devices: Sequence[int]):
    """While a model loads: its model parameters name exactly these ggml devices.

    llama-cpp-python builds the model parameters inside Llama.__init__ from llama_model_default_params
    and has no argument for the device list, so that function is wrapped for the load (loads are
    serialised meanwhile)."""
    import llama_cpp.llama_cpp as bindings

    array = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)  # NULL-terminated, alive for the load
    original = bindings.llama_model_default_params

    def with_devices():
        params = original()
        params.devices = ctypes.cast(array, ctypes.c_void_p)
        return params

    with _load_lock:
        bindings.llama_model_default_params = with_devices
        try:
            yield
        finally:
            bindings.llama_model_default_params = original


# --- llama-cpp-python's server ---------------------------------------------------------------------

def _with_names(fn, **names):
    """A copy of function `fn` whose global `names` are bound to other objects: upstream's own code runs
    as it is, with pop-local's pieces where it names its own, and nothing in upstream's modules changes."""
    return _in_namespace(fn, {**fn.__globals__, **names})


def _in_namespace(fn, namespace: dict):
    """A copy of function `fn` (defaults, annotations and docstring included) whose globals are `namespace`."""
    import types

    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__, copy.__annotations__ = fn.__kwdefaults__, dict(fn.__annotations__)
    copy.__doc__, copy.__qualname__, copy.__module__ = fn.__doc__, fn.__qualname__, fn.__module__
    return copy


class _NoConfigFile:
    """`os` as upstream's create_app reads it, without CONFIG_FILE: pop-local's settings are the ones given."""

    def __init__(self):
        import os

        self.path = os.path
        self.environ = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}


def _route_class(upstream_route):
    """Upstream's route class (it answers any exception in OpenAI's error shape, as a 500), with a request's
    own faults kept as 4xx: FastAPI's validation errors (422) and embeddings asked of a model loaded
    without them (400). They reach upstream's handler as HTTPExceptions, which it passes on."""
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.routing import APIRoute

    class ClientFaults(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def faults_as_4xx(request):
                try:
                    return await handler(request)
                except RequestValidationError as e:
                    raise HTTPException(status_code=422, detail=jsonable_errors(e)) from None
                except RuntimeError as e:
                    if "embedding=True" in str(e):
                        raise HTTPException(status_code=400, detail="this server's model computes no embeddings "
                                            "(it is loaded for generation)") from None
                    if "llama_decode returned 1" in str(e):  # no room left in the context's cache
                        raise HTTPException(status_code=400, detail="the prompt and the reply do not fit the "
                                            "model's context (--n-ctx)") from None
                    raise

            return faults_as_4xx

    class Route(upstream_route, ClientFaults):
        pass

    return Route


def jsonable_errors(error) -> list:
    """A validation error's list, as JSON can carry it (FastAPI's own 422 body)."""
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(error.errors())


def server_app_with_llama(server_settings, model_settings, make_llama, authenticate=None):
    """(app, model): llama-cpp-python's FastAPI app (create_app) serving one model that upstream's own
    loader builds (chat handlers, LoRA, draft model, cache, ...) through `make_llama(**kwargs)` where it
    would call llama_cpp.Llama(**kwargs); loaded once, at start.

    Upstream keeps its server state in module globals (settings, model proxy, model locks, router), so a
    second app in one process would serve the first's model with the second's key. Each app here runs
    copies of upstream's functions over a namespace of its own: its own settings, proxy, locks and routes
    (the same paths and schemas), its dependencies resolved to those copies; upstream's module is left as
    it is. CONFIG_FILE is not read (the caller's settings are the server's). `authenticate`: a
    replacement for upstream's API key check (same dependency signature), or None to keep upstream's."""
    import types

    import anyio
    import llama_cpp
    import llama_cpp.server.app as server_app
    from fastapi import APIRouter
    from llama_cpp.server.model import LlamaProxy

    check_version()
    with_llama = types.SimpleNamespace(**vars(llama_cpp))
    with_llama.Llama = make_llama

    class Proxy(LlamaProxy):
        load_llama_from_model_settings = staticmethod(
            _with_names(LlamaProxy.load_llama_from_model_settings, llama_cpp=with_llama))

    upstream = vars(server_app)
    namespace = dict(upstream)
    own = {name: _in_namespace(fn, namespace) for name, fn in upstream.items()
           if isinstance(fn, types.FunctionType) and fn.__globals__ is upstream}
    if authenticate is not None:
        own["authenticate"] = authenticate
    router = APIRouter(route_class=_route_class(server_app.router.route_class))
    fields = ("response_model", "status_code", "tags", "dependencies", "summary", "description",
              "response_description", "responses", "deprecated", "methods", "operation_id", "include_in_schema",
              "response_class", "name", "callbacks", "openapi_extra")
    for route in server_app.router.routes:
        router.add_api_route(route.path, own[route.endpoint.__name__],
                             **{f: getattr(route, f) for f in fields if hasattr(route, f)})
    proxy = Proxy(models=[model_settings])

    def set_llama_proxy(model_settings):  # upstream's setter, with the proxy made above
        namespace["_llama_proxy"] = proxy

    namespace.update(own, router=router, _server_settings=None, _llama_proxy=None, _ping_message_factory=None,
                     llama_outer_lock=anyio.Lock(), llama_inner_lock=anyio.Lock(), set_llama_proxy=set_llama_proxy,
                     os=_NoConfigFile())
    app = namespace["create_app"](server_settings=server_settings, model_settings=[model_settings])
    # routes declare upstream's functions as dependencies (the key check, the settings, the model proxy)
    app.dependency_overrides.update({upstream[name]: fn for name, fn in own.items()})
    return app, proxy()


def grammar_parses(llm, grammar: str) -> bool:
    """Whether llama.cpp parses `grammar` (GBNF, root rule "root") for llm's vocabulary: upstream adds the
    sampler llama_sampler_init_grammar returns, and a grammar that does not parse returns none."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model_pointer(llm))
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8", "replace"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


# --- llama-cpp-python's multimodal chat handlers (mtmd) ---------------------------------------------

# chat_format names of upstream's multimodal handlers (as its server spells them) -> the class in
# llama_cpp.llama_chat_format; None (or "mtmd") is MTMDChatHandler, which renders the model's own template
MULTIMODAL_CHAT_FORMATS = {
    "mtmd": "MTMDChatHandler", "gemma4": "Gemma4ChatHandler", "llava-1-5": "Llava15ChatHandler",
    "llava-1-6": "Llava16ChatHandler", "obsidian": "ObsidianChatHandler", "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler", "llama-3-vision-alpha": "Llama3VisionAlphaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler", "qwen2.5-vl": "Qwen25VLChatHandler",
}


# the chat of a model without a template: the plain prompt and an "Answer:" line, as `eval --answers` asks
# base models (pop_local/measure/answers.py)
PLAIN_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}Answer: {{ m['content'] }}\n"
                  "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}Answer:{% endif %}")


def multimodal_chat_handler(mmproj: str, chat_format: Optional[str] = None, verbose: bool = False):
    """Upstream's chat handler for images through the projector file `mmproj`: the model's own chat
    template (MTMDChatHandler, falling back to plain-text message content for a template that renders
    text only) unless chat_format names one of MULTIMODAL_CHAT_FORMATS."""
    import llama_cpp.llama_chat_format as formats

    check_version()
    if chat_format not in (None, "mtmd"):
        return getattr(formats, MULTIMODAL_CHAT_FORMATS[chat_format])(clip_model_path=mmproj, verbose=verbose)

    class TemplateChatHandler(formats.MTMDChatHandler):
        """MTMDChatHandler hands the template each message's content as a list of text parts (an image
        becomes a part holding mtmd's media marker). A text model's template (SmolLM2's) concatenates
        content as a string and fails on a list: then the parts are joined into that string, as
        list-aware templates join them. A file without a template (a base model) gets PLAIN_TEMPLATE
        (upstream refuses it)."""

        flat = False

        def _get_chat_template(self, llama_model) -> str:
            template = llama_model.metadata.get("tokenizer.chat_template")
            if isinstance(template, str) and template:
                return template
            self.flat = True
            return PLAIN_TEMPLATE

        def _convert_message_for_template(self, message, media_marker):
            converted = super()._convert_message_for_template(message, media_marker)
            content = converted.get("content")
            if self.flat and isinstance(content, list):
                converted["content"] = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
            return converted

        def __call__(self, **kwargs):
            try:
                return super().__call__(**kwargs)
            except TypeError as e:  # from the template (jinja names its frames "<template>"): nothing ran yet
                if self.flat or not any(f.filename == "<template>" for f in traceback.extract_tb(e.__traceback__)):
                    raise
                self.flat = True
                return super().__call__(**kwargs)

    return TemplateChatHandler(clip_model_path=mmproj, verbose=verbose)


def observe_mtmd(handler, wrap) -> bool:
    """Let `wrap(bindings)` stand between a multimodal chat handler and the mtmd bindings it calls
    (upstream's handlers call every mtmd function through their `_mtmd_cpp` attribute); False when
    `handler` is not one of them."""
    bindings = getattr(handler, "_mtmd_cpp", None)
    if bindings is None:
        return False
    _mtmd_logs_like_llama()
    handler._mtmd_cpp = wrap(getattr(bindings, "__wrapped__", bindings))
    return True


def load_projector(handler, llm, mmproj: str) -> None:
    """Create the handler's mtmd context on `llm`'s model now (upstream creates it at the first chat
    request); PopSettingError naming mmproj when the projector does not load or does not fit the model."""
    from pop_local.errors import PopSettingError

    init = getattr(handler, "_init_mtmd_context", None)
    if init is None:
        return
    try:
        init(llm)
    except ValueError as e:
        raise PopSettingError("mmproj", f"{mmproj}: {e} (a llama.cpp projector GGUF made for this model? "
                                        f"llama_log=True shows llama.cpp's reason)") from None


@lru_cache(maxsize=1)
def _mtmd_logs_like_llama() -> None:
    """mtmd (projector, image decoding) logs through llama-cpp-python's callback, so it is as quiet as
    the model's verbose setting (upstream leaves mtmd printing every image batch)."""
    import ctypes

    import llama_cpp._logger as logs
    import llama_cpp.mtmd_cpp as mtmd

    mtmd.mtmd_log_set(logs.llama_log_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(logs.llama_log_callback, ctypes.c_void_p(0))
