"""Which weight type should the embedded default model ship? SmolLM2-135M-Instruct as its package ships
it (Q4_1) and re-quantized with llama.cpp's own quantizer (llama_model_quantize, requantizing allowed)
to other types: prefill speed, full model and the paper's set (20-29, own K/V), alternating over all
types in one process (medians), and the full model's answers to the converter's check questions at 1k
tokens (its first --documents documents), paired with the shipped type's (results recorded before the
check asked several questions per document asked its 24 single-question items).

    python benchmarks/weight_types.py --types q4_1,q8_0,q4_0,q4_k_m --lengths 512,2048 --repeats 3

Writes results/weight-types-smollm2.json (commit, machine, date, command).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

def main(argv=None) -> int:
    from pop_local.converter.answer_check import check_items
    from pop_local.converter.quantize import WEIGHT_TYPES as FTYPES, requantize
    from pop_local.format.atomic import write_json
    from pop_local.format.frontier import paper_skip_set
    from pop_local.measure.answers import greedy_reply
    from pop_local.measure.bench import bench_prompt, time_prefill
    from pop_local.measure.docqa import score_reply
    from pop_local.measure.provenance import provenance
    from pop_local.measure.suite import paired_interval
    from pop_local.runtime.llama import PopLlama
    from pop_local.runtime.models import smollm2_path

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--types", default="q4_1,q8_0,q4_0,q4_k_m", help=f"comma separated, of {', '.join(FTYPES)}")
    p.add_argument("--lengths", default="512,2048")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--documents", type=int, default=6, help="the check's first documents (up to 4 questions each)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    kinds = a.types.split(",")
    if "q4_1" not in kinds or any(k not in FTYPES for k in kinds):
        raise SystemExit(f"--types: q4_1 (the shipped type) and any of {', '.join(FTYPES)}")
    lengths = [int(x) for x in a.lengths.split(",")]
    src = smollm2_path()
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: src if k == "q4_1" else requantize(src, os.path.join(tmp, f"{k}.gguf"), k) for k in kinds}
        llms = {k: PopLlama(path, pop=False, skip_layers=(), min_tokens=0, n_ctx=max(lengths + [1024]) + 160,
                            n_batch=512, verbose=False, seed=0) for k, path in paths.items()}
        paper = paper_skip_set(llms["q4_1"].pop_metadata.n_layer)
        try:
            speed = _speed(llms, paper, lengths, a.repeats, bench_prompt, time_prefill)
            count = lambda text: len(llms["q4_1"].tokenize(text.encode(), add_bos=False, special=False))  # noqa: E731
            items = check_items(count, 1024, a.documents)
            answers = {k: [score_reply(greedy_reply(llm, i.prompt, 24), i.answer, i.distractors) for i in items]
                       for k, llm in llms.items()}
        finally:
            for llm in llms.values():
                llm.close()
        sizes = {k: os.path.getsize(path) for k, path in paths.items()}
    rows = []
    for k in kinds:
        diff, low, high = paired_interval(answers[k], answers["q4_1"])
        rows.append({"type": k, "file_bytes": sizes[k], "prefill_ms": speed[k],
                     "answers": {"n": len(items), "score": sum(answers[k]) / len(items), "diff_vs_q4_1": diff,
                                 "low": low, "high": high}})
        print(f"{k}: {sizes[k] / 2**20:.0f} MiB; prefill " + ", ".join(
            f"{n}: full {speed[k][str(n)]['full']:.0f} ms, paper {speed[k][str(n)]['paper']:.0f} ms" for n in lengths)
            + f"; answers {sum(answers[k])}/{len(items)}", flush=True)
    out = {"model": os.path.basename(src), "lengths": lengths, "repeats": a.repeats, "paper": list(paper),
           "rows": rows, **provenance()}
    path = os.path.join(a.out, "weight-types-smollm2.json")
    write_json(path, out)
    print(f"saved {path}")
    return 0


def _speed(llms, paper, lengths, repeats, bench_prompt, time_prefill):
    """{type: {length: {full, paper: median ms}}}: every type and setting alternating, order flipping."""
    runs = [(k, mode) for k in llms for mode in ("full", "paper")]
    times = {k: {str(n): {"full": [], "paper": []} for n in lengths} for k in llms}
    for n in lengths:
        prompt = bench_prompt(llms["q4_1"], n)
        for r in range(repeats + 1):  # the first round warms up
            for k, mode in (runs if r % 2 == 0 else runs[::-1]):
                llm = llms[k]
                llm.skip_layers, llm.pop_enabled = paper, mode == "paper"
                ms = time_prefill(llm, prompt)
                if r:
                    times[k][str(n)][mode].append(ms)
                llm.pop_enabled = False
    return {k: {n: {m: statistics.median(v) for m, v in modes.items()} for n, modes in by.items()}
            for k, by in times.items()}


if __name__ == "__main__":
    sys.exit(main())
