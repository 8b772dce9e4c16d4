"""The converter's answer check against the answers suite on every candidate the check measured in a
conversion: the check's verdict (recorded in results/convert-NAME-streamed.json by converter_cost.py)
next to the suite's verdict on the same candidate, the same weights and fitted projections.

    python benchmarks/converter_cost.py gemma3 --keep /tmp/g.pop.gguf --keep-candidates /tmp/g-cand
    python benchmarks/candidate_agreement.py gemma3 --chosen /tmp/g.pop.gguf --dir /tmp/g-cand \
        --tasks niah_single_1 --length 1024 --items 50

Own-K/V candidates run on the chosen file with their skip set; fitted ones on the file the check
loaded (kept by --keep-candidates), the chosen one on the chosen file itself. The full model runs once.
Writes results/candidate-agreement-NAME.json (commit, machine, date, command).

With --rescore the suite's cells of that file stay (each cell records its own run) and only the check
runs again, the current one, on every candidate there, with the same --chosen and --dir:

    python benchmarks/candidate_agreement.py gemma3 --chosen /tmp/g.pop.gguf --dir /tmp/g-cand --rescore
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def candidate_files(measured, chosen: str, folder: str, chosen_skip: str, chosen_kv: str):
    """(setting name, model file, setting args) per measured candidate."""
    out = []
    for m in measured:
        name = f"{m['skip']} {m['kv']}"
        if m["kv"] == "own":
            out.append((name, chosen, {"pop": True, "skip_layers": m["skip"], "kv_mode": "own"}))
        elif (m["skip"], m["kv"]) == (chosen_skip, chosen_kv):
            out.append((name, chosen, {}))
        else:
            path = os.path.join(folder, f"{m['skip']}-fitted.pop.gguf")
            if not os.path.exists(path):
                raise SystemExit(f"{path} is missing: convert with --keep-candidates {folder}")
            out.append((name, path, {}))
    return out


def main(argv=None) -> int:
    from check_agreement import agreement, suite_verdict

    from pop_local.format.atomic import write_json
    from pop_local.format.layers import format_layers
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.integrations.lm_eval_suite import run_suite
    from pop_local.measure import suite
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the converter_cost.py name: smollm2, gemma3, qwen2.5-coder-1.5b")
    p.add_argument("--chosen", required=True, help="the conversion's output (converter_cost.py --keep)")
    p.add_argument("--dir", required=True, help="its fitted candidates (convert --keep-candidates)")
    p.add_argument("--tasks", default="niah_single_1,pop_docqa")
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--items", type=int, default=30)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--rescore", action="store_true",
                   help="keep the recorded suite cells; run the current check on each recorded candidate")
    a = p.parse_args(argv)
    if a.rescore:
        return rescore(a, argv)
    conv = json.load(open(os.path.join(a.out, f"convert-{a.name}-streamed.json")))
    check = conv["frontier"]["check"]
    meta = read_pop_metadata(a.chosen)
    kv = meta.extra.get("pop.prefill.kv_method", "own")
    if list(meta.skip_layers) != conv["skip_layers"] or kv != conv["kv_method"]:
        raise SystemExit(f"{a.chosen} is not the conversion recorded in convert-{a.name}-streamed.json")
    runs = candidate_files(check["measured"], a.chosen, a.dir, format_layers(meta.skip_layers), kv)
    tasks, L = a.tasks.split(","), a.length
    on_chosen = [suite.Setting("full", {"pop": False})] + [suite.Setting(n, args) for n, f, args in runs
                                                           if f == a.chosen]
    result = run_suite(a.chosen, lengths=[L], items={L: a.items}, tasks=tasks, settings=on_chosen, progress=print)
    for name, path, args in runs:
        if path != a.chosen:
            part = run_suite(path, lengths=[L], items={L: a.items}, tasks=tasks, settings=[suite.Setting(name, args)],
                             progress=print)
            result["cells"] += part["cells"]
            result["settings"].update(part["settings"])
    rows = suite.retention(result)
    out_rows = []
    for m, (name, path, _) in zip(check["measured"], runs):
        cells = [{k: r[k] for k in ("task", "length", "n", "score", "full", "low", "verdict")}
                 for r in rows if r["setting"] == name]
        verdict = suite_verdict(cells)
        out_rows.append({"candidate": name, "file": os.path.basename(path), "check": m, "suite": verdict,
                         "cells": cells, "agreement": agreement(m["passed"], verdict)})
        print(f"{name}: check {'passes' if m['passed'] else 'fails'}; suite {verdict} -> {out_rows[-1]['agreement']}",
              flush=True)
    command = "python benchmarks/candidate_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:])
    path = os.path.join(a.out, f"candidate-agreement-{a.name}.json")
    write_json(path, {"name": a.name, "conversion": f"convert-{a.name}-streamed.json", "check_shape": {
        k: check[k] for k in ("items", "length", "full_right")}, "tasks": tasks, "length": L, "items": a.items,
        "rows": out_rows, "cells": result["cells"], **provenance(command)})
    print(f"saved {path}")
    return 0


def check_verdicts(chosen: str, runs, progress=print):
    """The current check (converter/answer_check.py) on each (name, file, setting args): its shape and,
    per candidate, what the converter records (scored, lost, low, passed), stopped where it stops."""
    from pop_local.converter.answer_check import AnswerCheck
    from pop_local.format.layers import parse_layers
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.runtime.llama import PopLlama

    check = AnswerCheck(chosen, read_pop_metadata(chosen))
    items, length, right = check.shape
    progress(f"check: the full model answers {right} of {items} questions")
    out = {}
    try:
        for name, path, args in runs:
            if path == chosen and args:  # an own-K/V set: the reference's weights, that skip set
                got = check.score(parse_layers(args["skip_layers"]))
            else:  # the file's own setting (its fitted projections)
                llm = PopLlama(path, min_tokens=0, **check._load())
                try:
                    got = check.score_loaded(llm)
                finally:
                    llm.close()
            out[name] = {"scored": got.scored, "lost": got.lost, "low": None if math.isnan(got.low) else got.low,
                         "passed": got.passed(right)}
            progress(f"{name}: check {got.text(right)}")
    finally:
        check.close()
    return {"items": items, "length": length, "full_right": right}, out


def rescore(a, argv) -> int:
    from check_agreement import agreement

    from pop_local.format.atomic import write_json
    from pop_local.measure.provenance import provenance

    path = os.path.join(a.out, f"candidate-agreement-{a.name}.json")
    prev = json.load(open(path))
    runs = [(r["candidate"], a.chosen if r["file"] == os.path.basename(a.chosen) else os.path.join(a.dir, r["file"]),
             {} if r["check"]["kv"] == "fitted" else {"skip_layers": r["check"]["skip"]}) for r in prev["rows"]]
    for name, file, _ in runs:
        if not os.path.exists(file):
            raise SystemExit(f"{file} ({name}) is missing: give the conversion's --chosen and --dir")
    shape, verdicts = check_verdicts(a.chosen, runs)
    for r in prev["rows"]:
        r["check"] = {**{k: r["check"][k] for k in ("skip", "kv", "speedup_2048")}, **verdicts[r["candidate"]]}
        r["agreement"] = agreement(r["check"]["passed"], r["suite"])
    command = "python benchmarks/candidate_agreement.py " + " ".join(argv if argv is not None else sys.argv[1:])
    prev.update({"check_shape": shape, "suite_command": prev.get("suite_command", prev["command"]),
                 **provenance(command)})
    write_json(path, prev)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
