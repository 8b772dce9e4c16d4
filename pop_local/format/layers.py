"""Skip sets: the one parser (text such as "20-29", "20,21,28", "" or layer numbers). The text syntax
mirrors pop_parse_layers in native/pop.cpp."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Tuple

from pop_local.errors import PopMetadataError

from . import keys

__all__ = ["parse_layers", "check_range", "format_layers", "is_block"]

_ITEM = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$", re.ASCII)  # ASCII digits and spaces, as native
_EXPECTED = '(expected ascending layer indices such as "20-29" or "20,21,28")'


def _quoted(text: str) -> str:
    """`text` for a one-line message: quoted, control characters escaped, at most about 60 characters."""
    import json

    shown = json.dumps(text if len(text) <= 60 else text[:57] + "...", ensure_ascii=False)
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in shown)


def parse_layers(value: "str | Iterable[int]", n_layer: Optional[int] = None,
                 key: str = keys.SKIP_LAYERS) -> Tuple[int, ...]:
    """The one skip-set parser: text ("20-29", "20,21,28", "") or layer numbers -> ascending layer
    indices, checked against n_layer when it is given; PopMetadataError naming `key`."""
    if isinstance(value, str):
        layers = _parse_text(value, key)
    else:
        try:
            layers = tuple(int(x) for x in value)
        except (TypeError, ValueError):
            raise PopMetadataError(key, f"expected a string or layer numbers, got {type(value).__name__}") from None
        if list(layers) != sorted(set(layers)):
            raise PopMetadataError(key, f"layers must be ascending and unique, got {list(layers)}")
        if layers and layers[0] < 0:
            raise PopMetadataError(key, f"layer {layers[0]} is out of range")
    if n_layer is not None:
        check_range(layers, n_layer, key)
    return layers


def check_range(layers: Tuple[int, ...], n_layer: int, key: str = keys.SKIP_LAYERS) -> None:
    """PopMetadataError naming `key` when a parsed skip set names a layer the model does not have."""
    if layers and layers[-1] >= n_layer:
        raise PopMetadataError(key, f"layer {layers[-1]} is out of range "
                                    f"(the model has {n_layer} layers, 0-{n_layer - 1})")


def _parse_text(text: str, key: str) -> Tuple[int, ...]:
    if not text.strip():
        return ()
    layers: list[int] = []
    for part in text.split(","):
        m = _ITEM.match(part)
        if not m:
            raise PopMetadataError(key, f'cannot read {_quoted(part.strip())} in {_quoted(text)} {_EXPECTED}')
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) is not None else a
        if b < a:
            raise PopMetadataError(key, f'range {a}-{b} is descending in {_quoted(text)} {_EXPECTED}')
        if layers and a <= layers[-1]:
            raise PopMetadataError(key, f'layer {a} is not ascending or repeated in {_quoted(text)} {_EXPECTED}')
        layers.extend(range(a, b + 1))
    return tuple(layers)


def format_layers(layers: Iterable[int]) -> str:
    """Canonical string of a layer set: ascending, consecutive runs as ranges ("20-29")."""
    items = sorted({int(x) for x in layers})
    out: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}-{items[j]}")
        i = j + 1
    return ",".join(out)


def is_block(layers: Iterable[int]) -> bool:
    """True for one contiguous run of layers (20-29), False for gaps (20,22) or none."""
    layers = list(layers)
    return bool(layers) and layers == list(range(layers[0], layers[-1] + 1))
