"""Open a model for the commands: resolve the reference, load PopLlama, say what will run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from . import _native
from .errors import PopError
from .layers import parse_layers
from .metadata import PopMetadata, read_pop_metadata
from .settings import LoadSettings, PopSettings

__all__ = ["LoadedModel", "open_model", "pop_notes", "pop_state_text", "resolve_model_ref", "resolve_model_meta",
           "check_context"]


@dataclass
class LoadedModel:
    llm: Any                   # PopLlama
    path: str
    meta: PopMetadata
    notes: List[str] = field(default_factory=list)  # what the user should know: full model runs, ...

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def resolve_model_ref(ref: Optional[str], progress: Optional[Callable[[str, int, int], None]] = None) -> str:
    """A local GGUF path: `ref` itself, a hub file, or (None) the embedded default model."""
    if ref is None:
        from .models import default_model_path

        return default_model_path(progress)
    from .hub import resolve_model

    path = resolve_model(ref)
    if os.path.isdir(path):
        raise PopError(f"{ref}: is a folder, not a GGUF file")
    return path


def resolve_model_meta(ref: Optional[str], progress: Optional[Callable[[str, int, int], None]] = None) -> PopMetadata:
    """The metadata of the GGUF `ref` names (None: the default model), its header read once: what a
    command reads at start-up and passes on (open_model(meta=...), PopLlama(metadata=...))."""
    if ref is None:
        from .models import default_model

        return default_model(progress)
    return read_pop_metadata(resolve_model_ref(ref, progress))


def check_context(meta: PopMetadata, n_tokens: int, label: str = "context") -> int:
    """The model's trained context (0 if the file does not say); PopError naming `label` when
    n_tokens exceeds it."""
    trained = meta.context_length
    if trained and n_tokens > trained:
        raise PopError(f"{label} {n_tokens} is more than {os.path.basename(meta.path)}'s context ({trained} tokens)")
    return trained


def pop_state_text(llm) -> str:
    """How prompts will run, in a few words (start-up lines of chat and serve)."""
    from .layers import format_layers

    return f"POP on, skipping layers {format_layers(llm.skip_layers)}" if llm.pop_active else "full model"


def open_model(ref: Optional[str], load: Optional[LoadSettings] = None, pop: Optional[PopSettings] = None, *,
               meta: Optional[PopMetadata] = None, progress: Optional[Callable[[str, int, int], None]] = None,
               labels: Optional[Dict[str, str]] = None, **llama_kwargs: Any) -> LoadedModel:
    """Load `ref` (None: the default model) as a PopLlama with `load` and `pop` settings (extra
    llama_kwargs, e.g. n_ubatch, go to llama.cpp as they are); notes say when the full model runs
    instead. `meta`: the file's metadata when the caller has read it (the header is read once).
    `labels`: how errors name the settings (the CLI's option names)."""
    from .llama import PopLlama

    load = load or LoadSettings()
    pop = pop or PopSettings()
    if meta is None:  # a clear error for a missing or non-GGUF file, before llama.cpp sees it
        meta = resolve_model_meta(ref, progress)
    labels = labels or {}
    check_context(meta, load.n_ctx, labels.get("n_ctx", "n_ctx"))
    if pop.skip_layers:
        parse_layers(pop.skip_layers, meta.n_layer, key=labels.get("skip_layers", "skip_layers"))
    kwargs = {**load.llama_kwargs(), **llama_kwargs}
    llm = PopLlama(meta.path, pop=pop.pop, skip_layers=pop.skip_layers, kv_mode=pop.kv_mode, metadata=meta, **kwargs)
    return LoadedModel(llm, meta.path, meta, pop_notes(llm, meta))


def pop_notes(llm, meta: PopMetadata) -> List[str]:
    """What the user should know about how `llm` will run: when the full model runs, and why."""
    name = os.path.basename(meta.path)
    if not llm.skip_layers:
        if not meta.has_pop_keys:
            return [f"{name} has no pop.* keys: the full model runs "
                    f"(make it POP-ready with `pop-local convert`, or pass --skip-layers)"]
        return [f"{name} has an empty skip set: the full model runs"]
    if not llm.pop_supported:
        return [f"POP does not support the {meta.architecture} architecture in this build "
                f"(supported: {', '.join(_native.ARCHITECTURES)}): the full model runs"]
    if not llm.pop_enabled:
        return ["POP is off (pop.prefill.enabled = false or --no-pop): the full model runs"]
    return []
