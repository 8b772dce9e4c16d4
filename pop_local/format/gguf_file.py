"""A fast reader of a whole GGUF file: every key with its value types, and the tensor table with each
tensor's data as a view of the memory-mapped file.

gguf.GGUFReader builds two numpy views for every element of every array when it opens a file: seconds for
a tokenizer's 50k-250k strings, paid again each time the converter opens its input (the estimate, the
streamed calibration, the fitted tensors, the writer). This reader walks the header once with struct
(about 0.1 s for SmolLM2's 49k-token vocabulary) and gives what those callers use of GGUFReader: keys with
their types (for a faithful copy) and tensors with GGUFReader's data layout (the same numpy shapes and
dtypes, so gguf.dequantize and GGUFWriter take them unchanged). Header checks for untrusted files stay in
gguf_kv.read_gguf_kv, which every command runs first.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .gguf_kv import _ARRAY, _SCALARS, _STRING  # GGUF's value types: one table for both readers

__all__ = ["GGUFField", "GGUFTensor", "GGUFContents", "read_gguf"]

_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GGUFField:
    value: Any                  # str (bytes where not UTF-8), int, float, bool, or a list of those
    vtype: int                  # gguf.GGUFValueType
    sub_type: Optional[int]     # the element type of an array, else None


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: Any            # gguf.GGMLQuantizationType
    shape: Tuple[int, ...]      # ggml's ne order, as GGUFReader's ReaderTensor.shape
    n_elements: int
    n_bytes: int
    data: np.ndarray            # as GGUFReader: typed for float/int tensors, bytes shaped by block otherwise


@dataclass(frozen=True)
class GGUFContents:
    version: int
    alignment: int
    fields: Dict[str, GGUFField]
    tensors: List[GGUFTensor]


def _n_bytes(qtype, dims) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return (int(np.prod(dims, dtype=np.int64)) if dims else 1) * size // block


def _check_complete(path, size: int, start: int, infos) -> None:
    """ValueError when the tensor table names bytes past the end of the file (a copy or a write cut short)."""
    from gguf import GGMLQuantizationType

    end = max((start + rel + _n_bytes(GGMLQuantizationType(ttype), dims) for _, dims, ttype, rel in infos),
              default=start)
    if end > size:
        raise ValueError(f"{path}: cut short: its tensor table needs {end:,} bytes, the file has {size:,}")


def read_gguf(path: "str | os.PathLike[str]") -> GGUFContents:
    """Keys and tensors of the GGUF at `path` (memory-mapped; the tensors' data stay on disk until read).
    ValueError when it is not a GGUF or is shorter than its tensor table says."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quant_shape_to_byte_shape

    mm = np.memmap(path, mode="r")
    buf = memoryview(mm)
    off = 0

    def take(fmt: str):
        nonlocal off
        values = struct.unpack_from(fmt, buf, off)
        off += struct.calcsize(fmt)
        return values[0]

    def string() -> "str | bytes":
        nonlocal off
        n = take("<Q")
        raw = bytes(buf[off:off + n])
        off += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:  # kept as bytes, which GGUFWriter writes back unchanged
            return raw

    def scalar(vtype: int):
        return string() if vtype == _STRING else take(_SCALARS[vtype])

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    off = 4
    version = take("<I")
    n_tensors, n_kv = take("<Q"), take("<Q")
    fields: Dict[str, GGUFField] = {}
    for _ in range(n_kv):
        key = string()
        vtype = take("<I")
        if vtype != _ARRAY:
            fields[key] = GGUFField(scalar(vtype), vtype, None)
            continue
        sub, count = take("<I"), take("<Q")
        if sub in _SCALARS and sub != 7:  # numbers in one read
            dtype = np.dtype(_SCALARS[sub])
            values = np.frombuffer(buf, dtype=dtype, count=count, offset=off).tolist()
            off += dtype.itemsize * count
        else:  # strings, bools (and nested arrays, which no model uses, would fail here loudly)
            values = [scalar(sub) for _ in range(count)]
        fields[key] = GGUFField(values, vtype, sub)
    infos = []
    for _ in range(n_tensors):
        name = string()
        n_dims = take("<I")
        dims = struct.unpack_from(f"<{n_dims}Q", buf, off)
        off += 8 * n_dims
        ttype, rel = take("<I"), take("<Q")
        infos.append((name, dims, ttype, rel))
    align_field = fields.get("general.alignment")
    alignment = int(align_field.value) if align_field else _DEFAULT_ALIGNMENT
    start = off + (-off % alignment)
    typed = {GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
             GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
             GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
             GGMLQuantizationType.I64: np.int64}
    _check_complete(path, len(mm), start, infos)
    tensors = []
    for name, dims, ttype, rel in infos:
        qtype = GGMLQuantizationType(ttype)
        n_elements = int(np.prod(dims, dtype=np.int64)) if dims else 1
        n_bytes = _n_bytes(qtype, dims)
        np_dims = tuple(reversed(dims))
        at = start + rel
        if qtype in typed:
            data = mm[at:at + n_bytes].view(typed[qtype]).reshape(np_dims)
        else:
            data = mm[at:at + n_bytes].reshape(quant_shape_to_byte_shape(np_dims, qtype))
        tensors.append(GGUFTensor(name, qtype, tuple(dims), n_elements, n_bytes, data))
    return GGUFContents(version, alignment, fields, tensors)
