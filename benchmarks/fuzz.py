"""Seeded mutation fuzzing of everything that reads pop.* metadata.

Targets
  reader    pop_local.format.gguf_kv + pop_local.format.metadata.read_pop_metadata (the header reader and every
            pop.* check, the quality frontier's included) on byte-level mutations of a POP file's
            header: truncation, bit flips, huge lengths and counts, wrong value types, spliced bytes;
            every 10th input also through `pop-local inspect`.
  keys      the same readers on structured mutations: pop.* keys with malformed skip sets, wrong
            types, partial or inconsistent frontiers, out-of-range numbers (written with gguf).
  native    libllama's own key checks (native/pop.cpp), differentially against the Python checks:
            mutated runtime keys through kv_overrides and through files, loaded by a plain
            llama_cpp.Llama in a worker process (a crash kills the worker, not the run). Both must
            accept or reject the same inputs and, when they accept, agree on the skip set.

Oracle: an input is accepted, or rejected with a PopError whose message is one line naming the key or
the file; anything else is a crash, more than 5 s is a hang, and the input file must be unchanged.

    python benchmarks/fuzz.py --inputs 10000 --seed 0 [--json fuzz.json]
"""

import argparse
import os
import sys
import tempfile
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers.fuzzing import run  # noqa: E402


def markdown(result: Dict[str, Dict[str, Any]]) -> str:
    lines = ["| target | inputs | accepted | rejected | crashes | hangs | unclear messages | inputs modified | "
             "Python/native disagreements | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result.items():
        lines.append(f"| {name} | {r['inputs']} | {r['accepted']} | {r['rejected']} | {r['crashes']} | {r['hangs']} | "
                     f"{r['bad_messages']} | {r['inputs_modified']} | {r['disagreements']} | {r['seconds']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    from pop_local.runtime.models import smollm2_path

    with tempfile.TemporaryDirectory() as folder:
        result = run(smollm2_path(), args.inputs, args.seed, folder)
    print(markdown(result))
    for name, r in result.items():
        for example in r["examples"]:
            print(f"{name}: {example}")
    if args.json:
        from pop_local.format.atomic import write_json

        write_json(args.json, {"inputs": args.inputs, "seed": args.seed, "targets": result})
    failed = sum(r["crashes"] + r["hangs"] + r["bad_messages"] + r["inputs_modified"] + r["disagreements"]
                 for r in result.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
