"""What POP saves and what it changes by prompt length: the measurements behind pop.prefill.min_tokens.

    python benchmarks/min_tokens.py smollm2 gemma3

For each model (its POP file at default settings, as benchmarks/headline.py makes it), with the prompt
minimum off (every prompt pruned): prefill time full vs POP at short lengths (alternating runs, medians;
pop_local.measure.bench) and the greedy replies to the built-in short chat questions compared with the
full model's (pop_local.measure.answers). Writes results/min-tokens-NAME.json (commit, machine, date,
command); benchmarks/tables.py renders it (key min-tokens).
"""

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from headline import pop_file  # noqa: E402

LENGTHS = (16, 32, 64, 128, 256, 512)


def measure(name: str, repeats: int) -> dict:
    from pop_local.converter.default_model import model_meta
    from pop_local.measure.answers import builtin_answer_set, run_answers
    from pop_local.measure.bench import run_bench
    from pop_local.runtime.models import open_model
    from pop_local.runtime.settings import LoadSettings, PopSettings

    meta = model_meta(pop_file(name))
    llm = open_model(meta, LoadSettings(n_ctx=2048, n_batch=2048), PopSettings(min_tokens=0)).llm
    speed = run_bench(llm, list(LENGTHS), repeats=repeats, decode_tokens=2, decode_ctx=16)
    short = [i for i in builtin_answer_set() if i.group == "short"]
    answers = run_answers(llm, short, settings=["pop"])
    rows = [{"n_tokens": r["n_tokens"], "full_ms": r["full_ms"]["median"], "pop_ms": r["pop_ms"]["median"],
             "saved_ms": r["full_ms"]["median"] - r["pop_ms"]["median"], "speedup": r["speedup"],
             "ideal_speedup": r["ideal_speedup"]} for r in speed["prefill"]]
    return {"name": name, "model": speed["model"], "skip_layers": speed["skip_layers"], "threads": speed.get("threads"),
            "prefill": rows, "short_answers": answers["settings"]["pop"]["short"],
            "short_prompt_tokens": answers["prompt_tokens"]["short"]}


def main(argv=None) -> int:
    from pop_local.format.atomic import write_json
    from pop_local.measure.provenance import provenance

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="smollm2, gemma3, qwen2.5-coder-1.5b")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    for name in a.names:
        path = os.path.join(a.out, f"min-tokens-{name}.json")
        write_json(path, {**measure(name, a.repeats), **provenance(" ".join(["python"] + sys.argv))})
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
