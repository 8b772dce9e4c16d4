"""Prefill full vs POP on generated models of the architecture kinds no real model here covers:

    python benchmarks/architectures.py                 # both, 512 and 2048 tokens, JSON in benchmarks/results/
    python benchmarks/architectures.py --only moe --ctx 512 --repeats 3

- moe: a qwen3moe model (24 layers, hidden 1024, 8 experts, top-2; Qwen3-30B-A3B's layout at a size
  that runs here), POP on the last third (16-23). The FLOP ideal counts only the routed experts.
- kv-sharing: a gemma4 model (24 layers, hidden 1024, the last 10 layers reuse earlier layers' K/V, as
  Gemma 4 E4B's last 18 of 42 do): the exact skip of those 10 layers alone (lossless), and with POP on
  the 4 layers before them (10-13).

The weights are random (tests/tiny_models.py, seeded): the speed is real, the numbers say nothing about
quality. Each run is `pop-local bench`'s measurement (pop_local.measure.bench.run_bench: alternating rounds,
medians) and its JSON records the commit, machine and command.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from pop_local.format.atomic import write_json  # noqa: E402
from pop_local.measure.provenance import provenance  # noqa: E402

CASES = {
    # name: (architecture, Dims fields, POP's skip set)
    "moe": ("qwen3moe", dict(n_layer=24, n_embd=1024, n_head=16, n_head_kv=4, head_dim=64, n_expert=8,
                             n_expert_used=2, n_ff_exp=1024), "16-23"),
    "kv-sharing": ("gemma4", dict(n_layer=24, n_embd=1024, n_head=8, n_head_kv=2, head_dim=128, n_ff=4096,
                                  n_kv_shared=10), "10-13"),
}


def run_case(name: str, ctx, repeats: int, threads) -> dict:
    from helpers.tiny_models import Dims, tiny_model
    from pop_local import PopLlama
    from pop_local.measure.bench import format_table, run_bench

    arch, dims, skip = CASES[name]
    path = tiny_model(arch, Dims(**dims))
    llm = PopLlama(path, n_ctx=max(ctx) + 128, n_batch=max(ctx), n_ubatch=512, skip_layers=skip, verbose=False,
                   **({"n_threads": threads, "n_threads_batch": threads} if threads else {}))
    try:
        result = run_bench(llm, ctx, repeats=repeats, decode_tokens=16)
    finally:
        llm.close()
    print(f"\n{name}: {arch}, {dims}, random weights\n{format_table(result)}", flush=True)
    return {"case": name, "architecture": arch, "dims": dims, "weights": "random (generated): speed only, not quality",
            **result}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    p.add_argument("--ctx", default="512,2048", help="prompt lengths, comma separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(HERE, "results"), help="folder for arch-<case>.json")
    a = p.parse_args(argv)
    ctx = [int(x) for x in a.ctx.split(",")]
    for name in a.only or sorted(CASES):
        result = run_case(name, ctx, a.repeats, a.threads)
        result.update(provenance("python benchmarks/architectures.py "
                                 + " ".join(argv if argv is not None else sys.argv[1:])))
        os.makedirs(a.out, exist_ok=True)
        write_json(os.path.join(a.out, f"arch-{name}.json"), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
