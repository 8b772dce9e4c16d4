"""Seeded mutation fuzzing of everything that reads pop.* metadata, at scale (the harness, its targets and
its oracle: tests/helpers/fuzzing.py; tests/test_fuzz.py runs it at test size).

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
