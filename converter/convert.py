"""convert(): make a GGUF POP-ready: calibrate (optional), choose the skip set, write a new GGUF."""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from pop_local.errors import PopError, PopSettingError
from pop_local.format import keys
from pop_local.format.layers import format_layers, is_block, parse_layers
from pop_local.format.metadata import read_pop_metadata

from .writer import write_pop_gguf

__all__ = ["convert", "default_samples", "check_calibration_installed", "ConvertResult", "choose_skip_layers",
           "STRATEGIES", "KV_METHODS",
           "KV_TYPES", "resolve_kv_type"]

STRATEGIES = ("tail", "score")
KV_METHODS = ("own", "fitted")
# tensor types the gguf package can write for fitted K/V projections
KV_TYPES = ("auto", "f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


def resolve_kv_type(name: str):
    """"auto" -> None (decided per file), else the GGMLQuantizationType; PopError for other names."""
    if name not in KV_TYPES:
        raise PopError(f"`kv_type` must be one of {', '.join(KV_TYPES)}, got {name!r}")
    if name == "auto":
        return None
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[name.upper()]


@dataclass
class ConvertResult:
    output: str
    skip_layers: tuple
    importance_prefill: Optional[List[float]] = None
    importance_decode: Optional[List[float]] = None
    seconds: float = 0.0
    extra: Dict[str, Any] = field(default_factory=dict)
    peak_bytes: Optional[int] = None  # this process's peak resident memory when the file was written


def choose_skip_layers(n_layer: int, *, ratio: Optional[float] = None, strategy: str = "tail",
                       prefill_importance: Optional[Sequence[float]] = None) -> tuple:
    """The paper's default is the last round(L/3) layers as one block ("tail"); "score" takes the
    layers with the lowest prefill importance."""
    if strategy not in STRATEGIES:
        raise PopError(f"unknown strategy '{strategy}' (choose from {', '.join(STRATEGIES)})")
    if ratio is not None and not 0 < ratio < 1:
        raise PopError(f"`ratio` must be between 0 and 1, got {ratio}")
    k = int(round(n_layer * (ratio if ratio is not None else 1 / 3)))
    k = max(1, min(k, n_layer - 1))
    if strategy == "tail":
        return tuple(range(n_layer - k, n_layer))
    if prefill_importance is None:
        raise PopError("`strategy=score` needs calibration (drop `calibrate=False`)")
    order = sorted(range(n_layer), key=lambda i: (prefill_importance[i], -i))
    return tuple(sorted(order[:k]))


def check_calibration_installed() -> None:
    """PopError naming what to install when the calibration's packages are missing (a plain
    `pip install pop-local` has the runtime only)."""
    for module in ("torch", "transformers"):
        try:
            __import__(module)
        except ImportError:
            raise PopError(f"calibration needs {module}: pip install 'pop-local[convert]' (or write a skip set "
                           "without calibrating: `layers=A-B` `calibrate=False`)") from None


def _check_output(output: str, force: bool, keep_candidates: Optional[str] = None) -> None:
    """The output can be written (then the folder for kept candidates is made if need be)."""
    if os.path.exists(output) and not force:
        raise PopError(f"{output} exists (use `force=True` to replace it)")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise PopError(f"{out_dir}: output folder does not exist")
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise PopError(f"{out_dir}: cannot write there ({e.strerror})") from None
    if keep_candidates:
        os.makedirs(keep_candidates, exist_ok=True)


LARGE_FILE = 512 * 2**20  # above this, DEFAULT_SAMPLES_LARGE: fewer samples bound a large model's calibration
DEFAULT_SAMPLES = 64
DEFAULT_SAMPLES_LARGE = 16


def default_samples(src: str) -> int:
    """Calibration samples when none are asked for: 64, or 16 for a model file over 512 MiB (a 1.5B model
    at 4 bits on 2 cores, measured: 64 samples and the old answer check took 25 minutes; 16 samples and
    the current check 20, of which about 8 are calibration)."""
    return DEFAULT_SAMPLES_LARGE if os.path.getsize(src) > LARGE_FILE else DEFAULT_SAMPLES


def kv_metadata(skip: Sequence[int]) -> Dict[str, Any]:
    """Which tensors produce each skipped layer's K and V, and from which hidden state."""
    return {
        keys.KV_INPUT: "layer_input",  # the residual entering the layer, after the layer's attn_norm
        keys.KV_K_TENSORS: [f"blk.{i}.attn_k.weight" for i in skip],
        keys.KV_V_TENSORS: [f"blk.{i}.attn_v.weight" for i in skip],
    }


def _budget_request(src: str, explicit, ratio, kv: str, calibrate: bool, max_kl, target_speedup, max_ratio: float,
                    n_layer: int, strategy: str, samples: int):
    """The Budget when this conversion picks its skip set from a measured frontier, else None.

    A budget applies unless the set is given (--layers, --ratio) or --kv own/fitted asks for the
    paper's recipe without one; any budget option asks for one."""
    from pop_local.format.frontier import check_max_ratio, max_skipped, paper_skip_set, parse_budget

    asked = max_kl is not None or target_speedup is not None
    check_max_ratio(max_ratio)
    if asked and (explicit is not None or ratio is not None):
        raise PopError("`max_kl` and `target_speedup` choose the skip set themselves: drop `layers` / `ratio`")
    if asked and not calibrate:
        raise PopError("`max_kl` and `target_speedup` measure the model: drop `calibrate=False`")
    budget = parse_budget(max_kl, target_speedup) if asked else None  # bad values fail even when unused
    if explicit is not None or ratio is not None or not calibrate or (kv != "auto" and not asked):
        return None
    budget = budget or parse_budget(None, None)
    from .calibrate import MIN_FRONTIER_SAMPLES

    if samples < MIN_FRONTIER_SAMPLES:
        raise PopError(f"a quality budget needs at least {MIN_FRONTIER_SAMPLES} `samples` (a quarter are held out to "
                       f"measure each skip set), got {samples}; `kv=own` gives the paper's set without one")
    k_max = max_skipped(n_layer, max_ratio)
    if k_max < 1:
        raise PopError(f"`max_ratio` {max_ratio} leaves no layer to skip in a {n_layer}-layer model")
    if budget.target_speedup is not None:  # FLOPs alone say whether any candidate can get there
        from pop_local.measure.flops import ideal_speedup, model_shape

        deepest = tuple(range(n_layer - k_max, n_layer))
        best = ideal_speedup(model_shape(src), 2048, deepest)
        if best < budget.target_speedup:
            raise PopError(f"no skip set reaches an ideal speedup of {budget.target_speedup:g}x at 2048 tokens; the "
                           f"fastest within `max_ratio` {max_ratio:g} is {best:.2f}x ({format_layers(deepest)}): "
                           "lower `target_speedup` or raise `max_ratio`")
    if budget.max_kl == "paper" and strategy == "tail" and len(paper_skip_set(n_layer)) > k_max:
        raise PopError("`max_kl=paper` measures the paper's set (the last third): `max_ratio` must be at least 1/3")
    return budget


def convert(model: str, output: str, *, layers: "Optional[str | Sequence[int]]" = None, ratio: Optional[float] = None,
            strategy: str = "tail", calibrate: bool = True, hf_model: Optional[str] = None,
            data: Optional[str] = None, dataset: Optional[str] = None, samples: Optional[int] = None,
            seq_len: int = 256,
            response_tokens: int = 48,
            device: str = "cpu", dtype: str = "float32", seed: int = 0, force: bool = False, kv: str = "auto",
            kv_type: str = "auto", max_kl: "Optional[float | str]" = None, target_speedup: Optional[float] = None,
            max_ratio: float = 0.5, max_memory: Optional[float] = None, in_memory: bool = False,
            answer_check: bool = True, keep_candidates: Optional[str] = None,
            progress: Optional[Callable[[str, int, int], None]] = None) -> ConvertResult:
    """Write `output`: `model` plus the pop.* keys (and, when calibrating, both importance profiles).

    By default the skip set comes from a quality budget: the converter measures every candidate
    (tail blocks of 1 .. max_ratio * n_layer layers; with strategy "score" the least important
    layers first) on held-out calibration samples, with the layers' own and with fitted K/V, and
    picks the fastest within `max_kl` (default "paper": the held-out KL of the paper's last third
    with own K/V on this model), or the most faithful reaching `target_speedup` (FLOP-ideal at 2048
    tokens). With the default budget (`max_kl` "paper") and `answer_check`, a candidate is kept only
    if it keeps the full model's answers to generated needle and document questions of 1k tokens (at
    least 95% of its score, paired interval above -10 points; converter/answer_check.py, measured in
    llama.cpp; fastest first, until one passes; the shallowest when none does); each fitted candidate it
    loads stays in the folder `keep_candidates` as SKIP-fitted.pop.gguf when one is given. The frontier,
    budget and choice go into the file. `kv` "own"/"fitted" restricts the budget to that K/V; without a
    budget option they (like `layers`, `ratio`) give the paper's recipe: the last third (or the given
    set), own or fitted K/V.

    Fitted projections are stored as extra tensors (type `kv_type`: "auto" = the file's own type for
    those projections when the gguf package can produce it, else q8_0).

    Calibrating a GGUF runs one decoder layer at a time from the file (converter/streaming.py):
    peak memory is about the file's size plus a layer's worth of work. Before anything loads, the
    estimated peak is checked against the memory available (or `max_memory` GB): PopError if it
    does not fit. `in_memory` holds the whole model in float32 instead (the path --hf-model and
    `strategy=score` take; kept for comparisons)."""
    from pop_local import __version__
    from pop_local.runtime.models import resolve_model

    started = time.time()
    src = resolve_model(model)
    meta = read_pop_metadata(src)
    samples = default_samples(src) if samples is None else samples
    _check_output(output, force, keep_candidates)
    explicit, kv, budget = _check_request(src, meta, layers, ratio, kv, calibrate, hf_model, max_kl, target_speedup,
                                          max_ratio, strategy, samples, max_memory)
    kv_qtype = resolve_kv_type(kv_type) if kv != "own" else None

    imp = out = fitted = None
    extra: Dict[str, Any] = {keys.TOOL_VERSION: __version__}
    if calibrate:
        out = _calibrate(src, meta, explicit, ratio, strategy, kv, budget, hf_model, data, dataset, samples, seq_len,
                         response_tokens, device, dtype, seed, max_ratio, max_memory, in_memory, answer_check, progress)
        imp, fitted = out.importance, out.fitted
        extra[keys.IMPORTANCE_PREFILL] = [float(x) for x in imp.prefill]
        extra[keys.IMPORTANCE_DECODE] = [float(x) for x in imp.decode]
        extra.update(out.provenance)
    if budget is not None:
        skip, kv, fitted, frontier_extra = _choose_from_frontier(
            out, budget, kv, meta, src if answer_check and budget.max_kl == "paper" else None, progress,
            keep_candidates)
        extra.update(frontier_extra)
        extra[keys.STRATEGY] = strategy
    else:
        skip = explicit if explicit is not None else choose_skip_layers(
            meta.n_layer, ratio=ratio, strategy=strategy, prefill_importance=imp.prefill if imp else None)
        extra[keys.STRATEGY] = "explicit" if explicit is not None else strategy
    extra.update(kv_metadata(skip))
    tensors = None
    if kv == "fitted" and fitted is not None:
        from .kv_tensors import fitted_kv_tensors

        fit_skip, fit = fitted
        assert tuple(fit_skip) == tuple(skip)
        tensors, kv_extra = fitted_kv_tensors(src, meta, skip, fit, kv_qtype)
        extra.update(kv_extra)
    else:
        extra[keys.KV_METHOD] = "own"
    write_pop_gguf(src, output, skip, extra=extra, force=force, extra_tensors=tensors)
    from .cost import peak_rss_bytes  # the process's own peak, reported with the result
    return ConvertResult(output, tuple(skip), imp.prefill if imp else None, imp.decode if imp else None,
                         time.time() - started, extra, peak_rss_bytes())


def _check_request(src, meta, layers, ratio, kv, calibrate, hf_model, max_kl, target_speedup, max_ratio, strategy,
                   samples, max_memory):
    """(explicit skip set or None, K/V method, Budget or None): the request checked before anything loads."""
    from pop_local.format.frontier import KV_CHOICES

    explicit = None
    if layers is not None:
        explicit = parse_layers(layers, meta.n_layer, key="layers")
        if not explicit:
            raise PopSettingError("layers", "give at least one layer")
    if kv not in KV_CHOICES:
        raise PopError(f"`kv` must be one of {', '.join(KV_CHOICES)}, got {kv!r}")
    if hf_model and kv == "auto":
        # fitted K/V fit the GGUF's own weights: with another checkpoint, a budget weighs own K/V only,
        # and without a budget option the paper's recipe applies
        kv = "own"
    budget = _budget_request(src, explicit, ratio, kv, calibrate, max_kl, target_speedup, max_ratio, meta.n_layer,
                             strategy, samples)
    if budget is None and kv == "auto":
        kv = "own"
    if kv == "fitted" and not calibrate:
        raise PopError("`kv=fitted` needs calibration (drop `calibrate=False`)")
    if kv != "own" and hf_model:
        raise PopError("fitted K/V (and a budget, which measures them) fit the GGUF's own weights; they cannot be "
                       "combined with `hf_model` (use `kv=own`)")
    if max_memory is not None and not max_memory > 0:
        raise PopError(f"`max_memory` must be a positive number of GB, got {max_memory}")
    return explicit, kv, budget


def _calibrate(src, meta, explicit, ratio, strategy, kv, budget, hf_model, data, dataset, samples, seq_len,
               response_tokens, device, dtype, seed, max_ratio, max_memory, in_memory, answer_check, progress):
    """The calibration's result (importance, fitted K/V, frontier), after its cost is checked against memory."""
    from .arch import check_gguf_architecture
    from .calibrate import FrontierPlan, calibrate as run_calibration, can_stream, load_prompts
    from .cost import check_memory, estimate, measure_rates

    check_calibration_installed()
    if not hf_model:  # a checkpoint is checked by its own model type when it loads
        check_gguf_architecture(meta.architecture)
    plan = FrontierPlan(max_ratio, strategy) if budget else None
    fit_contiguous = not (kv == "fitted" and not budget and (
        (explicit is None and strategy == "score") or
        (explicit is not None and not is_block(explicit))))
    streamed = can_stream(hf_model, plan, fit_contiguous) and not in_memory
    prompts = None if dataset else load_prompts(data)
    check_memory(estimate(src, samples, seq_len, response_tokens, frontier_ratio=max_ratio if budget else None,
                          streamed=streamed, prompts=prompts), max_memory)  # before anything loads
    # the time from this machine's own rates (a short probe of torch and of llama.cpp on the model)
    cost = estimate(src, samples, seq_len, response_tokens, frontier_ratio=max_ratio if budget else None,
                    streamed=streamed, prompts=prompts, rates=measure_rates(src),
                    answer_check=answer_check and budget is not None and budget.max_kl == "paper")
    if progress:
        progress(f"calibrating {meta.architecture} ({meta.n_layer} layers) on {samples} samples"
                 f"{' and measuring skip sets' if budget else ''}"
                 f"{'' if streamed else ' with the whole model in memory'}: {cost.describe()} (estimate)", 0, 0)

    def chooser(importance):  # the skip set the K/V projections are fitted for
        return explicit if explicit is not None else choose_skip_layers(
            meta.n_layer, ratio=ratio, strategy=strategy, prefill_importance=importance.prefill)

    return run_calibration(src, meta, hf_model=hf_model, data=data, dataset=dataset, samples=samples,
                           seq_len=seq_len, response_tokens=response_tokens, device=device, dtype=dtype,
                           seed=seed, progress=progress, fit_kv_for=chooser if kv == "fitted" and not budget else None,
                           frontier=plan, streamed=streamed, fit_contiguous=fit_contiguous)


def _choose_from_frontier(out, budget, kv: str, meta, answers_src: Optional[str], progress, keep=None):
    """(skip set, K/V method, (skip, FittedKV) or None, frontier keys) picked by `budget`; with
    `answers_src` (the model file), by the answers of the candidates within it (_answer_choice)."""
    from pop_local.format.frontier import FrontierRow, choose, frontier_fields, paper_skip_set

    rows = [FrontierRow(c.skip, c.kl_own, c.kl_fitted, c.top1_own, c.top1_fitted, c.speedup[512], c.speedup[2048])
            for c in out.frontier]
    paper = paper_skip_set(meta.n_layer)
    paper_kl = next((r.kl_own for r in rows if r.skip == paper), None)
    chosen = choose(rows, budget, kv, paper_kl)
    method = rows[chosen].kv_for(kv)
    answer_fields = {}
    if answers_src is not None:
        from .answer_check import fits

        if not fits(meta):
            answers_src = None
            if progress:
                progress(f"answer check skipped: the model's context ({meta.context_length} tokens) is shorter "
                         "than its questions; the choice is by held-out KL", 0, 0)
    if answers_src is not None:
        rows, chosen, method, answer_fields = _answer_choice(out, rows, budget, kv, paper_kl, meta, answers_src,
                                                             progress, keep)
    row, cand = rows[chosen], out.frontier[chosen]
    fields = frontier_fields(rows, chosen, budget, paper_kl, (out.held_out["samples"], out.held_out["tokens"]),
                             **answer_fields)
    return row.skip, method, ((row.skip, cand.fitted) if method == "fitted" else None), fields


def _answer_choice(out, rows, budget, kv: str, paper_kl, meta, src: str, progress, keep=None):
    """The fastest (row, K/V) within the KL budget that keeps the full model's answers on the check
    (converter/answer_check.py; both K/V of a set where both are within the budget, the lower KL
    first); when none does, the shallowest candidate, and a note. Rows gain what was measured."""
    import dataclasses

    from pop_local.format.frontier import budget_options, first_passing

    from .answer_check import AnswerCheck

    tick = (lambda stage: (lambda n, total: progress(stage, n, total))) if progress else (lambda stage: None)
    check = AnswerCheck(src, meta, progress=tick("answers: the full model"), keep=keep)
    measured = {}
    try:
        items, _, right = check.shape
        if progress and check.unstable:
            progress(f"answer check: {check.unstable} of the full model's right answers flip when only its rounding "
                     f"moves; judged on the other {right}", 0, 0)

        def keeps(option) -> bool:
            i, method = option
            fitted = out.frontier[i].fitted if method == "fitted" else None
            check.progress = tick(f"answers: {format_layers(rows[i].skip)} ({method} K/V)")
            measured[option] = result = check.score(rows[i].skip, fitted)
            return result.passed(right)

        options = budget_options(rows, budget, kv, paper_kl)
        if right == 0:  # nothing to keep: the model answers none of the questions
            if progress:
                progress(f"answer check: the full model answers none of its {items} questions; the choice is by "
                         "held-out KL", 0, 0)
            return rows, options[0][0], options[0][1], {"check": check.shape}
        found = first_passing(options, keeps)
    finally:
        check.close()
    if found is None:  # retention first: the fewest layers skipped, its lower-KL K/V
        found = min(options, key=lambda o: (len(rows[o[0]].skip), rows[o[0]].kl(o[1])))
        if progress:
            progress(f"no candidate kept the full model's {right} right answers (of {items}); writing the shallowest, "
                     f"{format_layers(rows[found[0]].skip)} ({found[1]} K/V)", 0, 0)
    new_rows = list(rows)
    for (i, m), result in measured.items():
        new_rows[i] = dataclasses.replace(new_rows[i], **{f"check_{m}": result})
    return new_rows, found[0], found[1], {"check": check.shape}
