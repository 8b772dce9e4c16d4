"""Read a GGUF file's POP metadata without loading the model (gguf package, memory-mapped)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

from pop_local.errors import PopMetadataError, PopModelNotFound

from . import keys
from .frontier import Frontier, read_frontier
from .layers import format_layers, parse_layers

__all__ = ["PopMetadata", "read_pop_metadata", "read_header", "resolve_runtime_metadata", "check_token_count"]


@dataclass(frozen=True)
class PopMetadata:
    """What a GGUF says about POP. `skip_layers` is () when the file has no skip set."""

    path: str
    architecture: str
    n_layer: int
    version: Optional[int]
    skip_layers: Tuple[int, ...]
    enabled: bool
    has_pop_keys: bool
    extra: Dict[str, Any] = field(default_factory=dict)  # other pop.* keys, as read
    frontier: Optional["Frontier"] = None  # the quality/speed frontier of a budgeted conversion
    context_length: int = 0  # the trained context ({arch}.context_length); 0 when the file does not say
    min_tokens: int = keys.DEFAULT_MIN_TOKENS  # prompt evaluations shorter than this run full (pop.prefill.min_tokens)
    full_tail: int = keys.DEFAULT_FULL_TAIL  # a pruned prompt's last tokens that run full (pop.prefill.full_tail)

    @property
    def skip_layers_text(self) -> str:
        return format_layers(self.skip_layers)


def read_header(path: "str | os.PathLike[str]", types: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """The GGUF key-value header of `path` (tokenizer string arrays left out); clear errors for bad
    files. `types` receives each key's GGUF value type."""
    from .gguf_kv import read_gguf_kv

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise PopModelNotFound(f"{path}: no such file")
    try:
        return read_gguf_kv(path, types=types)
    except Exception as e:  # truncated or foreign files fail in many ways: one message for all
        raise PopMetadataError(path, f"not a readable GGUF file ({type(e).__name__}: {e})") from e


def read_pop_metadata(path: "str | os.PathLike[str]") -> PopMetadata:
    """Architecture, layer count and the pop.* keys of a GGUF file, validated like the runtime does."""
    from .gguf_kv import U32

    path = os.fspath(path)
    types: Dict[str, int] = {}
    header = read_header(path, types)
    arch = header.get("general.architecture")
    if not isinstance(arch, str):
        raise PopMetadataError(path, "general.architecture missing; not a model GGUF")
    n_layer = header.get(f"{arch}.block_count")
    if not isinstance(n_layer, int):
        raise PopMetadataError(path, f"{arch}.block_count missing")

    version = header.get(keys.VERSION)
    if version is not None and types.get(keys.VERSION) != U32:  # as native/pop.cpp requires
        raise PopMetadataError(keys.VERSION, f"expected a u32, got {version!r}"[:200])
    if version is not None and not 1 <= version <= keys.SCHEMA_VERSION:
        raise PopMetadataError(
            keys.VERSION, f"schema version {version!r} is not supported (this pop-local reads "
            f"{keys.SCHEMA_VERSION}); update pop-local")

    skip_raw = header.get(keys.SKIP_LAYERS)
    if skip_raw is not None and not isinstance(skip_raw, str):
        raise PopMetadataError(keys.SKIP_LAYERS, f"expected a string, got {type(skip_raw).__name__}")
    skip = parse_layers(skip_raw, n_layer) if skip_raw is not None else ()
    enabled_raw = header.get(keys.ENABLED)
    if enabled_raw is not None and not isinstance(enabled_raw, bool):
        raise PopMetadataError(keys.ENABLED, f"expected a bool, got {enabled_raw!r}"[:200])

    counts = {}
    for key in (keys.MIN_TOKENS, keys.FULL_TAIL):
        value = header.get(key)
        if value is not None:
            if types.get(key) != U32:
                raise PopMetadataError(key, f"expected a u32, got {value!r}"[:200])
            counts[key] = check_token_count(value, key)

    extra = {}
    for name, value in header.items():
        if name.startswith(keys.PREFIX) and name not in keys.RUNTIME_KEYS + keys.PYTHON_RUNTIME_KEYS:
            extra[name] = value

    context = header.get(f"{arch}.context_length")
    return PopMetadata(
        path=path,
        architecture=arch,
        n_layer=n_layer,
        version=version,
        skip_layers=skip,
        enabled=True if enabled_raw is None else enabled_raw,
        has_pop_keys=any(name.startswith(keys.PREFIX) for name in header),
        extra=extra,
        frontier=read_frontier(extra, n_layer, skip),
        context_length=max(0, context) if type(context) is int else 0,
        min_tokens=counts.get(keys.MIN_TOKENS, keys.DEFAULT_MIN_TOKENS),
        full_tail=counts.get(keys.FULL_TAIL, keys.DEFAULT_FULL_TAIL),
    )


def check_token_count(value: Any, key: str) -> int:
    """A number of prompt tokens (the prompt minimum, the full-depth tail): 0 to keys.MAX_MIN_TOKENS."""
    if type(value) is not int or not 0 <= value <= keys.MAX_MIN_TOKENS:
        raise PopMetadataError(key, f"expected a whole number of tokens from 0 to {keys.MAX_MIN_TOKENS}, "
                                    f"got {value!r}"[:200])
    return value


def resolve_runtime_metadata(meta: PopMetadata, kv_overrides: Optional[Mapping[str, Any]]) -> PopMetadata:
    """The skip set, switch, prompt minimum and full-depth tail the runtime will use once `kv_overrides`
    are applied (same checks as native for its keys)."""
    if not kv_overrides:
        return meta
    skip, enabled = meta.skip_layers, meta.enabled
    min_tokens, full_tail = meta.min_tokens, meta.full_tail
    if keys.MIN_TOKENS in kv_overrides:
        min_tokens = check_token_count(kv_overrides[keys.MIN_TOKENS], keys.MIN_TOKENS)
    if keys.FULL_TAIL in kv_overrides:
        full_tail = check_token_count(kv_overrides[keys.FULL_TAIL], keys.FULL_TAIL)
    if keys.SKIP_LAYERS in kv_overrides:
        value = kv_overrides[keys.SKIP_LAYERS]
        if not isinstance(value, str):
            raise PopMetadataError(keys.SKIP_LAYERS, f'the override must be a string such as "20-29", got {value!r}')
        skip = parse_layers(value, meta.n_layer)
    if keys.ENABLED in kv_overrides:
        value = kv_overrides[keys.ENABLED]
        if not isinstance(value, bool):
            raise PopMetadataError(keys.ENABLED, f"the override must be a bool, got {value!r}"[:200])
        enabled = value
    return dataclasses.replace(meta, skip_layers=skip, enabled=enabled, min_tokens=min_tokens, full_tail=full_tail)
