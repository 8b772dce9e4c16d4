"""What a calibration will cost (time, peak memory) before it starts, and the refusal when it cannot fit.

The same 2-core machine type ran two to four times slower on one day than on another, and not by
the same factor for every kind of work, so the time is made from rates measured on this machine just
before (measure_rates, a second or so on a small model): torch's float32 matmul (forward, backward,
the frontier), and llama.cpp's prompt processing and one-token decoding on the model itself
(sampling). The constants below say how each stage relates to those rates; they are fitted on
benchmarks/converter_cost.py runs (SmolLM2-135M, Gemma-3-270M, Qwen2.5-Coder-1.5B) and checked
within half either way by tests/test_streaming.py. Memory needs no probe.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

from pop_local.errors import PopError

from .calibrate import HELD_OUT_TOKENS

__all__ = ["Cost", "Rates", "REFERENCE", "estimate", "measure_rates", "available_memory", "check_memory", "BASE_BYTES"]

BASE_BYTES = 0.7 * 2**30   # python, torch, transformers, a tokenizer, the heap a sweep leaves (measured
                           # with the check and a fixed mmap threshold: SmolLM2 8 samples 0.83 GB peak,
                           # 64 samples 1.9 GB; Gemma-3 64 samples 2.8 GB; Qwen 1.5B 16 samples 2.5 GB)
DEQUANT_RATE = 6.0e7       # weights / s, gguf.dequantize, at the reference torch rate
LOAD_SECONDS = 35.0        # imports, reading the model's config and tokenizer, the probe, at the reference torch rate
FILE_SECONDS = 1.15e-7     # per byte of GGUF: reading its config and tokenizer, writing the output copy
TEMPLATE_TOKENS = 40       # a chat template's tokens around a prompt
# the answer check's passes over its documents, in whole-check equivalents: the full model, the chosen set
# (POP prefill, the questions the full model answers), and the deeper sets it stops early (a document or two each)
ANSWER_RUNS = 2.5
RIGHT_SHARE = 0.6          # the full model's share of right answers (measured 0.4-0.9): documents to reach the target
QUESTION_TOKENS = 30       # a question and the chat template's turn, prefilled after the cached document
REPLY_DECODED = 10         # tokens decoded per reply (a number or a name, then the end of turn)
CHARS_PER_TOKEN = 5.0      # the built-in prompts: about 5 characters per token beyond the template


@dataclass(frozen=True)
class Rates:
    torch_flops: float    # float32 matmul FLOP/s (a layer-sized product, torch's threads)
    llama_prefill: float  # weights x tokens / s, llama.cpp processing a 64-token prompt
    llama_decode: float   # weights x tokens / s, llama.cpp decoding one token at a time


# the machine the stage constants were fitted on (measure_rates there), for an estimate without a probe
REFERENCE = Rates(torch_flops=1.7e11, llama_prefill=2.4e10, llama_decode=6.3e9)
TORCH_EFFICIENCY = 0.45    # a layer's forward/backward over calibration batches, against the plain matmul rate
FRONTIER_EFFICIENCY = 0.19  # the frontier's small suffix passes (per candidate and sample), likewise
SAMPLING_OVERHEAD = 0.8    # llama.cpp sampling (chat template, sampler, one context per sample) over the probe
EIGH_1536 = 3.8            # s for one float64 eigendecomposition of a 1536 x 1536 matrix at the reference rate


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
    """(shape, tensor sizes, vocabulary, weights per block), read once per file version: convert estimates
    twice (the memory before anything loads, then the time from the probed rates) and the probe counts weights."""
    st = os.stat(src)
    return _read_shape(os.path.abspath(src), st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _read_shape(src: str, mtime_ns: int, size: int):
    from pop_local.format.gguf_file import read_gguf
    from pop_local.measure.flops import model_shape

    reader = read_gguf(src)
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


def measure_rates(src: str) -> Rates:
    """This machine's rates (see Rates): a torch matmul, and llama.cpp on `src` itself (memory-mapped,
    a short prompt and a few decoded tokens; a second on a small model, some seconds on an 8B one)."""
    import time

    from pop_local.runtime.models import plain_llama

    torch_flops = matmul_flops()
    n_weights = sum(_shape(src)[1].values())
    llm = plain_llama(src, n_ctx=128, n_batch=64, n_ubatch=64, verbose=False, use_mmap=True)
    try:
        llm.eval([1] * 8)  # warm-up: graph allocation, pages of the file
        llm.reset()
        started = time.perf_counter()
        llm.eval([1 + i % 50 for i in range(64)])
        prefill = time.perf_counter() - started
        started = time.perf_counter()
        for i in range(6):
            llm.eval([2 + i])
        decode = (time.perf_counter() - started) / 6
    finally:
        llm.close()
    return Rates(torch_flops, 64 * n_weights / prefill, n_weights / decode)


def matmul_flops() -> float:
    """This machine's float32 matmul rate (FLOP/s) on a layer-sized product, the best of a few runs
    (about a fifth of a second; the threads torch would use for calibration)."""
    import time

    import torch

    a, b = torch.randn(256, 1024), torch.randn(1024, 1024)
    a @ b  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(7):
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - started) / 4)
    return 2 * 256 * 1024 * 1024 / best


def _answer_seconds(n_all: int, file_bytes: int, rates: Rates, context: int) -> float:
    """The default budget's answer check: llama.cpp passes over its documents (each prefilled once, then
    its questions), and the fitted candidates' temporary copies of the model."""
    from .answer_check import MAX_DOCUMENTS, QUESTIONS_PER_DOC, TARGET_RIGHT, check_length

    length = check_length(context)
    documents = min(MAX_DOCUMENTS, math.ceil(TARGET_RIGHT / (RIGHT_SHARE * QUESTIONS_PER_DOC)))
    prefill = documents * (TEMPLATE_TOKENS + length + QUESTIONS_PER_DOC * QUESTION_TOKENS) * n_all / rates.llama_prefill
    decode = documents * QUESTIONS_PER_DOC * REPLY_DECODED * n_all / rates.llama_decode
    # + the full model's right answers asked again (its second rounding: one token prefilled, the reply decoded)
    return ANSWER_RUNS * (prefill + decode) + RIGHT_SHARE * decode + 2 * FILE_SECONDS * file_bytes


def estimate(src: str, samples: int, seq_len: int, response_tokens: int, *, frontier_ratio: Optional[float] = None,
             streamed: bool = True, prompts: Optional[Sequence[str]] = None, rates: Optional[Rates] = None,
             answer_check: bool = False) -> Cost:
    """Time and peak memory of a calibration of `src` (frontier_ratio: a quality budget's max ratio;
    answer_check: the default budget's answer check runs after it (converter/answer_check.py);
    `prompts`: the calibration prompts, for their lengths; None: every prompt seq_len tokens long;
    `rates`: this machine's (measure_rates; None: the reference machine's, no probe, for the memory)."""
    # Long: one cost model, stage by stage, over shared quantities (token counts, shapes, rates); split,
    # every stage would take the same dozen values back as arguments.
    rates = rates or REFERENCE
    torch_rate = TORCH_EFFICIENCY * rates.torch_flops
    slower = REFERENCE.torch_flops / rates.torch_flops  # CPU work without a rate of its own
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

    st: Dict[str, float] = {"load": (LOAD_SECONDS + FILE_SECONDS * file_bytes) * slower}
    st["sampling"] = SAMPLING_OVERHEAD * (tokens * n_all / rates.llama_prefill
                                          + samples * response_tokens * n_all / rates.llama_decode)
    fwd = tokens * (2 * n_block + attn_flops) / torch_rate
    bwd = 2 * train_tokens * (2 * n_block + attn_flops) / torch_rate  # recomputation + backward
    dequant = DEQUANT_RATE / slower
    head = 3 * samples * response_tokens * vocab * d * 2 / torch_rate + 2 * vocab * d / dequant
    if streamed:
        st["forward"] = fwd + n_block / dequant
        st["importance"] = bwd + n_block / dequant + head
    else:
        st["forward"] = n_all / dequant
        st["importance"] = fwd + bwd + head
    if k_max:
        pairs = k_max * (k_max + 1) / 2
        fit_rows = 0.75 * train_tokens  # a quarter of the training samples choose the ridge strength
        if fit_rows < d:  # kv_fit._Dual: an n x n eigendecomposition, products with the rows
            st["fits"] = pairs * (EIGH_1536 * slower * (fit_rows / 1536) ** 3
                                  + 8 * train_tokens * (train_tokens + kv_width) * d / torch_rate)
        else:
            st["fits"] = pairs * EIGH_1536 * slower * (d / 1536) ** 3 + pairs * train_tokens * d * d * 2 / torch_rate
        per_layer = n_block / n_layer
        if streamed:  # per pair and held-out sample: own + fitted prefix attention, suffix at full depth
            frontier_flops = pairs * held * 2 * (0.2 * 2 * per_layer * held_len + 2 * per_layer * (response_tokens + 1))
            st["frontier"] = (frontier_flops / (FRONTIER_EFFICIENCY * rates.torch_flops)
                              + (k_max / n_layer) * n_block / dequant
                              + k_max * held * 2 * response_tokens * vocab * d * 2 / torch_rate)
        else:  # every candidate re-runs its block on the whole held-out sample, twice
            st["frontier"] = pairs * held * 2 * 2 * per_layer * (held_len + response_tokens) / torch_rate

    if answer_check:
        st["answers"] = _answer_seconds(n_all, file_bytes, rates, shape_context(src))

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


def peak_rss_bytes() -> Optional[int]:
    """This process's own peak resident memory: VmHWM, which an exec starts afresh. getrusage's
    ru_maxrss is not it on Linux: a child's keeps the RSS its parent had when it forked."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS counts bytes, others KiB
    except (ImportError, OSError):
        return None


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
