"""An 8B-shaped model on this machine: write it, convert it, bench it.

    python benchmarks/llama8b_shape.py write      # random weights -> F16 GGUF -> Q4_0 with llama.cpp's quantizer
    python benchmarks/llama8b_shape.py convert    # benchmarks/converter_cost.py on it (default budget, 8 samples)
    python benchmarks/llama8b_shape.py bench      # pop-local bench's measurement at 512 and 2048 tokens, 3 repeats

Llama-3.1-8B's shape: 32 layers, hidden 4096, FFN 14336, 32 query / 8 KV heads (head 128);
SmolLM2's tokenizer (49152 tokens, so the embedding is smaller than Llama 3's 128256) with the head
tied to it as in SmolLM2 (tests/tiny_specs.py's llama). llama.cpp's Q4_0 keeps that tensor in Q6_K.
The weights are random (seeded, tests/tiny_models.py): the conversion's time and memory and the
prefill speed are real; its KL, top-1 and chosen skip set say nothing about any real model, and
every result is labelled so.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, HERE)

from converter_cost import MODELS_DIR  # noqa: E402

from pop_local.format.atomic import write_json  # noqa: E402
from pop_local.measure.provenance import provenance  # noqa: E402

NAME = "llama-3.1-8b-shape"
PATH = os.path.join(MODELS_DIR, f"{NAME}-random-q4_0.gguf")
DIMS = dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, head_dim=128, n_ff=14336, n_ctx=8192)
LABEL = "random weights (Llama-3.1-8B's shape): speed and memory are real, quality numbers mean nothing"


def write(threads: int) -> str:
    import ctypes

    import llama_cpp

    from helpers.tiny_models import Dims, write_unquantized

    os.makedirs(MODELS_DIR, exist_ok=True)
    f16 = PATH.replace("-q4_0.gguf", "-f16.gguf")
    started = time.time()
    if not os.path.exists(f16):
        write_unquantized(f16, "llama", Dims(**DIMS), name=f"{NAME} (random weights, pop-local benchmarks)")
    print(f"F16 written in {time.time() - started:.0f} s: {os.path.getsize(f16) / 2**30:.1f} GB", flush=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    params.nthread = threads
    part = PATH + ".part"
    rc = llama_cpp.llama_model_quantize(f16.encode(), part.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize failed ({rc})")
    os.replace(part, PATH)
    os.remove(f16)
    print(f"{PATH}: {os.path.getsize(PATH) / 2**30:.2f} GB ({time.time() - started:.0f} s in all)", flush=True)
    return PATH


def bench(model: str, ctx, repeats: int) -> None:
    from pop_local import PopLlama
    from pop_local.measure.bench import format_table, run_bench

    llm = PopLlama(model, n_ctx=max(ctx) + 128, n_batch=max(ctx), n_ubatch=512, verbose=False)
    try:
        result = run_bench(llm, ctx, repeats=repeats, decode_tokens=16)
    finally:
        llm.close()
    print(format_table(result), flush=True)
    result.update({"weights": LABEL, **provenance("python benchmarks/llama8b_shape.py " + " ".join(sys.argv[1:]))})
    write_json(os.path.join(HERE, "results", f"bench-{NAME}.json"), result)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("step", choices=["write", "convert", "bench"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    p.add_argument("--samples", type=int, default=8, help="calibration samples (a budget needs 8)")
    p.add_argument("--ctx", default="512,2048")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    if a.step == "write":
        write(a.threads)
    elif a.step == "convert":
        import converter_cost

        out = os.path.join(MODELS_DIR, f"{NAME}-random.pop.gguf")
        converter_cost.main(["--model", PATH, "--name", NAME, "--samples", str(a.samples), "--keep", out])
    else:
        bench(os.path.join(MODELS_DIR, f"{NAME}-random.pop.gguf"), [int(x) for x in a.ctx.split(",")], a.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
