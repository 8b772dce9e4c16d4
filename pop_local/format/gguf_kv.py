"""A fast reader of a GGUF file's key-value header (no tensors).

gguf.GGUFReader builds numpy views for every element of every array, which takes seconds for a
tokenizer's 50k-250k strings; the commands read the header several times at start-up. This reader
walks the header once with struct: scalars and numeric arrays are decoded, string arrays are
decoded only for the keys asked for (others are skipped by their lengths and left out).
"""

from __future__ import annotations

import os
import struct
from typing import Any, Callable, Dict, Optional

import numpy as np

__all__ = ["read_gguf_kv", "GGUFFormatError", "U32", "BOOL", "STRING"]

_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1", 10: "<u8", 11: "<i8",
          12: "<f8"}
_STRING, _ARRAY = 8, 9
U32, BOOL, STRING = 4, 7, _STRING  # value types the pop.* checks name


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF header this reader understands."""


def read_gguf_kv(path: "str | os.PathLike[str]", want_strings: Optional[Callable[[str], bool]] = None,
                 types: Optional[Dict[str, int]] = None) -> Dict[str, Any]:
    """All keys of the GGUF at `path` -> Python values (str, int, float, bool, list).

    String arrays are included only when want_strings(key) is true (default: pop.* keys and
    general.* keys); other string arrays (tokenizer vocabularies) are skipped. `types`, when given,
    receives each key's GGUF value type (e.g. U32 for a u32), for checks that need the exact type.
    """
    # Long: one bounds-checked pass over an untrusted header (a fuzzing target, tests/test_fuzz.py), its
    # reader state kept in local variables rather than spread over helpers.
    want = want_strings or (lambda k: k.startswith(("pop.", "general.")))
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data = f.read(1 << 20)
        if data[:4] != _MAGIC:
            raise GGUFFormatError("not a GGUF file (bad magic)")
        if len(data) < 24:
            raise GGUFFormatError("file ends inside its header")
        version, = struct.unpack_from("<I", data, 4)
        if version < 2:
            raise GGUFFormatError(f"GGUF version {version} is too old")
        # the header can be larger than the first read (big vocabularies): read the whole file lazily
        buf = bytearray(data)

        def need(end: int) -> None:
            # every length and count is checked against the file's size before anything is read or
            # allocated: a corrupt count (2^63 elements) is an error, not a huge allocation or a long loop
            if end > size:
                raise GGUFFormatError("file ends inside its header (a length or count runs past the end)")
            while end > len(buf):
                more = f.read(max(1 << 20, end - len(buf)))
                if not more:
                    raise GGUFFormatError("file ends inside its header")
                buf.extend(more)

        n_kv, = struct.unpack_from("<Q", buf, 16)
        if n_kv * 12 > size:  # a key is at least 12 bytes (length, type)
            raise GGUFFormatError(f"{n_kv} keys cannot fit in a {size}-byte file")
        pos = 24
        out: Dict[str, Any] = {}

        def read_str(p: int):
            need(p + 8)
            n, = struct.unpack_from("<Q", buf, p)
            need(p + 8 + n)
            return bytes(buf[p + 8:p + 8 + n]).decode("utf-8", errors="replace"), p + 8 + n

        for _ in range(n_kv):
            start = pos
            key, pos = read_str(pos)
            if not key.isprintable() or "\ufffd" in key:
                raise GGUFFormatError(f"the key name at byte {start} is not text (a corrupt header)")
            key = key if len(key) <= 80 else key[:77] + "..."
            need(pos + 4)
            vtype, = struct.unpack_from("<I", buf, pos)
            pos += 4
            if types is not None:
                types[key] = vtype
            if vtype == _STRING:
                out[key], pos = read_str(pos)
            elif vtype in _SCALARS:
                fmt = _SCALARS[vtype]
                need(pos + struct.calcsize(fmt))
                out[key], = struct.unpack_from(fmt, buf, pos)
                pos += struct.calcsize(fmt)
            elif vtype == _ARRAY:
                need(pos + 12)
                etype, count = struct.unpack_from("<IQ", buf, pos)
                pos += 12
                if etype == _STRING:
                    need(pos + 8 * count)  # each string has at least its 8-byte length
                    keep = want(key)
                    items = []
                    for _ in range(count):
                        need(pos + 8)
                        n, = struct.unpack_from("<Q", buf, pos)
                        if keep:
                            need(pos + 8 + n)
                            items.append(bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
                        pos += 8 + n
                    if keep:
                        out[key] = items
                elif etype in _NUMPY:
                    dt = np.dtype(_NUMPY[etype])
                    need(pos + dt.itemsize * count)
                    arr = np.frombuffer(bytes(buf[pos:pos + dt.itemsize * count]), dtype=dt)
                    out[key] = [bool(x) for x in arr] if etype == 7 else arr.tolist()
                    pos += dt.itemsize * count
                else:
                    raise GGUFFormatError(f"{key}: unsupported array element type {etype}")
            else:
                raise GGUFFormatError(f"{key}: unknown value type {vtype}")
        return out
