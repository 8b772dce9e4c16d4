"""Tiny random-weight GGUFs of architectures no small real model covers, from each one's tensor list and
hyperparameter keys (tests/tiny_specs.py), with SmolLM2's tokenizer and chat template.

    path = tiny_model("qwen3moe")                     # 4 layers, hidden 128: for tests
    path = tiny_model("qwen3moe", Dims(n_layer=24, n_embd=1024, n_ff=2816, n_expert=8))  # for benchmarks

Random weights (seeded) test mechanics and speed, never quality: label every number that comes from them.
Files are cached under the pop-local cache root by architecture, dimensions and spec, so a test session
writes each once; no network.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Dims", "Tensor", "tiny_model", "cache_dir", "write_unquantized"]


@dataclass(frozen=True)
class Dims:
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 32  # flash attention with a quantized V cache needs more than 16
    n_ff: int = 256
    n_expert: int = 4
    n_expert_used: int = 2
    n_ff_exp: int = 64
    n_kv_shared: int = 2  # KV-sharing models (gemma4): the last layers, reusing earlier layers' K/V
    n_ctx: int = 4096
    n_vocab: int = 0  # filled from the tokenizer


@dataclass(frozen=True)
class Tensor:
    """One tensor as llama.cpp's create_tensor() names and shapes it: `ne` fastest dimension first."""
    name: str
    ne: tuple
    init: str = "normal"  # normal (std `scale`), ones, zeros, uniform_neg (-U(0.5, 1.5)), arange
    scale: float = 0.02
    f32: bool = False     # F32 instead of F16 (norms, biases and 1-D tensors are always F32)


def cache_dir() -> Path:
    env = os.environ.get("POP_LOCAL_BUILD_ROOT")
    base = Path(env).expanduser().resolve().parent if env else Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pop-local"
    return base / "tiny-models"


def _tokenizer_fields():
    """SmolLM2-135M-Instruct's tokenizer and chat template keys (the real tokenizer, offline)."""
    from gguf import GGUFReader

    from pop_local.runtime.models import smollm2_path

    reader = GGUFReader(smollm2_path(), "r")
    return [f for name, f in reader.fields.items() if name.startswith("tokenizer.")]


def _array(t: Tensor, rng: np.random.Generator) -> np.ndarray:
    shape = tuple(reversed(t.ne))  # numpy order: slowest first
    if t.init == "ones":
        a = np.ones(shape)
    elif t.init == "zeros":
        a = np.zeros(shape)
    elif t.init == "uniform_neg":
        a = -rng.uniform(0.5, 1.5, shape)
    elif t.init == "arange":
        a = np.broadcast_to(np.arange(1, shape[-1] + 1, dtype=np.float64), shape).copy()
    else:
        a = t.scale * rng.standard_normal(shape)
    f32 = t.f32 or len(t.ne) == 1 or t.name.endswith((".bias", "norm.weight"))
    return a.astype(np.float32 if f32 else np.float16)


def _encode(a: np.ndarray):
    """(data, raw type): matrices whose rows are whole Q8_0 blocks as Q8_0, like the real models' quantized
    weights (their matmuls quantize each activation row on its own, so a token's result does not depend
    on the batch it is in); F32/F16 otherwise."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if a.dtype == np.float16 and a.shape[-1] % 32 == 0:
        return quantize(a.astype(np.float32), GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0
    return a, None


def _add_keys(w, arch: str, keys: dict) -> None:
    from gguf import GGUFValueType

    if "general.name" not in keys:
        w.add_name(f"tiny random {arch} (pop-local tests)")
    for key, value in keys.items():
        full = key if key.startswith(("general.", "tokenizer.")) else f"{arch}.{key}"
        if isinstance(value, bool):
            w.add_bool(full, value)
        elif isinstance(value, int):
            w.add_uint32(full, value)
        elif isinstance(value, float):
            w.add_float32(full, value)
        elif isinstance(value, str):
            w.add_string(full, value)
        elif isinstance(value, (list, tuple)):
            w.add_array(full, list(value))
        else:
            raise TypeError(f"{key}: {type(value)}")
    for field in _tokenizer_fields():
        vtype = field.types[0]
        w.add_key_value(field.name, field.contents(), vtype,
                        sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)


def _write(path: Path, arch: str, keys: dict, tensors: list[Tensor], seed: int) -> None:
    from gguf import GGUFWriter

    from pop_local.format.atomic import atomic_path

    rng = np.random.default_rng(seed)
    with atomic_path(str(path), ".gguf.part") as tmp:
        w = GGUFWriter(tmp, arch)
        _add_keys(w, arch, keys)
        for t in tensors:
            data, raw = _encode(_array(t, rng))
            w.add_tensor(t.name, data, raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def write_unquantized(path: str, arch: str, dims: Dims, seed: int = 0, name: str = "") -> None:
    """A random-weight GGUF of any size in F16/F32, one tensor in memory at a time (for llama.cpp's
    quantizer to turn into a real quantized file: benchmarks/llama8b_shape.py)."""
    from gguf import GGUFWriter

    from pop_local.format.atomic import atomic_path

    from . import tiny_specs

    dims = dataclasses.replace(dims, n_vocab=_n_vocab())
    keys, tensors = tiny_specs.SPECS[arch](dims)
    if name:
        keys = {"general.name": name, **keys}
    rng = np.random.default_rng(seed)
    with atomic_path(path, ".gguf.part") as tmp:
        w = GGUFWriter(tmp, arch)
        _add_keys(w, arch, keys)
        for t in tensors:
            f32 = t.f32 or len(t.ne) == 1 or t.name.endswith((".bias", "norm.weight"))
            dtype = np.dtype(np.float32 if f32 else np.float16)
            shape = tuple(reversed(t.ne))
            w.add_tensor_info(t.name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in tensors:
            w.write_tensor_data(_array(t, rng))
        w.close()


@functools.lru_cache(maxsize=1)
def _n_vocab() -> int:
    from gguf import GGUFReader

    from pop_local.runtime.models import smollm2_path

    return len(GGUFReader(smollm2_path(), "r").fields["tokenizer.ggml.tokens"].data)


def tiny_model(arch: str, dims: Dims | None = None, seed: int = 0) -> str:
    """The path of a random-weight GGUF of `arch` (tests/tiny_specs.py), written once and cached."""
    from . import tiny_specs

    spec = tiny_specs.SPECS[arch]
    dims = dataclasses.replace(dims or Dims(), n_vocab=_n_vocab())
    keys, tensors = spec(dims)
    digest = hashlib.sha256(repr((arch, dims, seed, inspect.getsource(tiny_specs), inspect.getsource(_array),
                                  inspect.getsource(_encode), inspect.getsource(_write))).encode()).hexdigest()[:12]
    path = cache_dir() / f"{arch}-L{dims.n_layer}-E{dims.n_embd}-{digest}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, arch, keys, tensors, seed)
    return str(path)
