"""Calibration in PyTorch/transformers: load the model, sample responses, measure importance."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pop_local.errors import PopError
from pop_local.format import keys
from pop_local.format.metadata import PopMetadata

from .arch import arch_spec
from .calibration_data import BUILTIN_PROMPTS
from .importance import Importance, layer_importance

__all__ = ["calibrate", "Calibration", "FrontierPlan", "split_samples", "split_prompts", "load_prompts", "load_model"]


def load_prompts(data: Optional[str]) -> List[str]:
    """Built-in prompts, or a file: .jsonl (a "prompt", "instruction" or "text" field per line) or text
    (paragraphs separated by blank lines)."""
    if data is None:
        return list(BUILTIN_PROMPTS)
    if not os.path.isfile(data):
        raise PopError(f"{data}: no such file")
    with open(data, encoding="utf-8") as f:
        raw = f.read()
    prompts: List[str] = []
    if data.endswith(".jsonl"):
        from pop_local.measure.texts import json_lines

        for n, obj in json_lines(raw, data):
            text = next((obj[k] for k in ("prompt", "instruction", "text") if isinstance(obj, dict) and k in obj), None)
            if not isinstance(text, str):
                raise PopError(f'{data}:{n}: expected an object with a "prompt", "instruction" or "text" string')
            prompts.append(text)
    else:
        prompts = [p.strip() for p in raw.split("\n\n") if p.strip()]
    if not prompts:
        raise PopError(f"{data}: no prompts found")
    return prompts


def load_dataset_prompts(name: str, limit: int) -> List[str]:
    """Prompts from a datasets-library dataset (needs the network unless cached): the first string
    field named prompt, instruction, question or text of each row."""
    try:
        import datasets
    except ImportError:
        raise PopError("`dataset` needs the datasets library: pip install datasets") from None
    try:
        rows = datasets.load_dataset(name, split="train", streaming=True)
    except Exception as e:
        raise PopError(f"`dataset` {name}: cannot load it ({type(e).__name__}: {e})") from None
    prompts: List[str] = []
    for row in rows:
        text = next((row[k] for k in ("prompt", "instruction", "question", "text") if isinstance(row.get(k), str)),
                    None)
        if text and text.strip():
            prompts.append(text)
        if len(prompts) >= limit:
            break
    if not prompts:
        raise PopError(f"`dataset` {name}: no prompt/instruction/question/text field found")
    return prompts


def load_model(src: str, hf_model: Optional[str], device: str, dtype: str):
    """A transformers CausalLM and tokenizer: the GGUF's own (dequantized) weights, or `hf_model`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(dtype)
    if torch_dtype is None:
        raise PopError(f"`dtype` must be float32, bfloat16 or float16, got {dtype}")
    if hf_model:
        tok = AutoTokenizer.from_pretrained(hf_model)
        model = AutoModelForCausalLM.from_pretrained(hf_model, dtype=torch_dtype)
    else:
        from .gguf_model import gguf_tokenizer_and_config

        folder, name = os.path.split(os.path.abspath(src))
        # the config carries gguf_config_fixes: a model class without such a field (qwen2: head_dim) would
        # take them as its own arguments and fail
        tok, config = gguf_tokenizer_and_config(src)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype, config=config)
    model.requires_grad_(False)
    return model.to(device).eval(), tok


# held-out prompts are this long (tokens): long enough that POP's pruned K/V weigh as they do in real
# use (KL grows with context length), as long as the 512-token contexts `pop-local eval` starts with
HELD_OUT_TOKENS = 512


def split_prompts(prompts: Sequence[str], every: int = 3) -> Tuple[List[str], List[str]]:
    """(training prompts, held-out prompts) for a frontier: prompts sharing a paragraph (80+
    characters, e.g. one passage with two questions) form a group, and every `every`-th group is held
    out, so no held-out text was seen by a fit or the importance pass."""
    groups: List[List[int]] = []
    owner: Dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        paragraphs = [p.strip() for p in prompt.split("\n\n") if len(p.strip()) >= 80]
        g = next((owner[p] for p in paragraphs if p in owner), None)
        if g is None:
            g = len(groups)
            groups.append([])
        groups[g].append(i)
        for p in paragraphs:
            owner.setdefault(p, g)
    if len(groups) < 2:
        raise PopError("a quality budget needs at least two unrelated calibration prompts (some are held out to "
                       "measure each skip set); add prompts to `data` or use `kv=own`")
    held_groups = [k for k in range(len(groups)) if k % every == every - 1] or [len(groups) - 1]
    held = [prompts[i] for k in held_groups for i in groups[k]]
    train = [prompts[i] for k in range(len(groups)) if k not in held_groups for i in groups[k]]
    return train, held


def _held_out_prompt_ids(tok, prompts: Sequence[str], i: int, n_tokens: int) -> List[int]:
    """Sample i's prompt after other prompts as context, about n_tokens in all (never more)."""
    own = prompts[i % len(prompts)]
    parts: List[str] = []
    j = 1
    while j < 4 * len(prompts) + 4:
        longer = [prompts[(i + j) % len(prompts)]] + parts
        if len(_prompt_ids(tok, "\n\n".join(longer + [own]), 1 << 30)) > n_tokens:
            break
        parts = longer
        j += 1
    return _prompt_ids(tok, "\n\n".join(parts + [own]), n_tokens)


def _prompt_ids(tok, prompt: str, seq_len: int) -> List[int]:
    if getattr(tok, "chat_template", None):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        ids = tok(prompt)["input_ids"]
    ids = list(ids)
    return ids[-seq_len:] if len(ids) > seq_len else ids


def sample_responses(model, prompt_ids: List[List[int]], response_tokens: int, seed: int, eos: Optional[int] = None,
                     progress: Optional[Callable[[int], None]] = None) -> List[List[int]]:
    """prompt + a response sampled from the model (temperature 1, no truncation); same seed, same result."""
    import torch

    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    seqs = []
    for i, ids in enumerate(prompt_ids):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids], device=device), do_sample=True, temperature=1.0, top_k=0,
                                 top_p=1.0, max_new_tokens=response_tokens, pad_token_id=eos)
        seqs.append(out[0].tolist())
        if progress:
            progress(i + 1)
    return seqs


def sample_responses_gguf(src: str, prompt_ids: List[List[int]], response_tokens: int, seed: int,
                          progress: Optional[Callable[[int], None]] = None) -> List[List[int]]:
    """Like sample_responses, but sampled by llama.cpp from the GGUF itself (the model users will
    run, and several times faster than transformers' generate on a CPU). Full model: POP is off."""
    from pop_local.runtime.models import plain_llama

    n_ctx = max(len(ids) for ids in prompt_ids) + response_tokens + 8
    # no memory map: llama.cpp's CPU backend repacks quantized weights into a buffer of their own
    # (faster matmuls), and the mapped file's pages would stay resident beside it, doubling the peak
    llm = plain_llama(src, n_ctx=n_ctx, n_batch=n_ctx, verbose=False, seed=seed, use_mmap=False,
                      kv_overrides={keys.ENABLED: False})
    try:
        eos = llm.token_eos()
        seqs = []
        for i, ids in enumerate(prompt_ids):
            llm.set_seed(seed * 100003 + i)
            out = list(ids)
            for tok in llm.generate(ids, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
                out.append(int(tok))
                if tok == eos or len(out) - len(ids) >= response_tokens:
                    break
            seqs.append(out)
            if progress:
                progress(i + 1)
        return seqs
    finally:
        llm.close()


@dataclass
class FrontierPlan:
    """Measure the quality/speed frontier: candidates of 1 .. max_ratio * n_layer layers (strategy
    "tail": tail blocks; "score": the least important layers first)."""
    max_ratio: float = 0.5
    strategy: str = "tail"


@dataclass
class Calibration:
    importance: Importance
    provenance: Dict[str, Any]
    fitted: Optional[Tuple[Tuple[int, ...], Any]] = None  # (skip set, FittedKV) with fit_kv_for
    frontier: Optional[List[Any]] = None                    # frontier.Candidate list with a FrontierPlan
    held_out: Dict[str, int] = field(default_factory=dict)  # samples and response tokens measured on


def split_samples(n: int) -> Tuple[List[int], List[int]]:
    """(held-out evaluation samples, ridge-selection samples) for a frontier over n samples: every
    4th sample is held out for evaluation; of the others, every 4th chooses the ridge strength."""
    eval_idx = [i for i in range(n) if i % 4 == 3]
    rest = [i for i in range(n) if i % 4 != 3]
    return eval_idx, [i for j, i in enumerate(rest) if j % 4 == 3]


MIN_FRONTIER_SAMPLES = 8  # 2 held out, 6 to fit (1 of them choosing the ridge strength)


def calibrate(src: str, meta: PopMetadata, *, hf_model: Optional[str], data: Optional[str], dataset: Optional[str],
              samples: int, seq_len: int, response_tokens: int, device: str, dtype: str, seed: int,
              progress: Optional[Callable[[str, int, int], None]] = None,
              fit_kv_for: Optional[Callable[[Importance], Sequence[int]]] = None,
              frontier: Optional[FrontierPlan] = None, streamed: Optional[bool] = None,
              fit_contiguous: bool = True) -> Calibration:
    """Importance of every layer in both stages, and the provenance keys.

    With `fit_kv_for` (importance -> skip set), K/V projections for that skip set are also fitted on
    the same samples (pop_local.converter.kv_fit). With `frontier`, every candidate skip set is
    measured on held-out samples (pop_local.converter.frontier), with own and fitted K/V.

    `streamed` (None: whenever it can, see can_stream) runs it one layer at a time from the GGUF
    (converter/streaming.py) instead of holding the whole model in float32; `fit_contiguous` says
    that `fit_kv_for` returns a contiguous block, which the streamed path needs.
    """
    if samples < 1 or seq_len < 8 or response_tokens < 1:
        raise PopError("`samples`, `seq_len` and the response length must be positive (`seq_len` at least 8)")
    from .streaming import keep_large_blocks_mapped

    keep_large_blocks_mapped()
    if frontier is not None and samples < MIN_FRONTIER_SAMPLES:
        raise PopError(f"a quality budget needs at least {MIN_FRONTIER_SAMPLES} `samples` (a quarter are held out "
                       f"to measure each skip set), got {samples}")
    if data and dataset:
        raise PopError("give `data` or `dataset`, not both")
    prompts = load_dataset_prompts(dataset, samples) if dataset else load_prompts(data)
    if streamed is None:
        streamed = can_stream(hf_model, frontier, fit_contiguous)
    if streamed:
        from .gguf_model import GGUFModel

        model = GGUFModel(src, lambda model_type: arch_spec(model_type).layers)
        tok = model.tokenizer
        model_type = model.config.model_type
    else:
        model, tok = load_model(src, hf_model, device, dtype)
        model_type = model.config.model_type
    spec = arch_spec(model_type)
    if spec.gguf_arch != meta.architecture:
        raise PopError(f"the calibration model is '{model_type}' but the GGUF is '{meta.architecture}'")

    if frontier is None:
        eval_idx, lam_idx = [], []
        prompt_ids = [_prompt_ids(tok, prompts[i % len(prompts)], seq_len) for i in range(samples)]
    else:
        # held-out samples come from prompts that no training sample sees, not even in part
        eval_idx, lam_idx = split_samples(samples)
        train_prompts, held_prompts = split_prompts(prompts)
        trained = meta.context_length or 1 << 30  # the model's context (0: the file does not say)
        held_len = min(HELD_OUT_TOKENS, max(64, trained - response_tokens - 16))
        prompt_ids = [None] * samples
        for n, i in enumerate(i for i in range(samples) if i not in eval_idx):
            prompt_ids[i] = _prompt_ids(tok, train_prompts[n % len(train_prompts)], seq_len)
        for n, i in enumerate(eval_idx):
            prompt_ids[i] = _held_out_prompt_ids(tok, held_prompts, n, held_len)
    tick_sample = (lambda i: progress("sampling responses", i, samples)) if progress else None
    if hf_model:
        seqs = sample_responses(model, prompt_ids, response_tokens, seed, eos=tok.eos_token_id, progress=tick_sample)
    else:
        seqs = sample_responses_gguf(src, prompt_ids, response_tokens, seed, progress=tick_sample)
    lens = [len(ids) for ids in prompt_ids]
    provenance = {
        keys.CALIB_SOURCE: hf_model or os.path.basename(src),
        keys.CALIB_DATA: f"dataset:{dataset}" if dataset else ("builtin" if data is None else os.path.basename(data)),
        keys.CALIB_SEQ_LEN: seq_len,
        keys.CALIB_RESPONSE_TOKENS: response_tokens,
        keys.CALIB_SEED: seed,
    }
    args = (model, spec, meta, src, seqs, lens, eval_idx, lam_idx, progress, fit_kv_for, frontier)
    result = _streamed(*args, device=device, dtype=dtype) if streamed else _in_memory(*args)
    del model, args
    from .streaming import release_memory

    release_memory()  # the model (in-memory path) or the streamed run's buffers, before the output is written
    result.provenance = {**provenance, keys.CALIB_SAMPLES: result.importance.samples}
    return result


def _in_memory(model, spec, meta, src, seqs, lens, eval_idx, lam_idx, progress, fit_kv_for, frontier) -> Calibration:
    """The whole model in memory (transformers' float weights), sample by sample."""
    tick_importance = (lambda n: progress("measuring importance", n, len(seqs) - len(eval_idx))) if progress else None
    capture = None
    if frontier is not None:
        from pop_local.format.frontier import max_skipped

        from .candidates import FrontierCapture

        k_max = max_skipped(meta.n_layer, frontier.max_ratio)
        capture = FrontierCapture(model, spec, meta.n_layer, seqs, lens, eval_idx, lam_idx,
                                  k_max if frontier.strategy == "tail" else None)
    # held-out samples stay out of everything that learns from the data, importance included
    train = [i for i in range(len(seqs)) if i not in eval_idx]
    with capture.attached() if capture else contextlib.nullcontext():
        imp = layer_importance(model, spec, meta.n_layer, [seqs[i] for i in train], [lens[i] for i in train],
                               progress=tick_importance,
                               observe=(lambda j, logits: capture.observe(train[j], logits)) if capture else None)
        if capture:
            capture.full_passes(eval_idx)
    result = Calibration(imp, {})
    if fit_kv_for is not None:
        from .kv_fit import collect_kv_stats, fit_kv

        skip = tuple(fit_kv_for(imp))
        tick_kv = (lambda n: progress("fitting K/V projections", n, len(seqs))) if progress else None
        stats = collect_kv_stats(model, spec, meta.n_layer, skip, seqs, progress=tick_kv)
        result.fitted = (skip, fit_kv(stats))
    if capture is not None:
        from pop_local.format.frontier import paper_skip_set
        from pop_local.measure.flops import model_shape

        from .candidates import candidate_sets

        sets = candidate_sets(meta.n_layer, frontier.max_ratio, frontier.strategy, imp.prefill)
        if paper_skip_set(meta.n_layer) not in sets and frontier.strategy != "tail":
            sets.append(paper_skip_set(meta.n_layer))  # the reference of --max-kl paper
        tick = (lambda n, total: progress("measuring skip sets", n, total)) if progress else None
        result.frontier = capture.measure(sets, model_shape(src), progress=tick)
        result.held_out = {"samples": len(capture.eval_samples), "tokens": capture.eval_tokens}
    return result


def _streamed(gm, spec, meta, src, seqs, lens, eval_idx, lam_idx, progress, fit_kv_for, frontier, *, device: str,
              dtype: str) -> Calibration:
    """One layer at a time from the GGUF (converter/streaming.py): tail candidates, contiguous fits."""
    from pop_local.format.frontier import max_skipped
    from pop_local.format.layers import is_block
    from pop_local.measure.flops import ideal_speedup, model_shape

    from .candidates import SPEEDUP_TOKENS, Candidate, candidate_sets
    from .streaming import StreamedCalibration, release_memory

    def tick(stage):
        return (lambda n, total: progress(stage, n, total)) if progress else None

    n_layer = meta.n_layer
    fit_from = None
    if frontier is not None:
        fit_from = n_layer - max_skipped(n_layer, frontier.max_ratio)
    elif fit_kv_for is not None:
        fit_from = 0  # the set is known after the importance pass: keep every layer's statistics
        lam_idx = [i for i in range(len(seqs)) if i % 4 == 3]  # as kv_fit.collect_kv_stats splits them
    run = StreamedCalibration(gm, spec, seqs, lens, eval_idx, lam_idx, fit_from, device=device, dtype=dtype)
    try:
        run.forward(progress=tick("calibration: forward pass (layers)"))
        release_memory()
        imp = run.importance(progress=tick("calibration: importance, backward pass (layers)"))
        release_memory()
        result = Calibration(imp, {})
        if fit_kv_for is not None:
            skip = tuple(fit_kv_for(imp))
            if not is_block(skip):
                raise ValueError(f"the streamed calibration fits contiguous blocks, not {skip}")
            fits = run.fit_blocks([skip[0]], skip[-1] + 1, progress=tick("fitting K/V projections (layers)"))
            result.fitted = (skip, fits[skip[0]])
        if frontier is not None:
            sets = candidate_sets(n_layer, frontier.max_ratio, "tail")
            starts = [c[0] for c in sets]
            fits = run.fit_blocks(starts, n_layer, progress=tick("fitting K/V projections (layer pairs)"))
            release_memory()
            scores = run.frontier(starts, fits, progress=tick("measuring skip sets (layers)"))
            shape = model_shape(src)
            result.frontier = [Candidate(c, *scores[c[0]],
                                         {t: float(ideal_speedup(shape, t, c)) for t in SPEEDUP_TOKENS},
                                         fits[c[0]]) for c in sets]
            result.held_out = {"samples": len(run.eval_idx), "tokens": run.eval_tokens}
        return result
    finally:
        run.close()


def can_stream(hf_model: Optional[str], frontier: Optional[FrontierPlan], fit_contiguous: bool = True) -> bool:
    """The streamed path calibrates a GGUF whose candidates (and any fitted set) are contiguous
    blocks; a transformers checkpoint (`hf_model`) or `strategy=score` runs in memory."""
    return hf_model is None and (frontier is None or frontier.strategy == "tail") and fit_contiguous
