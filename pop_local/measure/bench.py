"""Prefill and decode speed, full model vs POP, in one process on one loaded model.

Each measurement is a fresh prefill of the same prompt (the bundled passage, repeated to length).
Full and POP alternate, the order flipping every round, after one warm-up run of each; the median
and the spread (min-max) are reported. `run_bench` returns a JSON-ready dict:

    model, skip_layers, n_layer, threads, runs, machine
    prefill: one row per context length:
        n_tokens, full_ms / pop_ms: {median, min, max, n}, speedup (full/pop medians),
        ideal_speedup (FLOP model, pop_local.measure.flops), pruned_tokens (per POP prefill);
        when the skip set is not the paper's (e.g. a budgeted file's choice), also paper_ms,
        paper_speedup, paper_ideal_speedup: the paper's last third with own K/V, in the same rounds
    paper_skip_layers: that set, or null
    exact_layers: the layers a KV-sharing model skips exactly (gemma4), or null; then each prefill row
        also has exact_ms, exact_speedup, exact_ideal_speedup: that lossless skip alone (POP off), and
        "full" is the model with both off
    decode: context, tokens, full_tps / pop_tps: {median, min, max, n}, pop_vs_full (ratio of medians)
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from pop_local.errors import PopError
from pop_local.runtime import native as _native

__all__ = ["run_bench", "require_pop", "alternate", "time_prefill", "time_decode", "summarize", "bench_prompt",
           "format_table", "save_speedup_plot"]


def require_pop(llm) -> None:
    """PopError unless `llm` can run pruned (a skip set, a supported architecture): else nothing to compare."""
    if not llm.skip_layers and not llm.exact_layers:
        raise PopError("nothing to compare: the model has no skip set (convert it, or pass `skip_layers`)")
    if not llm.pop_supported:
        raise PopError(f"POP does not support the {llm.pop_metadata.architecture} architecture in this build "
                       f"(supported: {', '.join(_native.ARCHITECTURES)}): nothing to compare")


def summarize(values: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def bench_prompt(llm, n: int) -> List[int]:
    """n tokens of the bundled passage (BOS first), repeated as needed."""
    from .texts import passage, repeat_to

    return repeat_to(llm.tokenize(passage().encode(), add_bos=True), n)


def time_prefill(llm, tokens: Sequence[int]) -> float:
    """Milliseconds for a fresh prefill of `tokens` (last token the only output)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    _synchronize(llm)
    return (time.perf_counter() - start) * 1000.0


def _synchronize(llm) -> None:
    # a GPU backend may return from llama_decode before the device is done (eval's logits read waits
    # today; the timer must not depend on that)
    import llama_cpp

    llama_cpp.llama_synchronize(llm.ctx)


def time_decode(llm, prompt: Sequence[int], steps: Sequence[int]) -> float:
    """Tokens per second feeding `steps` one at a time after a prefill of `prompt` (teacher-forced)."""
    llm.reset()
    llm.eval(prompt)
    start = time.perf_counter()
    for tok in steps:
        llm.eval([tok])
    _synchronize(llm)
    return len(steps) / (time.perf_counter() - start)


def alternate(modes: Sequence[Any], repeats: int, run: Callable[[Any], float]) -> Dict[Any, List[float]]:
    """One warm-up run per mode, then `repeats` rounds over all modes, the order flipping every round
    (so no mode always runs right after another); returns each mode's timed results."""
    for mode in modes:
        run(mode)
    samples: Dict[Any, List[float]] = {mode: [] for mode in modes}
    for r in range(repeats):
        for mode in (modes if r % 2 == 0 else list(reversed(modes))):
            samples[mode].append(run(mode))
    return samples


def run_bench(llm, ctx: Iterable[int], *, repeats: int = 5, decode_tokens: int = 64, decode_ctx: Optional[int] = None,
              progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """Measure `llm` (a PopLlama with a skip set) at each prompt length in `ctx`."""
    # Long: the modes share one configure() and one try/finally that restores the context's settings
    # whatever fails; split up, the parts would pass the same half-dozen values around.
    from pop_local.format.layers import format_layers

    from .flops import ideal_speedup, model_shape

    ctx = [int(n) for n in ctx]
    require_pop(llm)
    if repeats < 1:
        raise PopError("`repeats` must be at least 1")
    if any(n < 2 for n in ctx):
        raise PopError("`ctx` values must be at least 2 tokens")
    decode_ctx = decode_ctx or min(ctx)
    need = max(max(ctx), decode_ctx + decode_tokens)
    if need > llm.n_ctx():
        raise PopError(f"`ctx` needs {need} tokens of context, the model was opened with {llm.n_ctx()}")

    from pop_local.format.frontier import paper_skip_set

    shape = model_shape(llm.model_path)
    skip = llm.skip_layers
    exact = llm.exact_layers
    was_enabled, was_kv, was_exact, was_tail = llm.pop_enabled, llm.kv_mode, llm.exact_prefill, llm.full_tail
    paper = paper_skip_set(shape.n_layer)
    modes = (("full", "pop") + (() if tuple(skip) == paper or not skip else ("paper",))
             + (("exact",) if exact and skip else ()))

    def configure(mode: str) -> None:
        llm.pop_enabled = mode in ("pop", "paper")
        llm.exact_prefill = mode != "full"
        if mode in ("pop", "paper"):
            llm.skip_layers = paper if mode == "paper" else skip
            llm.kv_mode = "own" if mode == "paper" else was_kv
            llm.full_tail = 1 if mode == "paper" else was_tail  # the paper: only the last token at full depth

    total = len(ctx) + 1
    rows = []
    try:
        for i, n in enumerate(ctx):
            if progress:
                progress("benchmark", i, total)
            prompt = bench_prompt(llm, n)
            pruned = []

            def prefill(mode: str) -> float:
                configure(mode)
                before = llm.pop_stats()["pruned_tokens"]
                ms = time_prefill(llm, prompt)  # noqa: B023 - alternate() calls prefill() within this iteration
                if mode == "pop":
                    pruned.append(llm.pop_stats()["pruned_tokens"] - before)  # noqa: B023 - alternate() calls prefill() within this iteration
                return ms

            s = alternate(modes, repeats, prefill)
            full, pop = summarize(s["full"]), summarize(s["pop"])
            rows.append({"n_tokens": n, "full_ms": full, "pop_ms": pop, "speedup": full["median"] / pop["median"],
                         "ideal_speedup": ideal_speedup(shape, n, skip, exact, full_tail=llm.full_tail),
                         "pruned_tokens": pruned[-1]})
            if "paper" in modes:
                p = summarize(s["paper"])
                rows[-1].update({"paper_ms": p, "paper_speedup": full["median"] / p["median"],
                                 "paper_ideal_speedup": ideal_speedup(shape, n, paper, exact)})
            if "exact" in modes:
                e = summarize(s["exact"])
                rows[-1].update({"exact_ms": e, "exact_speedup": full["median"] / e["median"],
                                 "exact_ideal_speedup": ideal_speedup(shape, n, (), exact)})
        if progress:
            progress("benchmark", len(ctx), total)
        tokens = bench_prompt(llm, decode_ctx + decode_tokens)

        def decode(mode: str) -> float:
            configure(mode)
            return time_decode(llm, tokens[:decode_ctx], tokens[decode_ctx:])

        d = alternate(("full", "pop"), repeats, decode)
        if progress:
            progress("benchmark", total, total)
    finally:
        configure("pop")
        llm.pop_enabled, llm.exact_prefill = was_enabled, was_exact
        llm.reset()
    full_tps, pop_tps = summarize(d["full"]), summarize(d["pop"])
    return {
        "model": os.path.basename(llm.model_path),
        "skip_layers": format_layers(skip),
        "paper_skip_layers": format_layers(paper) if "paper" in modes else None,
        "exact_layers": format_layers(exact) if exact else None,
        "n_layer": shape.n_layer,
        "threads": llm.context_params.n_threads_batch,
        "runs": repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "prefill": rows,
        "decode": {"context": decode_ctx, "tokens": decode_tokens, "full_tps": full_tps, "pop_tps": pop_tps,
                   "pop_vs_full": pop_tps["median"] / full_tps["median"]},
    }


def format_table(result: Dict[str, Any]) -> str:
    """A Markdown table of `run_bench`'s result (what `pop-local bench` prints)."""
    paper, exact = result.get("paper_skip_layers"), "exact_ms" in result["prefill"][0]
    lines = ["| prompt tokens | full ms | POP ms | speedup | FLOP ideal |"
             + (f" paper's set ({paper}, own K/V) ms | paper speedup | paper FLOP ideal |" if paper else "")
             + (f" exact skip only ({result['exact_layers']}) ms | exact speedup | exact FLOP ideal |"
                if exact else ""),
             "|---|---|---|---|---|" + ("---|---|---|" if paper else "") + ("---|---|---|" if exact else "")]
    for r in result["prefill"]:
        f, p = r["full_ms"], r["pop_ms"]
        line = (f"| {r['n_tokens']} | {f['median']:.1f} ({f['min']:.1f}-{f['max']:.1f}) | "
                f"{p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | **{r['speedup']:.2f}x** | "
                f"{r['ideal_speedup']:.2f}x |")
        if paper:
            q = r["paper_ms"]
            line += (f" {q['median']:.1f} ({q['min']:.1f}-{q['max']:.1f}) | {r['paper_speedup']:.2f}x | "
                     f"{r['paper_ideal_speedup']:.2f}x |")
        if exact:
            e = r["exact_ms"]
            line += (f" {e['median']:.1f} ({e['min']:.1f}-{e['max']:.1f}) | {r['exact_speedup']:.2f}x | "
                     f"{r['exact_ideal_speedup']:.2f}x |")
        lines.append(line)
    d = result["decode"]
    lines += ["", f"Decode after a {d['context']}-token prompt ({d['tokens']} tokens): "
                  f"full {d['full_tps']['median']:.1f} tok/s, POP {d['pop_tps']['median']:.1f} tok/s "
                  f"(POP/full {d['pop_vs_full']:.3f})."]
    return "\n".join(lines)


def save_speedup_plot(result: Dict[str, Any], path: str) -> None:
    """PNG of measured and FLOP-ideal prefill speedup against prompt length (matplotlib; temp file + rename)."""
    from .plotting import pyplot, save_figure

    plt = pyplot()
    rows = result["prefill"]
    n = [r["n_tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(n, [r["speedup"] for r in rows], "o-", label="measured (median)")
    ax.fill_between(n, [r["full_ms"]["min"] / r["pop_ms"]["max"] for r in rows],
                    [r["full_ms"]["max"] / r["pop_ms"]["min"] for r in rows], alpha=0.2, label="spread")
    ax.plot(n, [r["ideal_speedup"] for r in rows], "s--", label="FLOP ideal")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("prefill speedup (full / POP)")
    ax.set_title(f"{result['model']}, skip {result['skip_layers']}")
    ax.legend()
    save_figure(fig, path)
