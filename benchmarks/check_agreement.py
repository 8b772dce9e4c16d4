"""Does the converter's answer check say what the answers suite says? For every POP setting a suite
results file records, the check's verdict (converter/answer_check.py: its own needle and document
questions at 1k, the rule of format.frontier.keeps_answers) beside the suite's verdicts on every task the
full model can do at each recorded length up to --max-length.

    python benchmarks/check_agreement.py gemma3
    python benchmarks/check_agreement.py qwen2.5-coder-1.5b --settings default,paper
    python benchmarks/check_agreement.py mine --model my.pop.gguf --suite benchmarks/results/suite-mine.json

The suite "keeps" a setting when every such cell is kept, "loses" it when any is lost, and is undecided
otherwise; the two agree when the check passes a setting the suite keeps or fails one it loses. Writes
results/check-agreement-NAME.json (with the commit, machine, date and command); the check's verdict is
the converter's own (stopped early where the converter stops: the verdict is the same by construction).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def suite_verdict(rows) -> str:
    """keeps / loses / undecided over a setting's retention rows (tasks the full model cannot do left out)."""
    able = [r for r in rows if r["verdict"] != "full below 0.3"]
    if not able:
        return "undecided"
    if any(r["verdict"] == "lost" for r in able):
        return "loses"
    return "keeps" if all(r["verdict"] == "kept" for r in able) else "undecided"


def agreement(check_passed: bool, suite: str) -> str:
    if suite == "undecided":
        return "suite undecided"
    return "agree" if check_passed == (suite == "keeps") else "disagree"


def measure(model: str, result: dict, names, max_length: int, progress):
    """(one row per setting: the check's result and verdict, the suite's cells and verdict, agreement;
    the check's shape)."""
    from pop_local.converter.answer_check import AnswerCheck
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.measure.suite import retention
    from pop_local.runtime.settings import PopSettings, build

    rows = [r for r in retention(result) if r["length"] <= max_length]
    check = AnswerCheck(model, read_pop_metadata(model), progress=progress("the full model"))
    items, length, right = check.shape
    out = []
    try:
        for name in names:
            check.progress = progress(name)
            check.llm.apply_pop_settings(build(PopSettings, result["settings"][name]["args"]))
            got = check.score_loaded(check.llm)
            cells = [{k: r[k] for k in ("task", "length", "n", "score", "full", "low", "verdict")}
                     for r in rows if r["setting"] == name]
            suite = suite_verdict(cells)
            passed = got.passed(right)
            out.append({"setting": name, "args": result["settings"][name]["args"],
                        "check": {"scored": got.scored, "lost": got.lost,
                                  "low": None if math.isnan(got.low) else got.low, "passed": passed,
                                  "text": got.text(right)},
                        "suite": suite, "cells": cells, "agreement": agreement(passed, suite)})
            print(f"{name}: check {got.text(right)}; suite {suite} -> {out[-1]['agreement']}", flush=True)
    finally:
        check.close()
    return out, {"items": items, "length": length, "full_right": right}


def main(argv=None) -> int:
    from suite import _model  # the suite's own model for NAME

    from pop_local.format.atomic import write_json
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a suite results name: smollm2, gemma3, qwen2.5-coder-1.5b, or any with --model")
    p.add_argument("--model", help="the POP GGUF the suite ran (default: the suite's model for NAME)")
    p.add_argument("--suite", help="the suite's results (default: results/suite-NAME.json)")
    p.add_argument("--settings", help="comma separated (default: every POP setting recorded)")
    p.add_argument("--max-length", type=int, default=4096, help="suite cells up to this prompt length")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    with open(a.suite or os.path.join(HERE, "results", f"suite-{a.name}.json")) as f:
        result = json.load(f)
    names = a.settings.split(",") if a.settings else [s for s in result["settings"] if s != "full"]
    unknown = [n for n in names if n not in result["settings"]]
    if unknown:
        raise SystemExit(f"settings {unknown} are not in the suite's results ({', '.join(result['settings'])})")
    from tqdm import tqdm

    bars = {}

    def progress(stage):
        def tick(n, total):
            bar = bars.get(stage) or bars.setdefault(stage, tqdm(total=total, desc=f"check: {stage}", leave=False))
            bar.n = n
            bar.refresh()
        return tick

    rows, shape = measure(_model(a), result, names, a.max_length, progress)
    out = {"name": a.name, "model": os.path.basename(_model(a)), "check": shape, "max_length": a.max_length,
           "rows": rows, **provenance()}
    path = os.path.join(a.out, f"check-agreement-{a.name}.json")
    write_json(path, out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
