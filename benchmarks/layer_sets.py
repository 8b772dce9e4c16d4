"""Skip sets chosen layer by layer by the answers they keep, instead of one tail block: starting from a
set that keeps the full model's answers (the file's skip set, or --start), add one layer at a time, in
order of the file's prefill importance (least important first), and keep it when the converter's answer
check (converter/answer_check.py: needle and document questions at 1k) still passes; stop after
--max-fail rejections in a row. Own K/V throughout. The result is a set to measure on the suite:

    python benchmarks/layer_sets.py gemma3
    python benchmarks/suite.py gemma3 --resume --lengths 2048 --items 50 --tasks niah_single_1 \
        --settings full --add-setting 'greedy:skip_layers=...;kv_mode=own'

Writes results/layer-sets-NAME.json (every trial: the layer, its importance, the check's result, the
set's FLOP-ideal prefill speedup at 2048 tokens; commit, machine, date, command).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def main(argv=None) -> int:
    from suite import _model
    from tqdm import tqdm

    from pop_local.converter.answer_check import AnswerCheck
    from pop_local.format import keys
    from pop_local.format.atomic import write_json
    from pop_local.format.layers import format_layers, parse_layers
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.measure.flops import ideal_speedup, model_shape
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="smollm2, gemma3, qwen2.5-coder-1.5b, or any name with --model")
    p.add_argument("--model", help="a POP GGUF with importance profiles (default: the suite's model for NAME)")
    p.add_argument("--start", help="the set to grow (default: the file's skip set)")
    p.add_argument("--max-fail", type=int, default=3, help="rejections in a row before stopping")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    model = _model(a)
    meta = read_pop_metadata(model)
    importance = meta.extra.get(keys.IMPORTANCE_PREFILL)
    if not importance:
        raise SystemExit(f"{model} has no prefill importance profile (convert it with calibration)")
    skip = tuple(parse_layers(a.start, meta.n_layer)) if a.start else tuple(meta.skip_layers)
    shape = model_shape(model)
    order = sorted((i for i in range(1, meta.n_layer) if i not in skip), key=lambda i: importance[i])
    bar = tqdm(desc="check", leave=False)

    def tick(n, total):
        bar.total, bar.n = total, n
        bar.refresh()

    check = AnswerCheck(model, meta, progress=tick)
    items, length, right = check.shape
    trials = []
    try:
        start = check.score(skip)
        print(f"start {format_layers(skip)}: {start.text(right)}", flush=True)
        fails = 0
        for layer in order:
            trial = tuple(sorted(skip + (layer,)))
            got = check.score(trial)
            kept = got.passed(right)
            trials.append({"layer": layer, "importance": float(importance[layer]), "set": format_layers(trial),
                           "speedup_2048": ideal_speedup(shape, 2048, trial), "scored": got.scored, "lost": got.lost,
                           "low": None if got.scored < right else got.low, "kept": kept})
            print(f"+{layer} -> {format_layers(trial)}: {got.text(right)}", flush=True)
            if kept:
                skip, fails = trial, 0
            else:
                fails += 1
                if fails >= a.max_fail:
                    break
    finally:
        check.close()
        bar.close()
    out = {"name": a.name, "model": os.path.basename(model), "check": {"items": items, "length": length,
                                                                       "full_right": right},
           "start": {"set": a.start or format_layers(meta.skip_layers), "passed": start.passed(right),
                     "text": start.text(right)},
           "final": format_layers(skip), "final_speedup_2048": ideal_speedup(shape, 2048, skip), "trials": trials,
           **provenance()}
    path = os.path.join(a.out, f"layer-sets-{a.name}.json")
    write_json(path, out)
    print(f"final {format_layers(skip)} ({out['final_speedup_2048']:.2f}x ideal at 2048); saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
