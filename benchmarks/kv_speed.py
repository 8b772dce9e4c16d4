"""Prefill time with fitted K/V projections vs the layers' own, in one process (same file, same skip set).

    python benchmarks/kv_speed.py model.fitted.gguf [--ctx 512,2048] [--repeats 7]

Own and fitted alternate (order flipping every round) after a warm-up; prints medians and spread.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a GGUF converted with --kv fitted")
    p.add_argument("--ctx", default="512,2048")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)

    from pop_local import PopLlama
    from pop_local.measure.bench import alternate, bench_prompt, summarize, time_prefill

    ctx = [int(x) for x in args.ctx.split(",")]
    llm = PopLlama(args.model, n_ctx=max(ctx) + 16, n_batch=max(ctx), verbose=False)
    if not llm.fitted_active:
        p.error(f"{args.model} has no fitted K/V projections for its skip set")
    print("| prompt tokens | POP own K/V ms | POP fitted K/V ms | fitted / own |\n|---|---|---|---|")
    for n in ctx:
        prompt = bench_prompt(llm, n)

        def run(mode: str) -> float:
            llm.kv_mode = mode
            return time_prefill(llm, prompt)  # noqa: B023 - alternate() calls run() within this iteration

        s = alternate(("own", "fitted"), args.repeats, run)
        own, fit = summarize(s["own"]), summarize(s["fitted"])
        print(f"| {n} | {own['median']:.1f} ({own['min']:.1f}-{own['max']:.1f}) | "
              f"{fit['median']:.1f} ({fit['min']:.1f}-{fit['max']:.1f}) | {fit['median'] / own['median']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
