"""What a calibration will cost (time, peak memory) before it starts, and the refusal when it cannot fit.

The constants are measured on a 2-core x86_64 machine (benchmarks/converter_cost.py records the
runs they come from): torch float32 matmuls at about 100 GFLOP/s, gguf's dequantization at about
50 M weights/s, llama.cpp's prompt processing at about 3 x 10^11 weight-tokens/s and its sampling
at about 7 x 10^9 weight-tokens/s. Faster machines finish sooner; the estimate is an upper guide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from pop_local.errors import PopError

from .calibrate import HELD_OUT_TOKENS

__all__ = ["Cost", "estimate", "available_memory", "check_memory", "BASE_BYTES"]

TORCH_FLOPS = 1.5e11       # float32 matmuls of a layer over a batch of tokens, 2 cores
DEQUANT_RATE = 6.0e7       # weights / s, gguf.dequantize
LLAMA_PREFILL = 3.0e11     # weights x tokens / s, llama.cpp prompt processing (quantized, 2 threads)
LLAMA_DECODE = 2.5e10      # weights x tokens / s, llama.cpp sampling one token at a time
EIGH_1536 = 0.9            # s for one float64 eigendecomposition of a 1536 x 1536 matrix (one per fit)
BASE_BYTES = 1.5 * 2**30   # python, torch, transformers, a tokenizer, the heap a sweep leaves (measured: SmolLM2 2.3 GB peak)
LOAD_SECONDS = 20.0        # imports
FILE_SECONDS = 1.15e-7     # per byte of GGUF: reading its config and tokenizer, writing the output copy
TEMPLATE_TOKENS = 40       # a chat template's tokens around a prompt
CHARS_PER_TOKEN = 5.0      # the built-in prompts: about 5 characters per token beyond the template


@dataclass
class Cost:
    seconds: float
    peak_bytes: int
    streamed: bool
    stages: Dict[str, float] = field(default_factory=dict)  # seconds per stage
    scratch_bytes: int = 0  # the streamed path's hidden states and fits on disk ($TMPDIR)

    def describe(self) -> str:
        return f"about {max(1, round(self.seconds / 60))} min and {self.peak_bytes / 2**30:.1f} GB"


def _shape(src: str):
    from gguf import GGUFReader

    from pop_local.measure.flops import model_shape

    reader = GGUFReader(src, "r")
    sizes = {t.name: int(t.n_elements) for t in reader.tensors}
    shape = model_shape(src)
    head = sizes.get("output.weight", sizes.get("token_embd.weight", 0))
    vocab = head // max(1, shape.n_embd)
    block = {}
    for name, n in sizes.items():
        if name.startswith("blk."):
            il = int(name.split(".")[1])
            block[il] = block.get(il, 0) + n
    return shape, sizes, vocab, block


def estimate(src: str, samples: int, seq_len: int, response_tokens: int, *, frontier_ratio: Optional[float] = None,
             streamed: bool = True, prompts: Optional[Sequence[str]] = None) -> Cost:
    """Time and peak memory of a calibration of `src` (frontier_ratio: a quality budget's max ratio;
    `prompts`: the calibration prompts, for their lengths; None: every prompt seq_len tokens long)."""
    shape, sizes, vocab, block = _shape(src)
    n_all = sum(sizes.values())
    n_block = sum(block.values())
    n_layer, d = shape.n_layer, shape.n_embd
    file_bytes = os.path.getsize(src)
    held = samples // 4 if frontier_ratio else 0
    train = samples - held
    if prompts:
        lengths = [min(seq_len, TEMPLATE_TOKENS + len(p) / CHARS_PER_TOKEN) for p in prompts]
        if frontier_ratio:  # training samples cycle over the prompts that are not held out
            from .calibrate import split_prompts

            lengths = [min(seq_len, TEMPLATE_TOKENS + len(p) / CHARS_PER_TOKEN) for p in split_prompts(prompts)[0]]
        prompt_tokens = sum(lengths[i % len(lengths)] for i in range(train))
    else:
        prompt_tokens = train * seq_len
    train_tokens = prompt_tokens + train * response_tokens
    held_len = min(HELD_OUT_TOKENS, max(64, shape_context(src) - response_tokens - 16)) if frontier_ratio else 0
    held_tokens = held * (held_len + response_tokens)
    tokens = train_tokens + held_tokens
    k_max = int(frontier_ratio * n_layer) if frontier_ratio else 0
    kv_width = 2 * shape.n_head_kv * shape.head_dim  # K and V of one layer
    attn_flops = 4 * n_layer * d * (seq_len + response_tokens)  # per token, scores and weighted sum

    st: Dict[str, float] = {"load": LOAD_SECONDS + FILE_SECONDS * file_bytes}
    st["sampling"] = (tokens * n_all / LLAMA_PREFILL + samples * response_tokens * n_all / LLAMA_DECODE)
    fwd = tokens * (2 * n_block + attn_flops) / TORCH_FLOPS
    bwd = 2 * train_tokens * (2 * n_block + attn_flops) / TORCH_FLOPS  # recomputation + backward
    head = 3 * samples * response_tokens * vocab * d * 2 / TORCH_FLOPS + 2 * vocab * d / DEQUANT_RATE
    if streamed:
        st["forward"] = fwd + n_block / DEQUANT_RATE
        st["importance"] = bwd + n_block / DEQUANT_RATE + head
    else:
        st["forward"] = n_all / DEQUANT_RATE
        st["importance"] = fwd + bwd + head
    if k_max:
        pairs = k_max * (k_max + 1) / 2
        fit_rows = 0.75 * train_tokens  # a quarter of the training samples choose the ridge strength
        if fit_rows < d:  # kv_fit._Dual: an n x n eigendecomposition, products with the rows
            st["fits"] = pairs * (EIGH_1536 * (fit_rows / 1536) ** 3
                                  + 8 * train_tokens * (train_tokens + kv_width) * d / TORCH_FLOPS)
        else:
            st["fits"] = pairs * EIGH_1536 * (d / 1536) ** 3 + pairs * train_tokens * d * d * 2 / TORCH_FLOPS
        per_layer = n_block / n_layer
        if streamed:  # per pair and held-out sample: own + fitted prefix attention, suffix at full depth
            frontier_flops = pairs * held * 2 * (0.2 * 2 * per_layer * held_len + 2 * per_layer * (response_tokens + 1))
            st["frontier"] = (frontier_flops / TORCH_FLOPS + (k_max / n_layer) * n_block / DEQUANT_RATE
                              + k_max * held * 2 * response_tokens * vocab * d * 2 / TORCH_FLOPS)
        else:  # every candidate re-runs its block on the whole held-out sample, twice
            st["frontier"] = pairs * held * 2 * 2 * per_layer * (held_len + response_tokens) / TORCH_FLOPS

    if streamed:
        layer_bytes = 4 * max(block.values()) if block else 0
        work = (2.5 * layer_bytes                         # one layer in float32, and its dequantized copy
                + 3 * tokens * d * 4                      # hidden states of every sample (in, out, gradient)
                + 16384 * d * 4 * 3                       # an output-head chunk and its logits
                + held * response_tokens * vocab * 4 * 2  # held-out reference distributions
                + ((2 * train_tokens * d * 8 + 2 * d * d * 8) if k_max else 0))  # one block start's z-moments
        peak = BASE_BYTES + file_bytes + work
    else:  # the float32 model, and the tail fits' float64 moments (z^T z and z^T Y per block start)
        peak = BASE_BYTES + file_bytes + 4 * n_all
        if k_max:
            peak += 2 * 8 * d * (k_max * (k_max + 1) / 2 * kv_width + k_max * d)
    scratch = 0
    if streamed:
        scratch = int((n_layer + 1) * tokens * d * 4 + k_max * train_tokens * kv_width * 4
                      + k_max * (k_max + 1) / 2 * d * kv_width * 4 + k_max * d * kv_width * 8)
    return Cost(sum(st.values()), int(peak), streamed, st, scratch)


def shape_context(src: str) -> int:
    """The held-out prompts' length is capped by the model's trained context."""
    from pop_local.format.metadata import read_pop_metadata

    return read_pop_metadata(src).context_length or 1 << 30


def available_memory() -> int:
    """Bytes this process can still use: MemAvailable, capped by a cgroup limit when there is one."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                raw = f.read().strip()
            if raw.isdigit() and int(raw) < 1 << 60:
                used = 0
                for cur in ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
                    if os.path.exists(cur):
                        with open(cur) as f:
                            used = int(f.read().strip())
                        break
                avail = min(avail or 1 << 62, int(raw) - used)
            break
        except OSError:
            continue
    if avail is None:
        try:
            import psutil

            avail = int(psutil.virtual_memory().available)
        except Exception:
            avail = 1 << 62  # unknown: do not refuse
    return int(avail)


def check_memory(cost: Cost, limit: Optional[float] = None) -> None:
    """PopError (one line) when the calibration needs more memory than there is (or than `limit` GB),
    or more scratch space in $TMPDIR than is free."""
    import shutil
    import tempfile

    folder = tempfile.gettempdir()
    free = shutil.disk_usage(folder).free
    if cost.scratch_bytes > free:
        raise PopError(f"calibration needs about {cost.scratch_bytes / 2**30:.1f} GB of scratch space in {folder} but "
                       f"{free / 2**30:.1f} GB is free: point TMPDIR at a larger disk, or use fewer `samples`")
    have = int(limit * 2**30) if limit is not None else available_memory()
    if cost.peak_bytes <= have:
        return
    need = cost.peak_bytes / 2**30
    what = "`max_memory`" if limit is not None else "available"
    lower = ("fewer `samples` or a shorter `seq_len` lower it a little; the model file itself stays in memory"
             if cost.streamed else
             "drop `hf_model` / `strategy=score` to calibrate one layer at a time from the GGUF")
    raise PopError(f"calibration needs about {need:.1f} GB but {have / 2**30:.1f} GB is {what}: {lower} "
                   "(or `layers=A-B` `calibrate=False`, which needs none)")
