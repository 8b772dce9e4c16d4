"""Copy a GGUF file with pop.* keys added: every original key and tensor kept bit-identical.

The output is written to a temporary file next to it and renamed into place, so an interrupted
write never leaves a partial model; the input is only read.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Optional, Tuple

from pop_local.errors import PopError, PopMetadataError
from pop_local.format import keys
from pop_local.format.atomic import atomic_path
from pop_local.format.layers import format_layers, parse_layers

__all__ = ["write_pop_gguf"]


def _pop_fields(skip_layers: "Iterable[int] | str", enabled: bool, n_layer: int,
                extra: Optional[Dict[str, Any]], min_tokens: Optional[int] = None) -> Dict[str, Any]:
    layers = parse_layers(skip_layers, n_layer)
    if not layers:
        # the gguf package silently drops empty strings: refuse instead of writing a file without the key
        raise PopMetadataError(keys.SKIP_LAYERS, "refusing to write an empty skip set")
    fields: Dict[str, Any] = {
        keys.VERSION: keys.SCHEMA_VERSION,
        keys.SKIP_LAYERS: format_layers(layers),
        keys.ENABLED: bool(enabled),
    }
    if min_tokens is not None:
        from pop_local.format.metadata import check_token_count

        fields[keys.MIN_TOKENS] = check_token_count(min_tokens, keys.MIN_TOKENS)
    for name, value in (extra or {}).items():
        if not name.startswith(keys.PREFIX) or name in fields:
            raise PopMetadataError(name, "extra keys must be new pop.* keys")
        if value is None or (hasattr(value, "__len__") and len(value) == 0):
            raise PopMetadataError(name, "refusing to write an empty value")
        fields[name] = value
    return fields


def write_pop_gguf(src: "str | os.PathLike[str]", dst: "str | os.PathLike[str]", skip_layers: "Iterable[int] | str",
                   *, enabled: bool = True, min_tokens: Optional[int] = None,
                   extra: Optional[Dict[str, Any]] = None, force: bool = False,
                   extra_tensors: Optional[Dict[str, Tuple[Any, Any]]] = None) -> str:
    """Write `dst`: `src` with pop.version, pop.prefill.skip_layers, pop.prefill.enabled (+ `extra`;
    pop.prefill.min_tokens when `min_tokens` is given, else the runtime's default applies).

    Existing pop.* keys and pop tensors (blk.N.attn_k.pop, ...) of `src` are replaced;
    `extra_tensors` ({name: (data, GGMLQuantizationType)}, names ending in ".pop") are appended.
    Raises PopError if `dst` exists and not `force`.
    """
    import gguf
    from gguf import GGUFValueType, GGUFWriter

    from pop_local.format.gguf_file import read_gguf
    from pop_local.format.metadata import read_pop_metadata

    src, dst = os.fspath(src), os.fspath(dst)
    meta = read_pop_metadata(src)  # validates the input first: a clear error before any write
    if os.path.abspath(src) == os.path.abspath(dst):
        raise PopError(f"{dst}: the output must be a new file, not the input")
    if os.path.exists(dst) and not force:
        raise PopError(f"{dst} exists (use `force=True` to replace it)")
    fields = _pop_fields(skip_layers, enabled, meta.n_layer, extra, min_tokens)

    reader = read_gguf(src)
    with atomic_path(dst, ".gguf.part") as tmp:
        writer = GGUFWriter(tmp, meta.architecture)
        for name, field in reader.fields.items():
            if name.startswith(keys.PREFIX) or name == gguf.Keys.General.ARCHITECTURE:
                continue
            if name == gguf.Keys.General.ALIGNMENT:
                writer.data_alignment = int(field.value)
            writer.add_key_value(name, field.value, GGUFValueType(field.vtype),
                                 sub_type=None if field.sub_type is None else GGUFValueType(field.sub_type))
        for name, value in fields.items():
            if isinstance(value, bool):
                writer.add_bool(name, value)
            elif isinstance(value, int):
                writer.add_uint32(name, value)
            else:
                writer.add_key_value(name, value, GGUFValueType.get_type(value),
                                     sub_type=GGUFValueType.get_type(value[0]) if isinstance(value, (list, tuple))
                                     else None)
        kept = [t for t in reader.tensors if not t.name.endswith(keys.POP_TENSOR_SUFFIX)]
        for t in kept:
            writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        added = sorted((extra_tensors or {}).items())
        for name, (data, qtype) in added:
            if not name.endswith(keys.POP_TENSOR_SUFFIX):
                raise PopMetadataError(name, f"added tensors must be pop tensors (*{keys.POP_TENSOR_SUFFIX})")
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in kept:
            writer.write_tensor_data(t.data)
        for _, (data, _) in added:
            writer.write_tensor_data(data)
        writer.close()
    return dst
