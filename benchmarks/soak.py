"""Soak test of `pop-local serve` at scale: concurrent clients, mixed streaming, abandoned streams, stats
polled (the harness and what it reports: tests/helpers/soak.py; tests/test_serving.py runs it at test size).

    python benchmarks/soak.py [MODEL] --clients 8 --requests 400 --abandon 0.1 [--json soak.json]
"""

import argparse
import os
import sys
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from helpers.soak import soak  # noqa: E402


def markdown(r: Dict[str, Any]) -> str:
    return ("| clients | requests | streaming | abandoned | completed | failed | truncated | differ from alone | "
            "/pop/stats polls (failed, slowest) | RSS after warm-up → end | seconds |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {r['clients']} | {r['requests']} | {r['streaming']} | {r['abandoned']} | {r['completed']} | "
            f"{r['failed']} | {r['truncated']} | {r['differ_from_alone']} | {r['stats_polls']} ({r['stats_failures']}, "
            f"{r['slowest_poll_s']} s) | {r['rss_after_reference_mb']} → {r['rss_end_mb']} MB "
            f"({r['rss_growth_mb']:+} MB) | {r['seconds']} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="GGUF (default: the embedded default model)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--abandon", type=float, default=0.1, help="share of the requests that are streams dropped mid-way")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()

    def progress(done, total):
        if done % 25 == 0 or done == total:
            print(f"{done}/{total} requests", file=sys.stderr, flush=True)

    result = soak(args.model, clients=args.clients, requests=args.requests, abandon=args.abandon,
                  max_tokens=args.max_tokens, seed=args.seed, progress=progress)
    print(markdown(result))
    for example in result["examples"]:
        print(example)
    if args.json:
        from pop_local.format.atomic import write_json

        write_json(args.json, result)
    return 1 if (result["failed"] or result["truncated"] or result["differ_from_alone"]
                 or result["stats_failures"]) else 0


if __name__ == "__main__":
    sys.exit(main())
