"""The README's headline measurements: each test model at its default settings, speed and quality.

    python benchmarks/headline.py smollm2 gemma3 qwen2.5-coder-1.5b

For each model: the POP file made with the default settings (the embedded default model for smollm2,
`pop-local convert MODEL` for the others, cached in ~/.cache/pop-local/models), then `pop-local bench
--json` and `pop-local eval --json` on it, into results/headline-NAME-{bench,eval}.json, and the
file's frontier keys (what the converter's budget and answer check measured) into headline-NAME-frontier.json
(each records its commit, machine, date and command). benchmarks/tables.py makes the table from them.
"""

import argparse
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from converter_cost import MODELS_DIR, model_path  # noqa: E402


def pop_file(name: str) -> "str | None":
    """The POP GGUF at default settings (None: the embedded default model, which the commands make)."""
    if name == "smollm2":
        return None
    out = os.path.join(MODELS_DIR, f"{name}-default.pop.gguf")
    if not os.path.exists(out):
        os.makedirs(MODELS_DIR, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pop_local", "convert", model_path(name), "-o", out], check=True)
    return out


def write_frontier(model: str, path: str) -> None:
    """The converter's frontier keys of `model` (what its budget and answer check measured), with provenance."""
    from pop_local.format.atomic import write_json
    from pop_local.format.metadata import read_pop_metadata
    from pop_local.measure.provenance import provenance

    extra = read_pop_metadata(model).extra
    keys = {k: v for k, v in extra.items() if k.startswith(("pop.frontier.", "pop.budget", "pop.prefill.kv_method"))}
    write_json(path, {"model": os.path.basename(model), "keys": keys, **provenance()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="+", help="smollm2, gemma3, qwen2.5-coder-1.5b")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    a = p.parse_args(argv)
    for name in a.names:
        model = pop_file(name)
        if model:
            write_frontier(model, os.path.join(a.out, f"headline-{name}-frontier.json"))
        for command in ("bench", "eval"):
            args = [sys.executable, "-m", "pop_local", command] + ([model] if model else [])
            path = os.path.join(a.out, f"headline-{name}-{command}.json")
            subprocess.run(args + ["--json", path], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
