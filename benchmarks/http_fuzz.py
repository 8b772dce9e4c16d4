"""HTTP fuzzing of `pop-local serve` at scale (the harness and its oracle: tests/helpers/http_fuzz.py;
tests/test_server_access.py runs it at test size): schemathesis against the server's own OpenAPI schema,
then hand-written malformed requests, on SmolLM2 with POP on (its last third skipped, every prompt pruned).

    python benchmarks/http_fuzz.py --requests 1000 --seed 0 [--json results/http-fuzz.json]
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers.http_fuzz import run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    from pop_local.converter.writer import write_pop_gguf
    from pop_local.format.atomic import write_json
    from pop_local.measure.provenance import provenance
    from pop_local.runtime.models import smollm2_path

    with tempfile.TemporaryDirectory() as folder:
        model = str(write_pop_gguf(smollm2_path(), os.path.join(folder, "smollm2.pop.gguf"), "20-29", min_tokens=0))
        result = run(model, requests=args.requests, seed=args.seed, progress=print)
    summary = {k: v for k, v in result.items() if k not in ("by_operation", "failures")}
    print(json.dumps(summary, indent=1))
    for failure in result["failures"]:
        print("failure:", failure)
    if args.json:
        write_json(args.json, {**result, "model": "SmolLM2-135M-Instruct Q4_1, skip 20-29, min_tokens 0",
                               **provenance(" ".join(["python", "benchmarks/http_fuzz.py"] + sys.argv[1:]))})
    bad = result["server_errors"] + result["unanswered"] + result["hangs"] + result["crashes"]
    return 1 if bad or result["after"] != 200 else 0


if __name__ == "__main__":
    sys.exit(main())
