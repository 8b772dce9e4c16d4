"""Image prefill speed, full model vs POP: an image and a question, in one process on one loaded model.

Each measurement is a fresh chat request (the image, then the question) through the model's
multimodal chat handler, stopped after the first answer token: its prefill time (PopLlama's
last_prefill_ms) runs from the prompt's chunking to its last token, so it includes the projector
encoding the image, which POP does not change. Full and POP alternate as in `bench` (measure/bench.py).
`run_image_bench` returns a JSON-ready dict:

    model, mmproj, image (file name or WIDTHxHEIGHT), skip_layers, n_layer, threads, runs, machine
    image_tokens, prompt_tokens: of one request (text around the image included)
    full_ms / pop_ms: {median, min, max, n}, speedup (full/pop medians)
    ideal_speedup: the FLOP model's for the language model over prompt_tokens (the encoder left out)
    pruned_tokens, image_pruned_tokens: per POP request
"""

from __future__ import annotations

import os
import platform
from typing import Any, Callable, Dict, Optional

from pop_local.errors import PopError
from pop_local.runtime.multimodal import image_content

from .bench import alternate, require_pop, summarize

__all__ = ["run_image_bench", "format_image_table", "DEFAULT_QUESTION"]

DEFAULT_QUESTION = "Describe this picture in detail."


def run_image_bench(llm, image: "str | bytes", *, image_label: Optional[str] = None, question: str = DEFAULT_QUESTION,
                    repeats: int = 5, progress: Optional[Callable[[str, int, int], None]] = None) -> Dict[str, Any]:
    """Measure `llm` (a PopLlama with a skip set, loaded with a projector) on `image` (a path, URL or
    image bytes) and `question`."""
    from pop_local.format.layers import format_layers

    from .flops import ideal_speedup, model_shape

    require_pop(llm)
    if not llm.multimodal:
        raise PopError("the model was loaded without a projector: give its mmproj file")
    if repeats < 1:
        raise PopError("`repeats` must be at least 1")
    messages = [{"role": "user", "content": image_content(question, [image])}]
    was_enabled = llm.pop_enabled
    per_request: Dict[str, Dict[str, int]] = {}
    done = [0]
    total = 2 * (repeats + 1)

    def prefill(mode: str) -> float:
        llm.pop_enabled = mode == "pop"
        before = llm.pop_stats()
        llm.create_chat_completion(messages=messages, max_tokens=1, temperature=0)
        after = llm.pop_stats()
        per_request[mode] = {k: after[k] - before[k] for k in ("pruned_tokens", "image_tokens", "image_pruned_tokens")}
        per_request[mode]["prompt_tokens"] = after["last_prefill_tokens"]
        done[0] += 1
        if progress:
            progress("image benchmark", done[0], total)
        return after["last_prefill_ms"]

    try:
        samples = alternate(("full", "pop"), repeats, prefill)
    finally:
        llm.pop_enabled = was_enabled
        llm.reset()
    shape = model_shape(llm.model_path)
    pop = per_request["pop"]
    full_ms, pop_ms = summarize(samples["full"]), summarize(samples["pop"])
    return {
        "model": os.path.basename(llm.model_path),
        "mmproj": os.path.basename(getattr(llm.chat_handler, "clip_model_path", "") or ""),
        "image": image_label or (os.path.basename(image) if isinstance(image, str) else f"{len(image)} bytes"),
        "question": question,
        "skip_layers": format_layers(llm.skip_layers),
        "n_layer": shape.n_layer,
        "threads": llm.context_params.n_threads_batch,
        "runs": repeats,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "image_tokens": pop["image_tokens"],
        "prompt_tokens": pop["prompt_tokens"],
        "full_ms": full_ms,
        "pop_ms": pop_ms,
        "speedup": full_ms["median"] / pop_ms["median"],
        "ideal_speedup": ideal_speedup(shape, pop["prompt_tokens"], llm.skip_layers, llm.exact_layers),
        "pruned_tokens": pop["pruned_tokens"],
        "image_pruned_tokens": pop["image_pruned_tokens"],
    }


def format_image_table(result: Dict[str, Any]) -> str:
    """A Markdown table of `run_image_bench`'s result (what `pop-local bench --image` prints)."""
    f, p = result["full_ms"], result["pop_ms"]
    return "\n".join([
        "| image | image tokens | prompt tokens | full ms | POP ms | speedup | FLOP ideal (language model) |",
        "|---|---|---|---|---|---|---|",
        f"| {result['image']} | {result['image_tokens']} ({result['image_pruned_tokens']} pruned) | "
        f"{result['prompt_tokens']} | {f['median']:.1f} ({f['min']:.1f}-{f['max']:.1f}) | "
        f"{p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) | **{result['speedup']:.2f}x** | "
        f"{result['ideal_speedup']:.2f}x |",
        "",
        "Prefill: from the prompt's chunking to its last token, image encoding included (the same in both).",
    ])
