"""The embedded default model's first start, measured: `default_model()` into an empty cache folder (the
re-quantization, the calibration, the answer check, the write), its wall time, the skip set it chose and
what the answer check measured on each own-K/V candidate.

    python benchmarks/first_start.py            # results/first-start-smollm2.json

The folder is a fresh temporary one (POP_LOCAL_CACHE), removed afterwards; the user's cache is untouched.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    from pop_local.format.atomic import write_json
    from pop_local.format.layers import format_layers
    from pop_local.measure.provenance import provenance

    with tempfile.TemporaryDirectory(prefix="pop-local-first-start-") as folder:
        os.environ["POP_LOCAL_CACHE"] = folder
        from pop_local.converter.default_model import DEFAULT_BUDGET, DEFAULT_RECIPE, default_model

        started = time.perf_counter()
        meta = default_model(lambda stage, n, total: None)
        seconds = time.perf_counter() - started
        f = meta.frontier
        kv = meta.extra.get("pop.prefill.kv_method", "own")
        items, length, right = f.check or (0, 0, 0)
        measured = [{"skip": format_layers(r.skip), "speedup_2048": r.speedup_2048, "scored": c.scored,
                     "lost": c.lost, "passed": f.passed(c)} for r in f.rows for c in [r.check(kv)] if c is not None]
        out = {"recipe": DEFAULT_RECIPE, "budget": {k: v for k, v in DEFAULT_BUDGET.items() if k != "max_ratio"},
               "seconds": round(seconds, 1), "skip_layers": format_layers(meta.skip_layers), "kv_method": kv,
               "speedup_2048": f.choice.speedup_2048, "check": {"items": items, "length": length,
                                                                 "full_right": right, "measured": measured}}
    command = "python benchmarks/first_start.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = os.path.join(a.out, "first-start-smollm2.json")
    write_json(path, {**out, **provenance(command)})
    print(f"{out['skip_layers']} ({kv} K/V), {seconds / 60:.1f} min; saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
