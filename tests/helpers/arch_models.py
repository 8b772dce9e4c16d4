"""Real-weight test models for architectures with no small GGUF installable offline.

No Qwen2 or Qwen3 GGUF small enough for these tests can be installed without the network, so the
tests rewrite SmolLM2-135M-Instruct (llama) as those architectures: the same quantized weights,
tokenizer and chat template, with what each architecture adds:

- qwen2: Q/K rows in Hugging Face order (llama GGUFs interleave RoPE pairs; qwen2 uses NeoX RoPE on
  the plain order, which is the same rotation), plus small seeded Q/K/V biases so that the bias path runs.
- qwen3: the same order, plus per-head RMS norms on Q and K before RoPE (weights 1).
- ernie4_5: the llama tensors under an architecture POP does not support (for the "unsupported" path).

qwen2 with zero biases would compute exactly what SmolLM2 computes; the small biases and qwen3's norms
make them nearby, still fluent, models. Row permutation works on the quantized bytes directly: each
row of a Q4_1/Q8_0 matrix is quantized on its own.
"""

from __future__ import annotations

import numpy as np

from pop_local.format.atomic import atomic_path

ARCHES = ("qwen2", "qwen3", "ernie4_5")


def _unpermute_rows(data: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's llama Q/K permutation, on rows (axis 0) of raw tensor data."""
    rows = data.shape[0]
    return (data.reshape(n_head, rows // n_head // 2, 2, *data.shape[1:])
            .swapaxes(1, 2).reshape(data.shape).copy())


def _norm_weight(reader, t, rows: np.ndarray, head_dim: int) -> np.ndarray:
    """Q/K norm weights that give normed Q/K about the size the projection gives for a typical input:
    per head channel, the RMS over heads of that row's norm (with the layer's attn_norm applied)."""
    from gguf.quants import dequantize

    layer = t.name.split(".")[1]
    gain = next(x for x in reader.tensors if x.name == f"blk.{layer}.attn_norm.weight").data
    w = dequantize(rows, t.tensor_type).reshape(-1, head_dim, gain.shape[0]) * gain
    return np.sqrt((w ** 2).sum(axis=2).mean(axis=0)).astype(np.float32)


def rewrite_as(src: str, dst: str, arch: str, *, seed: int = 0) -> str:
    """Write `dst`: the llama GGUF `src` as architecture `arch` (see the module doc)."""
    import gguf
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

    if arch not in ARCHES:
        raise ValueError(f"arch must be one of {ARCHES}")
    reader = GGUFReader(src, "r")
    if reader.fields["general.architecture"].contents() != "llama":
        raise ValueError(f"{src}: expected a llama GGUF")
    n_head = int(reader.fields["llama.attention.head_count"].contents())
    n_head_kv = int(reader.fields["llama.attention.head_count_kv"].contents())
    n_embd = int(reader.fields["llama.embedding_length"].contents())
    head_dim = n_embd // n_head
    rng = np.random.default_rng(seed)

    with atomic_path(dst, ".gguf.part") as tmp:
        writer = GGUFWriter(tmp, arch)
        for field in reader.fields.values():
            name = field.name
            if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
                continue
            if name.startswith("llama."):
                name = arch + name[len("llama"):]
            vtype = field.types[0]
            writer.add_key_value(name, field.contents(), vtype,
                                 sub_type=field.types[-1] if vtype == GGUFValueType.ARRAY else None)
        if arch == "qwen3":  # Qwen3 GGUFs state the head size (transformers' default would be 128)
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        tensors = []
        for t in reader.tensors:
            data = t.data
            if arch != "ernie4_5" and t.name.endswith((".attn_q.weight", ".attn_k.weight")):
                data = _unpermute_rows(data, n_head if ".attn_q." in t.name else n_head_kv)
            tensors.append((t.name, data, t.tensor_type))
            prefix = t.name.rsplit(".", 2)[0]
            if arch == "qwen2" and t.name.endswith(".attn_v.weight"):
                for proj, n_out in (("attn_q", n_embd), ("attn_k", n_head_kv * head_dim),
                                    ("attn_v", n_head_kv * head_dim)):
                    bias = (0.05 * rng.standard_normal(n_out)).astype(np.float32)
                    tensors.append((f"{prefix}.{proj}.bias", bias, GGMLQuantizationType.F32))
            if arch == "qwen3" and t.name.endswith((".attn_q.weight", ".attn_k.weight")):
                norm = "attn_q_norm" if ".attn_q." in t.name else "attn_k_norm"
                tensors.append((f"{prefix}.{norm}.weight", _norm_weight(reader, t, data, head_dim),
                                GGMLQuantizationType.F32))
        for name, data, qtype in tensors:
            writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for _, data, _ in tensors:
            writer.write_tensor_data(data)
        writer.close()
    return dst
