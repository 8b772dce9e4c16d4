"""The one table tests/gpu/run.sh prints: what the GPU tests gave, and per model the prefill speedup
with every layer offloaded next to the quality at the same setting (KL and top-1 against the full
model, from `pop-local eval`).

    python tests/gpu/report.py BACKEND RESULTS_DIR [--build-seconds N] [--test-seconds N]
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def test_counts(path: Path) -> str:
    if not path.exists():
        return "not run"
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    total = int(suite.get("tests", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    skipped = int(suite.get("skipped", 0))
    return f"{total - failed - skipped} passed, {failed} failed, {skipped} skipped"


def model_rows(results: Path) -> list[str]:
    rows = []
    for bench_path in sorted(results.glob("bench-*.json")):
        name = bench_path.stem[len("bench-"):]
        bench = json.loads(bench_path.read_text())
        eval_path = results / f"eval-{name}.json"
        quality = "not measured"
        if eval_path.exists():
            pop = json.loads(eval_path.read_text())["modes"]["pop"]
            quality = f"KL {pop['kl_to_full']:.3f}, top-1 {pop['top1_agreement']:.3f}"
        for p in bench["prefill"]:
            rows.append(f"| {name} ({bench['skip_layers']} of {bench['n_layer']}) | {p['n_tokens']} "
                        f"| {p['full_ms']['median']:.0f} | {p['pop_ms']['median']:.0f} | {p['speedup']:.2f}x "
                        f"| {p.get('ideal_speedup', float('nan')):.2f}x | {quality} |")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("backend")
    ap.add_argument("results", type=Path)
    ap.add_argument("--build-seconds", type=int)
    ap.add_argument("--test-seconds", type=int)
    a = ap.parse_args(argv)

    from pop_local.runtime.devices import offload_devices

    gpus = ", ".join(f"{d.name} ({d.description})" for d in offload_devices()) or "none"
    print(f"\n## POP on {a.backend}: {gpus}\n")
    print(f"tests/test_gpu_offload.py: {test_counts(a.results / 'tests.xml')}"
          + (f" in {a.test_seconds} s" if a.test_seconds is not None else "")
          + (f"; build {a.build_seconds} s" if a.build_seconds is not None else ""))
    rows = model_rows(a.results)
    if rows:  # --quick runs no benchmark
        print("\n| model (skipped layers) | prompt tokens | full prefill ms | POP prefill ms | speedup | FLOP-ideal "
              "| quality (eval) |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
