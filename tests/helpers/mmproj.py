"""Random-weight multimodal projectors (mmproj) in llama.cpp's clip GGUF format, and test images.

No vision-language GGUF with its projector is installable offline here, so the multimodal tests pair a
real language model (SmolLM2-135M, Gemma-3-270M) or a tiny generated one with a projector written here.
Random weights test the mechanics (which tokens run pruned, what lands in the KV cache, positions,
non-causal image batches) and the speed, never the quality: label every number that comes from them.

Tensor and key names are the vendored llama.cpp's (tools/mtmd/clip-impl.h, clip.cpp's loader), through
gguf-py's constants where it has them:

- "mlp" (LLaVA-1.5): a ViT (layer norms, attention, GELU MLP; the last block is not run), then
  mm.0 -> GELU -> mm.2 to the language model's width; (image_size / patch_size)^2 image tokens, the
  image resized to image_size. Positions are ordinary, attention causal.
- "gemma3": a ViT, 2-D average pooling by `merge`, RMS norm, a projection; ((image_size / patch_size) /
  merge)^2 tokens. mtmd decodes these image tokens with non-causal attention (one ubatch).
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path

import numpy as np

from .tiny_models import cache_dir

__all__ = ["mmproj", "image_tokens", "png_bytes", "write_png", "ask", "kv_of", "check_kv_against_full"]

_VISION = dict(n_embd=32, n_head=2, n_ff=64, n_layer=2)


def image_tokens(kind: str, image_size: int, patch_size: int, merge: int = 2) -> int:
    """The image tokens a projector of `kind` gives for any image (both resize to image_size)."""
    side = image_size // patch_size
    return side * side if kind == "mlp" else (side // merge) ** 2


def _tensors(kind: str, n_embd_lm: int, image_size: int, patch_size: int) -> dict:
    E, F = _VISION["n_embd"], _VISION["n_ff"]
    n_patch = (image_size // patch_size) ** 2
    t = {  # numpy shapes (slowest dimension first): gguf-py reverses them into ggml's ne
        "v.patch_embd.weight": (E, 3, patch_size, patch_size),
        "v.patch_embd.bias": (E,),
        "v.position_embd.weight": (n_patch, E),
    }
    for i in range(_VISION["n_layer"]):
        p = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            t[p + name + ".weight"], t[p + name + ".bias"] = (E, E), (E,)
        for name in ("ln1", "ln2"):
            t[p + name + ".weight"], t[p + name + ".bias"] = (E,), (E,)
        t[p + "ffn_up.weight"], t[p + "ffn_up.bias"] = (F, E), (F,)
        t[p + "ffn_down.weight"], t[p + "ffn_down.bias"] = (E, F), (E,)
    if kind == "mlp":
        t.update({"mm.0.weight": (F, E), "mm.0.bias": (F,), "mm.2.weight": (n_embd_lm, F), "mm.2.bias": (n_embd_lm,)})
    else:
        t.update({"v.post_ln.weight": (E,), "v.post_ln.bias": (E,), "mm.soft_emb_norm.weight": (E,),
                  "mm.input_projection.weight": (E, n_embd_lm)})
    return t


def _write(path: Path, kind: str, n_embd_lm: int, image_size: int, patch_size: int, merge: int, seed: int) -> None:
    import gguf

    from pop_local.format.atomic import atomic_path

    rng = np.random.default_rng(seed)
    with atomic_path(str(path), ".gguf.part") as tmp:
        w = gguf.GGUFWriter(tmp, "clip")
        w.add_name(f"random {kind} projector (pop-local tests)")
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type(kind)
        w.add_vision_image_size(image_size)
        w.add_vision_patch_size(patch_size)
        w.add_vision_embedding_length(_VISION["n_embd"])
        w.add_vision_feed_forward_length(_VISION["n_ff"])
        w.add_vision_projection_dim(n_embd_lm)
        w.add_vision_block_count(_VISION["n_layer"])
        w.add_vision_head_count(_VISION["n_head"])
        w.add_vision_attention_layernorm_eps(1e-6)
        w.add_vision_image_mean([0.5, 0.5, 0.5])
        w.add_vision_image_std([0.5, 0.5, 0.5])
        if kind == "gemma3":
            w.add_vision_projector_scale_factor(merge)
        for name, shape in _tensors(kind, n_embd_lm, image_size, patch_size).items():
            if name.endswith(("norm.weight", "ln1.weight", "ln2.weight", "post_ln.weight")):
                a = np.ones(shape)
            elif name.endswith(".bias"):
                a = np.zeros(shape)
            else:  # scaled so that the image embeddings come out about as large as token embeddings
                a = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) if len(shape) > 1 else 1.0)
            w.add_tensor(name, a.astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()


def mmproj(kind: str, n_embd_lm: int, *, image_size: int = 32, patch_size: int = 4, merge: int = 2,
           seed: int = 0) -> str:
    """The path of a random `kind` ("mlp" or "gemma3") projector into a language model of width
    n_embd_lm, written once and cached; it gives image_tokens(kind, image_size, patch_size, merge) tokens."""
    if kind not in ("mlp", "gemma3"):
        raise ValueError(f"kind must be mlp or gemma3, got {kind!r}")
    digest = hashlib.sha256(repr((kind, n_embd_lm, image_size, patch_size, merge, seed, _VISION,
                                  inspect.getsource(_tensors), inspect.getsource(_write))).encode()).hexdigest()[:12]
    path = cache_dir() / f"mmproj-{kind}-{n_embd_lm}-S{image_size}-P{patch_size}-{digest}.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, kind, n_embd_lm, image_size, patch_size, merge, seed)
    return str(path)


def png_bytes(width: int = 48, height: int = 40, seed: int = 0) -> bytes:
    """A PNG of seeded random colours (each seed a different image)."""
    from pop_local.runtime.multimodal import synthetic_png

    return synthetic_png(width, height, seed)


def write_png(path, width: int = 48, height: int = 40, seed: int = 0) -> str:
    Path(path).write_bytes(png_bytes(width, height, seed))
    return str(path)


# --- requests and their KV cache (tests/test_multimodal.py, tests/test_gpu_offload.py) ----------------

def ask(llm, *images, text="Describe the picture in one word."):
    """One chat request with `images` in the user message; returns (counter deltas, reply text)."""
    from pop_local.runtime.multimodal import image_content

    before = llm.pop_stats()
    out = llm.create_chat_completion(messages=[{"role": "user", "content": image_content(text, list(images))}],
                                     max_tokens=1, temperature=0)
    after = llm.pop_stats()
    delta = {k: after[k] - before[k] for k in ("pruned_tokens", "full_tokens", "image_tokens", "image_pruned_tokens",
                                               "short_prompts")}
    return delta, out["choices"][0]["message"]["content"]


def kv_of(llm, *images, pop: bool):
    """{layer: (K, V)} of the prompt's cells but its last (the boundary token, which runs alone at full
    depth under POP and inside its chunk without: float rounding may differ there; test_multimodal's
    exact-first-token test checks it), after a one-token reply to a prompt with `images`, POP on or off.
    F16 cache, V transposed."""
    from .llama_contexts import cache_layers

    llm.pop_enabled = pop
    try:
        ask(llm, *images)
        cells = llm.n_tokens  # the prompt's positions: one cell each (no sliding window is full here)
        out = {}
        for il, (k, v) in cache_layers(llm.ctx).items():
            k, v = np.frombuffer(k, np.uint16), np.frombuffer(v, np.uint16)
            assert k.size % cells == 0 and v.size % cells == 0
            out[il] = (k.reshape(cells, -1)[:-1].tobytes(), v.reshape(-1, cells)[:, :-1].tobytes())
        return out
    finally:
        llm.pop_enabled = True


def check_kv_against_full(llm, *images):
    """Layers up to the first skipped one hold exactly the full model's K/V (their inputs are exact); a
    deeper one differs (it really was skipped)."""
    first = min(llm.skip_layers)
    pop, full = kv_of(llm, *images, pop=True), kv_of(llm, *images, pop=False)
    for il in range(first + 1):
        assert pop[il] == full[il], f"layer {il}"
    assert any(pop[il] != full[il] for il in pop if il > first)
